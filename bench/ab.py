"""Interleaved A/B throughput of two catalyzer trees with wrk: old, new, old, new, ...

    .venv/bin/python -m bench.ab OLD_TREE NEW_TREE [--rounds 3] [--duration 5] [--procs 1]
                                 [--close] [--connections 50] [--threads 1]

Each tree must have its own ``.venv`` (``make .venv/.test-installed``). Every measurement starts
a fresh server (``bench.apps:hello``, access log off) from that tree on a free loopback port,
waits until it accepts, runs wrk once and stops the server by its PID. Alternating the trees
spreads the shared machine's noise over both; the medians and every run are printed (req/s as
wrk reports it). Throughput on a shared 2-core machine moves with whatever else runs: decide
with instruction counts (``bench.conncost``) and use this for the order of magnitude.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs

READY_TIMEOUT = 30.0


def _serve(root: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    argv = [
        str(root / ".venv" / "bin" / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        "bench.apps:hello",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--access-log",
        "off",
    ]
    if workers > 1:
        argv += ["--procs", str(workers)]
    return subprocess.Popen(
        argv,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _answering(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((procs.HOST, port), timeout=2) as s:
                s.sendall(request)
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a server that is starting, with a deadline
    raise RuntimeError(f"no answer on {port} within {READY_TIMEOUT}s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=procs.STOP_TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def measure(root: Path, args: argparse.Namespace) -> float:
    port = procs.free_port()
    server = _serve(root, port, args.procs)
    try:
        _answering(port)
        wrk = [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            *(["-H", "Connection: close"] if args.close else []),
            f"http://{procs.HOST}:{port}/",
        ]
        out = subprocess.run(wrk, capture_output=True, text=True, check=True).stdout
    finally:
        _stop(server)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--close", action="store_true", help="send Connection: close")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {"old": [], "new": []}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for _ in range(args.rounds):
        for name in ("old", "new"):
            rate = measure(getattr(args, name).resolve(), args)
            results[name].append(rate)
            print(f"{name}: {rate:,.0f} req/s", flush=True)
    old, new = (statistics.median(results[k]) for k in ("old", "new"))
    runs = {k: " / ".join(f"{r:,.0f}" for r in v) for k, v in results.items()}
    print(f"old median {old:,.0f} ({runs['old']})")
    print(f"new median {new:,.0f} ({runs['new']})")
    print(f"new/old {new / old:.2f}x; load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
