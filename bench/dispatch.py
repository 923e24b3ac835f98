"""Task dispatch: catalyzer's PreforkDispatcher against ampoule and ProcessPoolExecutor.

    .venv/bin/python bench/dispatch.py [--quick] [--only NAME[,NAME...]] [--render RESULTS.json]

Each pool runs in a process of its own (Twisted's reactor cannot be restarted), with 2 children,
started and warmed up before anything is timed:

- throughput: N tasks handed to the pool at once, timed until the last result is back (the
  median of several rounds), for a no-op task and for a task that burns 10 ms of CPU;
- latency: one no-op task at a time, round trip from the call to the result, p50 and p99.

The tasks are in ``bench/dispatch_tasks.py``. The results go to ``bench/results/dispatch-*.json``
and a Markdown section is printed, the one ``docs/benchmarks.md`` ends with.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

CHILDREN = 2
SPIN_MS = 10.0
SUBJECTS = ["catalyzer", "ampoule", "ProcessPoolExecutor"]
TARGETS = {"ampoule": 2.0, "ProcessPoolExecutor": 1.0}  # catalyzer no-op throughput, at least x


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"noop": 3000, "spin": 60, "rounds": 2, "latency": 500}
    return {"noop": 20000, "spin": 200, "rounds": 3, "latency": 3000}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- one pool, in this process


def run_twisted(pool: str, n: dict[str, int]) -> dict[str, Any]:
    """catalyzer or ampoule: both are Twisted pools driven from the reactor."""
    from twisted.internet import defer, reactor

    from bench import dispatch_tasks as t

    out: dict[str, Any] = {}

    if pool == "catalyzer":
        from catalyzer.dispatch import PreforkDispatcher

        dispatcher = PreforkDispatcher(
            max_forks=CHILDREN, pre_fork=CHILDREN, spawn_delay=0, reactor=reactor
        )

        def start() -> Any:
            dispatcher.startService()
            return defer.succeed(None)

        def call_noop() -> Any:
            return dispatcher.dispatch(t.noop)

        def call_spin() -> Any:
            return dispatcher.dispatch(t.spin, SPIN_MS)

        def stop() -> Any:
            return dispatcher.stopService()

    else:
        from ampoule import main
        from ampoule import pool as ampool

        process_pool = ampool.ProcessPool(
            t.BenchChild,
            min=CHILDREN,
            max=CHILDREN,
            recycleAfter=0,
            starter=main.ProcessStarter(env={"PYTHONPATH": str(ROOT)}, path=str(ROOT)),
        )

        def start() -> Any:
            return process_pool.start()

        def call_noop() -> Any:
            return process_pool.doWork(t.Noop)

        def call_spin() -> Any:
            return process_pool.doWork(t.Spin, ms=SPIN_MS)

        def stop() -> Any:
            return process_pool.stop()

    @defer.inlineCallbacks
    def throughput(call: Callable[[], Any], count: int) -> Any:
        begin = time.perf_counter()
        yield defer.gatherResults([call() for _ in range(count)])
        return count / (time.perf_counter() - begin)

    @defer.inlineCallbacks
    def main_() -> Any:
        try:
            yield start()
            yield defer.gatherResults([call_noop() for _ in range(500)])  # warm-up
            noop = []
            for _ in range(n["rounds"]):
                noop.append((yield throughput(call_noop, n["noop"])))
            spin = []
            for _ in range(n["rounds"]):
                spin.append((yield throughput(call_spin, n["spin"])))
            latencies = []
            for _ in range(n["latency"]):
                begin = time.perf_counter()
                yield call_noop()
                latencies.append(time.perf_counter() - begin)
            out.update(measures(noop, spin, latencies))
            yield stop()
        except Exception as e:
            out["error"] = repr(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(main_)
    reactor.run()
    return out


def run_ppe(n: dict[str, int]) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor, wait

    from bench import dispatch_tasks as t

    with ProcessPoolExecutor(max_workers=CHILDREN) as executor:
        wait([executor.submit(t.noop) for _ in range(500)])  # warm-up: both processes started

        def throughput(func: Callable[..., Any], *args: Any, count: int) -> float:
            begin = time.perf_counter()
            wait([executor.submit(func, *args) for _ in range(count)])
            return count / (time.perf_counter() - begin)

        noop = [throughput(t.noop, count=n["noop"]) for _ in range(n["rounds"])]
        spin = [throughput(t.spin, SPIN_MS, count=n["spin"]) for _ in range(n["rounds"])]
        latencies = []
        for _ in range(n["latency"]):
            begin = time.perf_counter()
            executor.submit(t.noop).result()
            latencies.append(time.perf_counter() - begin)
    return measures(noop, spin, latencies)


def measures(noop: list[float], spin: list[float], latencies: list[float]) -> dict[str, Any]:
    return {
        "noop_per_s": statistics.median(noop),
        "noop_rounds": noop,
        "spin_per_s": statistics.median(spin),
        "spin_rounds": spin,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
    }


def one(pool: str, quick: bool) -> None:
    n = sizes(quick)
    out = run_ppe(n) if pool == "ProcessPoolExecutor" else run_twisted(pool, n)
    print(json.dumps(out))


# -- the whole run


def subject(pool: str, quick: bool) -> dict[str, Any]:
    if pool == "ampoule":
        try:
            importlib.metadata.version("ampoule")
        except importlib.metadata.PackageNotFoundError:
            return {"error": "ampoule is not installed (pip install -e '.[bench]')"}
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", pool]
    if quick:
        argv.append("--quick")
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "did not finish within 600 s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit status {done.returncode}: {done.stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "versions": {
            "catalyzer": version("catalyzer"),
            "twisted": version("twisted"),
            "ampoule": version("ampoule"),
        },
        "loadavg_before": os.getloadavg(),
    }


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    n = data["sizes"]
    rows = []
    base = data["results"].get("catalyzer", {})
    for name in SUBJECTS:
        r = data["results"].get(name, {})
        if "error" in r:
            rows.append(f"| {name} | {r['error']} | | | | |")
            continue
        ratio = base.get("noop_per_s", 0) / r["noop_per_s"] if r.get("noop_per_s") else 0
        rows.append(
            f"| {name} | {r['noop_per_s']:,.0f} | {r['spin_per_s']:,.1f} | "
            f"{r['p50_us']:,.0f} us | {r['p99_us']:,.0f} us | "
            + ("1.00x" if name == "catalyzer" else f"{ratio:.2f}x")
            + " |"
        )
    targets = []
    for name, want in TARGETS.items():
        r = data["results"].get(name, {})
        if "error" in r or "noop_per_s" not in base:
            targets.append(f"- **not measured** — catalyzer vs {name}: {r.get('error', '')}")
            continue
        ratio = base["noop_per_s"] / r["noop_per_s"]
        verdict = "met" if ratio >= want else "missed"
        targets.append(
            f"- **{verdict}** — catalyzer no-op tasks/s vs {name}: {ratio:.2f}x "
            f"(target {want:.2f}x)"
        )
    load = ", ".join(f"{v:.2f}" for v in m["loadavg_before"])
    load_after = ", ".join(f"{v:.2f}" for v in data["loadavg_after"])
    return "\n".join(
        [
            "## Task dispatch (bench/dispatch.py)",
            "",
            f"Run {data['stamp']}{' (--quick)' if data['quick'] else ''}: "
            f"`bench/dispatch.py`, catalyzer at {m['commit']}, Python {m['python']}, "
            f"nproc {m['nproc']}, load average {load} before and {load_after} after; "
            f"Twisted {m['versions']['twisted']}, ampoule {m['versions']['ampoule']}. "
            f"Every pool has {CHILDREN} children (processes), started and warmed up before "
            "timing. *no-op tasks/s*: "
            f"{n['noop']:,} no-op tasks handed over at once, median of {n['rounds']} rounds; "
            f"*10 ms tasks/s*: {n['spin']} tasks that each burn {SPIN_MS:g} ms of CPU "
            f"(at most {CHILDREN * 1000 / SPIN_MS:.0f}/s with {CHILDREN} children on "
            f"{CHILDREN} free cores); *p50/p99*: round trip of one no-op task at a time, "
            f"{n['latency']:,} in a row. The parent, the children (and the machine's other "
            "load) share the cores; only ratios within one run mean much.",
            "",
            "| pool | no-op tasks/s | 10 ms tasks/s | p50 | p99 | catalyzer no-op ÷ this |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            *targets,
            "",
            "catalyzer: `PreforkDispatcher(max_forks=2, pre_fork=2)`, tasks by import path, "
            "pickled arguments and results. ampoule: `ProcessPool(min=2, max=2, "
            "recycleAfter=0)` with one AMP command per task. ProcessPoolExecutor: "
            "`max_workers=2`, the default start method (fork on Linux with Python 3.11), "
            "`submit` then `wait`.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks: a smoke test")
    parser.add_argument("--only", help="comma-separated pools: " + ", ".join(SUBJECTS))
    parser.add_argument("--render", help="print the section for an earlier run's JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.quick)
        return
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    wanted = args.only.split(",") if args.only else SUBJECTS
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data: dict[str, Any] = {
        "stamp": stamp,
        "quick": args.quick,
        "sizes": sizes(args.quick),
        "machine": machine(),
        "results": {},
    }
    for pool in wanted:
        print(f"{pool}...", file=sys.stderr, flush=True)
        data["results"][pool] = subject(pool, args.quick)
        print(f"  {data['results'][pool]}", file=sys.stderr, flush=True)
    data["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"dispatch-{stamp}.json"
    path.write_text(json.dumps(data, indent=2))
    print(render(data))
    print(f"\n(raw results: {path.relative_to(ROOT)})", file=sys.stderr)


if __name__ == "__main__":
    main()
