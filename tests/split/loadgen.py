"""Load for the chaos tests, run inside the front's network namespace (``ip netns exec NS python
-m tests.split.loadgen PORT COUNT SEED WORKERS OUT``): the same plan and client as
tests/split/test_integration.py, the outcomes written to OUT as JSON."""

from __future__ import annotations

import json
import sys

from tests.split.test_integration import check_body, mixed_plan, run_load


def main() -> None:
    port, count, seed, workers = (int(a) for a in sys.argv[1:5])
    out = sys.argv[5]
    plan = mixed_plan(count, seed=seed, query="?sleep=0.01")
    bodies = {rid: body for rid, _, body in plan}
    rows = []
    for o in run_load(port, plan, workers=workers):
        pid = None
        if o.status == 200:
            try:
                pid = check_body(o, bodies[o.rid])
            except AssertionError:
                pid = -1  # a wrong body: the test fails on it
        rows.append(
            {"rid": o.rid, "method": o.method, "status": o.status, "pid": pid, "error": o.error}
        )
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
