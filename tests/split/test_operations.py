"""Operating split mode, end to end on 127.0.0.1: handler workers recycled under load, round
trip times in the rows, the front's manhole and state dump, ``--profile``, the front-wide buffer
budget. Real processes, readiness by their log lines, deadlines; every process stopped in
teardown."""

from __future__ import annotations

import collections
import re
import threading

import pytest

from tests.split.test_integration import (
    JOINED,
    Outcome,
    Split,
    check_body,
    mixed_plan,
    run_load,
    split,
)

pytestmark = pytest.mark.integration

__all__ = ["split"]  # the fixture, imported for the tests below


def test_handler_workers_recycle_after_max_requests_with_zero_errors(split: Split) -> None:
    front = split.start_front()
    handler = split.start_handler("--threads", "2", "--procs", "2", "--max-requests", "40", joins=2)
    first = {int(pid) for pid in re.findall(JOINED, front.log())}
    plan = mixed_plan(400, seed=11, query="?sleep=0.005")
    bodies = {rid: body for rid, _, body in plan}
    result: list[list[Outcome]] = []
    load = threading.Thread(target=lambda: result.append(run_load(front.port, plan, workers=8)))
    load.start()
    load.join(timeout=200)
    (outcomes,) = result
    assert [o for o in outcomes if o.status != 200] == []
    assert sorted(o.rid for o in outcomes) == sorted(bodies)
    for o in outcomes:
        check_body(o, bodies[o.rid])
    # Each retired worker asked, was replaced first, drained and exited 0.
    handler.wait_for_log(r"exited \(exit status 0\) after max-requests", count=2, deadline=30.0)
    assert "asking to be replaced (max-requests) after" in handler.log()
    joined = {int(pid) for pid in re.findall(JOINED, front.log())}
    assert len(joined - first) >= 2
    # No POST ran twice: the retiring worker gave back what it had not started.
    runs = collections.Counter((rid, method) for rid, method, _ in split.journal_lines())
    assert [k for k, n in runs.items() if k[1] == "POST" and n > 1] == []
    assert handler.terminate() == 0
