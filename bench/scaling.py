"""One process's remaining issue-11 figures: what ``--threads N`` costs on hello, how throughput
follows concurrency, and what an idle keep-alive connection costs in memory.

    .venv/bin/python -m bench.scaling [--runs 3] [--duration 5] [--threads 4] [--idle 10000]
                                      [--only threads,concurrency,idle] [--source TREE/src]

``threads``: hello keep-alive with 50 connections, the app in the reactor's thread (the default)
against ``--threads N``, started alternately (a fresh server each run); the overhead is
1 - threaded / default of the medians. ``concurrency``: hello keep-alive at 10, 100 and 1,000
connections (wrk -t2), alternating the same way. ``idle``: a server with ``--max-connections``
above ``--idle``; its RSS before and after that many keep-alive connections each sent one
request, read the answer and stayed open (held by this process, which raises its own descriptor
limit first); the difference over the count is the cost of one idle connection. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.run import _catalyzer, run_wrk

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
IDLE_DEADLINE = 120.0


def _serve(extra: list[str], source: Path | None = None) -> tuple[procs.Server, int, Path]:
    port = procs.free_port()
    log = Path(f"/tmp/catalyzer-scaling-{port}.log")
    server = procs.start_server(
        "catalyzer", [*_catalyzer("hello", port, "hello_keepalive", log), *extra], port, log, source
    )
    procs.wait_ready(server)
    return server, port, log


def _measure(
    extra: list[str], connections: int, duration: int, source: Path | None
) -> dict[str, Any]:
    server, port, log = _serve(extra, source)
    try:
        result = run_wrk(port, connections, duration)
    finally:
        procs.stop_server(server)
        log.unlink(missing_ok=True)
    return {
        "rps": result.get("rps"),
        "p99_ms": result.get("p99_ms"),
        "errors": result.get("errors"),
    }


def _interleaved(
    variants: dict[str, tuple[list[str], int]], runs: int, duration: int, source: Path | None
) -> dict[str, Any]:
    """Each variant once per round, the order rotating by one each round; medians and runs."""
    names = list(variants)
    measured: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            extra, connections = variants[name]
            measured[name].append(_measure(extra, connections, duration, source))
    return {
        name: {
            "rps_median": statistics.median(r["rps"] or 0 for r in rs),
            "rps": [r["rps"] for r in rs],
            "p99_ms": [r["p99_ms"] for r in rs],
            "errors": [r["errors"] for r in rs],
        }
        for name, rs in measured.items()
    }


def idle_cost(count: int) -> dict[str, Any]:
    """RSS per idle keep-alive connection, each having been answered once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 1000
    if hard < wanted:
        return {"skipped": f"descriptor limit {hard} is below {wanted}"}
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    server, port, log = _serve(["--max-connections", str(count + 100)])
    sockets: list[socket.socket] = []
    try:
        time.sleep(1)  # the server's own start-up allocations settle
        before = procs.rss_bytes(server.pid)
        selector = selectors.DefaultSelector()
        deadline = time.monotonic() + IDLE_DEADLINE
        answered = 0
        for _ in range(count):
            s = socket.create_connection((procs.HOST, port))
            s.sendall(REQUEST)
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
            sockets.append(s)
            # Read answers as they come, so the server never waits on a full socket buffer.
            for key, _ in selector.select(0):
                if key.fileobj.recv(65536):  # type: ignore[union-attr]
                    answered += 1
                    selector.unregister(key.fileobj)
        while answered < count and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                if key.fileobj.recv(65536):  # type: ignore[union-attr]
                    answered += 1
                    selector.unregister(key.fileobj)
        after = procs.rss_bytes(server.pid)
        still_open = sum(1 for s in sockets if _open(s))
    finally:
        for s in sockets:
            s.close()
        procs.stop_server(server)
        log.unlink(missing_ok=True)
    return {
        "connections": count,
        "answered": answered,
        "still_open": still_open,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "bytes_per_connection": round((after - before) / count),
    }


def _open(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--only", default="threads,concurrency,idle")
    parser.add_argument(
        "--source",
        type=Path,
        help="serve the catalyzer package of this directory (another tree's src, for an A/B)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    if "threads" in only:
        threads = _interleaved(
            {"reactor": ([], 50), f"threads{args.threads}": (["--threads", str(args.threads)], 50)},
            args.runs,
            args.duration,
            args.source,
        )
        base = threads["reactor"]["rps_median"]
        threaded = threads[f"threads{args.threads}"]["rps_median"]
        threads["overhead"] = round(1 - threaded / base, 3) if base else None
        out["threads"] = threads
    if "concurrency" in only:
        out["concurrency"] = _interleaved(
            {f"c{n}": ([], n) for n in (10, 100, 1000)}, args.runs, args.duration, args.source
        )
    if "idle" in only:
        out["idle"] = idle_cost(args.idle)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
