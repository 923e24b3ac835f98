"""Split mode under mixed load: a slow endpoint beside a fast one, through a front and a handler
host of ``--procs 2 --threads 4``, with the handlers' ``--prefetch`` varied (issue 10's fairness
question asked of split mode: does a request prefetched at a handler wait behind a slow call?).

    .venv/bin/python -m bench.split_mixed [--runs 3] [--duration 8] [--prefetch 0,8]

``bench.apps:mixed``: one ``GET /slow`` (1 s in the app) every 0.5 s from this process, each on
a connection of its own, plus wrk's 16 keep-alive clients on ``/``; the variants alternate run
by run, with fresh servers each. Prints the fast requests' p50/p99 and req/s, wrk's errors and
the slow requests answered, median then each run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import split
from bench.mixed import SlowDriver
from bench.run import run_wrk


def measure(prefetch: int, duration: int, logs: Path) -> dict[str, Any]:
    sub = logs / f"prefetch{prefetch}-{len(list(logs.iterdir()))}"
    sub.mkdir()
    split._FRONT_LOG[:] = [sub / "front.log"]
    handler = ["--prefetch", str(prefetch)]
    with split.serving("split", "mixed", sub, None, 2, 4, handler) as (port, _pids):
        slow = SlowDriver(port, 0.5, 1.0)
        slow.start()
        wrk = run_wrk(port, 16, duration, threads=1)
        slow.finish()
    return {
        "p50": wrk["p50_ms"],
        "p99": wrk["p99_ms"],
        "rps": wrk["rps"],
        "errors": wrk["error_total"],
        "slow": f"{slow.answered}/{slow.sent}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--prefetch", default="0,8", help="comma-separated --prefetch values")
    args = parser.parse_args(argv)
    values = [int(v) for v in args.prefetch.split(",")]
    results: dict[int, list[dict[str, Any]]] = {v: [] for v in values}
    with tempfile.TemporaryDirectory(prefix="cz-split-mixed-") as tmp:
        for run in range(args.runs):
            order = values if run % 2 == 0 else values[::-1]
            for value in order:
                print(f"run {run + 1}: --prefetch {value}", file=sys.stderr, flush=True)
                results[value].append(measure(value, args.duration, Path(tmp)))
    print("| handler --prefetch | fast p50 | fast p99 | fast req/s | errors | slow answered |")
    print("|---|--:|--:|--:|--:|--:|")
    for value, runs in results.items():

        def cell(key: str, fmt: str, runs: list[dict[str, Any]] = runs) -> str:
            each = [r[key] for r in runs]
            return f"{statistics.median(each):{fmt}} ({' / '.join(f'{x:{fmt}}' for x in each)})"

        errors = sum(int(r["errors"]) for r in runs)
        slow = "; ".join(str(r["slow"]) for r in runs)
        print(
            f"| {value} | {cell('p50', '.2f')} ms | {cell('p99', '.2f')} ms | "
            f"{cell('rps', ',.0f')} | {errors} | {slow} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
