"""Clients that pause between requests, against ``catalyzer --procs 2 --threads 2`` with one slow
request (``bench.apps:mixed``'s 1 s ``/slow``) every ``--slow-every`` seconds: the ``--threads``
keep-alive rescue (docs/prefork.md) on and off (``--handoff-after 0``), alternating.

    .venv/bin/python -m bench.thinktime [--runs 3] [--clients 64] [--think 0.2] [--duration 8]

Each client holds one keep-alive connection and sends ``GET /``, reads the answer, then waits
``--think`` seconds (a browser or an API client between requests; wrk never pauses, so it always
has a request queued before a worker's threads are known to be stuck). Prints one JSON line per
measurement: fast requests answered, their latency percentiles (ms), slow requests answered and
the connections handed between workers (``/status``). Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.mixed import catalyzer_argv, handoff_counts


async def _client(port: int, think: float, stop: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(procs.HOST, port)
    try:
        while time.monotonic() < stop:
            started = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(think)  # the client's own pause, not a wait for the server
    finally:
        writer.close()


async def _slow(port: int, every: float, stop: float, answered: list[int]) -> None:
    async def one() -> None:
        reader, writer = await asyncio.open_connection(procs.HOST, port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        await writer.drain()
        if (await reader.read()).startswith(b"HTTP/1.1 200"):
            answered.append(1)
        writer.close()

    tasks = []
    while time.monotonic() < stop:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(every)  # the load's schedule
    await asyncio.gather(*tasks)


async def _load(port: int, args: argparse.Namespace) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    answered: list[int] = []
    stop = time.monotonic() + args.duration
    clients = [_client(port, args.think, stop, latencies) for _ in range(args.clients)]
    await asyncio.wait_for(
        asyncio.gather(_slow(port, args.slow_every, stop, answered), *clients),
        timeout=args.duration + 30,
    )
    return latencies, answered


def measure(extra: list[str], args: argparse.Namespace, logs: Path) -> dict[str, object]:
    port, stats = procs.free_port(), procs.free_port()
    argv = catalyzer_argv(port, 2, ["--threads", "2", *extra], "mixed")
    argv += ["--stats", f"tcp:{stats}:interface={procs.HOST}"]
    server = procs.start_server("catalyzer", argv, port, logs / f"thinktime-{port}.log")
    try:
        procs.wait_ready(server)
        latencies, answered = asyncio.run(_load(port, args))
        counts = handoff_counts(stats)
    finally:
        procs.stop_server(server)
    latencies.sort()

    def ms(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)

    return {
        "catalyzer": " ".join(["--procs 2 --threads 2", *extra]),
        "fast_answered": len(latencies),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": round(latencies[-1] * 1000, 1),
        "slow_answered": len(answered),
        "handed_off": counts["handed_off"] if counts is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds, variants alternating")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--think", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--slow-every", type=float, default=0.5)
    args = parser.parse_args(argv)
    variants: list[list[str]] = [[], ["--handoff-after", "0"]]
    with tempfile.TemporaryDirectory(prefix="thinktime-") as logs:
        for n in range(args.runs):
            for extra in variants if n % 2 == 0 else variants[::-1]:
                print(json.dumps({"run": n + 1, **measure(extra, args, Path(logs))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
