"""Fast clients under a re-opening slowloris at max-connections (issue 10, "Alive under faults").

    .venv/bin/python -m bench.slowloris [--procs 1|2] [--slow 1500] [--max-connections 1000]
                                        [--seconds 20] [--close]

Starts catalyzer on the ``hello`` app, measures wrk on 16 fast connections alone, then again
while ``--slow`` connections each send a partial request head and one more header line every
second, and re-open as soon as the server closes them (the attack of the issue). Prints both
runs and the ratio as JSON; the goal is a ratio >= 0.9 with no wrk timeouts, in single and
prefork mode. One attacker thread, bounded in connections and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.run import _catalyzer, run_wrk

FAST_CONNECTIONS = 16
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\n"


class ReopeningSlowloris:
    """``count`` partial requests, one header line per ``every`` seconds each, re-opened when
    closed; at most ``max_seconds`` of it."""

    def __init__(self, port: int, count: int, every: float = 1.0, max_seconds: float = 300):
        self.port = port
        self.count = count
        self.every = every
        self.max_seconds = max_seconds
        self.reopened = 0
        self.connect_failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(30)
        return {"reopened": self.reopened, "connect_failed": self.connect_failed}

    def _open(self, selector: selectors.BaseSelector) -> None:
        try:
            sock = socket.create_connection((procs.HOST, self.port), timeout=2)
            sock.sendall(PARTIAL)
        except OSError:
            self.connect_failed += 1
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        end = time.monotonic() + self.max_seconds
        for _ in range(self.count):
            self._open(selector)
        next_line = time.monotonic() + self.every
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                for key, _ in selector.select(timeout=0.05):
                    sock: Any = key.fileobj
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(sock)
                        sock.close()
                        self.reopened += 1
                        self._open(selector)
                if time.monotonic() >= next_line:
                    next_line += self.every
                    for key in list(selector.get_map().values()):
                        with contextlib.suppress(OSError):
                            key.fileobj.send(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--slow", type=int, default=1500)
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--close", action="store_true", help="fast clients use Connection: close")
    args = parser.parse_args()
    port = procs.free_port()
    log = Path(f"/tmp/catalyzer-slowloris-{port}.log")
    argv = [
        *_catalyzer("hello", port, "hello_keepalive", log),
        "--max-connections",
        str(args.max_connections),
        "--procs",
        str(args.procs),
    ]
    server = procs.start_server("catalyzer", argv, port, log)
    extra = ("-H", "Connection: close") if args.close else ()
    try:
        procs.wait_ready(server)
        if args.procs > 1:
            time.sleep(2)  # every worker ready (the bench does not parse the master's log)
        alone = run_wrk(port, FAST_CONNECTIONS, args.seconds, extra)
        attack = ReopeningSlowloris(port, args.slow)
        attack.start()
        time.sleep(min(5.0, args.seconds / 2))  # the attack fills every slot first
        attacked = run_wrk(port, FAST_CONNECTIONS, args.seconds, extra)
        attack_stats = attack.stop()
    finally:
        stop = procs.stop_server(server)
    keys = ("rps", "p50_ms", "p99_ms", "errors")
    print(
        json.dumps(
            {
                "procs": args.procs,
                "slow": args.slow,
                "max_connections": args.max_connections,
                "alone": {k: alone.get(k) for k in keys},
                "attacked": {k: attacked.get(k) for k in keys},
                "ratio": attacked["rps"] / alone["rps"] if alone["rps"] else None,
                "attack": attack_stats,
                "stop": stop,
                "log": str(log),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
