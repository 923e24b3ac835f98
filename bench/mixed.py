"""Mixed load (issue 10): one slow request every ``--slow-every`` seconds plus wrk's clients on
a fast endpoint, against ``catalyzer --procs N`` and ``gunicorn sync -w N``, with keep-alive and
with ``Connection: close``. Prints the issue's table: fast p99, fast req/s, errors, and how many
slow requests were answered.

    .venv/bin/python bench/mixed.py                      # the issue's scenario, 10 s per run
    .venv/bin/python bench/mixed.py --duration 2 --servers catalyzer   # a quick check
    .venv/bin/python bench/mixed.py --catalyzer-args '--reuse-port --handoff-after 0'  # before
    .venv/bin/python bench/mixed.py --app steady --slow-every 0 --servers catalyzer \
        --catalyzer-args '--handoff-after 0.05' --catalyzer-args '--handoff-after 0.01'

``--app steady`` serves every request in 10 to 50 ms (``bench.apps:steady``): what a short
``--handoff-after`` costs when every app call outlasts it. For catalyzer the table also gives the
keep-alive connections its workers handed over per 1,000 requests (from ``--stats``' ``/status``,
read after wrk ends): a deterministic count of the hand-off churn.

The slow requests come from this process: each on a new connection (``Connection: close``), sent
on a fixed schedule whatever the server does, and each waited for (bounded) after wrk ends.
gunicorn needs the bench extra (``pip install gunicorn``); a server that is not installed is
skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.run import run_wrk

SLOW_PATH = "/slow"
HEARTBEAT_WAIT = 1.5  # a worker's heartbeat (its hand-off count) comes every second
SLOW_GRACE = (
    30.0  # how long a slow request may take beyond its own duration before it counts as lost
)


@dataclass
class SlowDriver:
    """Sends ``GET /slow`` every ``every`` seconds, each on its own connection and thread."""

    port: int
    every: float
    seconds: float
    sent: int = 0
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._pacer = threading.Thread(target=self._pace, daemon=True)
        self._pacer.start()

    def _pace(self) -> None:
        next_at = time.monotonic()
        if self.every <= 0:
            return  # no slow requests (--slow-every 0)
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            self.sent += 1
            next_at += self.every

    def _one(self) -> None:
        request = (
            f"GET {SLOW_PATH}?seconds={self.seconds:g} HTTP/1.1\r\nHost: {procs.HOST}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(
                (procs.HOST, self.port), timeout=self.seconds + SLOW_GRACE
            ) as s:
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            status = data.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                raise ValueError(f"status line {status!r}")
        except (OSError, ValueError) as e:
            with self._lock:
                self.failed.append(f"{type(e).__name__}: {e}")
            return
        with self._lock:
            self.answered += 1

    def finish(self) -> None:
        """Stop sending; wait (bounded) for every slow request sent."""
        self._stop.set()
        self._pacer.join(self.every + 1)
        deadline = time.monotonic() + self.seconds + SLOW_GRACE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def catalyzer_argv(port: int, procs_n: int, extra: list[str], app: str) -> list[str]:
    return [
        str(procs.VENV_BIN / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        f"bench.apps:{app}",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--access-log",
        "off",
        "--procs",
        str(procs_n),
        *extra,
    ]


def gunicorn_argv(port: int, procs_n: int, extra: list[str], app: str) -> list[str]:
    return [
        str(procs.VENV_BIN / "gunicorn"),
        "--bind",
        f"{procs.HOST}:{port}",
        "--workers",
        str(procs_n),
        "--worker-class",
        "sync",
        # The slow request must not be killed by gunicorn's default 30 s worker timeout either.
        "--timeout",
        "120",
        *extra,
        f"bench.apps:{app}",
    ]


SERVERS = {"catalyzer": catalyzer_argv, "gunicorn": gunicorn_argv}
MODES = {"keep-alive": (), "close": ("-H", "Connection: close")}


def measure(
    server: str,
    argv: list[str],
    port: int,
    mode: str,
    args: argparse.Namespace,
    logs: Path,
    source: Path | None = None,
) -> dict[str, Any]:
    stats_port = procs.free_port() if server == "catalyzer" else None
    if stats_port is not None:
        argv = [*argv, "--stats", f"tcp:{stats_port}:interface={procs.HOST}"]
    running = procs.start_server(server, argv, port, logs / f"{server}-{mode}.log", source)
    handoffs: dict[str, int] | None = None
    try:
        procs.wait_ready(running)
        slow = SlowDriver(port, args.slow_every, args.slow_seconds)
        slow.start()
        wrk = run_wrk(port, args.clients, args.duration, MODES[mode])
        slow.finish()
        if stats_port is not None:
            handoffs = handoff_counts(stats_port)
    finally:
        stopped = procs.stop_server(running)
    return {
        "server": server,
        "argv": shlex.join(argv).replace(str(port), "PORT"),
        "mode": mode,
        "fast_p99_ms": wrk["p99_ms"],
        "fast_p50_ms": wrk["p50_ms"],
        "fast_rps": wrk["rps"],
        "fast_errors": wrk["error_total"],
        "fast_error_detail": wrk["errors"],
        "wrk": wrk["wrk_argv"],
        "slow_sent": slow.sent,
        "slow_answered": slow.answered,
        "slow_failed": slow.failed[:5],
        "handoffs": handoffs,
        "stop": stopped,
    }


def handoff_counts(stats_port: int) -> dict[str, int] | None:
    """Hand-offs and requests so far, from the master's ``/status``. The workers report their
    hand-offs in their once-a-second heartbeat, so this waits for the next one."""
    time.sleep(HEARTBEAT_WAIT)
    try:
        with urllib.request.urlopen(f"http://{procs.HOST}:{stats_port}/status", timeout=5) as r:
            status = json.load(r)
    except (OSError, ValueError) as e:
        print(f"/status: {e}", file=sys.stderr)
        return None
    return {
        "handed_off": sum(int(w.get("handed_off", 0)) for w in status["workers"]),
        "requests": int(status["requests"]),
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _runs(values: list[float | None], fmt: Callable[[float | None], str]) -> str:
    """The median, then every run's figure in run order."""
    known = [v for v in values if v is not None]
    median = statistics.median(known) if known else None
    if len(values) == 1:
        return fmt(median)
    return f"{fmt(median)} ({' / '.join(fmt(v) for v in values)})"


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _per_thousand(counts: dict[str, int] | None) -> float | None:
    if not counts or not counts["requests"]:
        return None
    return 1000 * counts["handed_off"] / counts["requests"]


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """One row per server, medians over its runs with every run's figure; errors and slow
    requests summed over the runs."""
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        rows.setdefault(r["label"], {}).setdefault(r["mode"], []).append(r)
    lines = [
        "| server | fast p99, keep-alive | fast req/s, keep-alive | errors | slow answered "
        "| hand-offs per 1,000 requests, keep-alive "
        "| fast p99, Connection: close | fast req/s, close | errors | slow answered "
        "| hand-offs per 1,000 requests, close |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, modes in rows.items():
        cells = [label]
        for mode in MODES:
            runs = modes.get(mode)
            if not runs:
                cells += ["-"] * 5
                continue
            cells += [
                _runs([r["fast_p99_ms"] for r in runs], _ms),
                _runs([r["fast_rps"] for r in runs], _rps),
                str(sum(r["fast_errors"] for r in runs)),
                f"{sum(r['slow_answered'] for r in runs)}/{sum(r['slow_sent'] for r in runs)}",
                _runs([_per_thousand(r.get("handoffs")) for r in runs], _count),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=4, help="workers of each server (4)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per run (10)")
    parser.add_argument("--clients", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--slow-every", type=float, default=0.5, help="seconds between slows")
    parser.add_argument("--slow-seconds", type=float, default=1.0, help="each slow's duration")
    parser.add_argument(
        "--app",
        default="mixed",
        choices=("mixed", "steady"),
        help="bench.apps:mixed (fast /, 1 s /slow) or :steady (every request 10-50 ms)",
    )
    parser.add_argument("--servers", default="catalyzer,gunicorn", help="comma-separated")
    parser.add_argument("--modes", default="keep-alive,close", help="comma-separated")
    parser.add_argument(
        "--catalyzer-args",
        action="append",
        default=None,
        help="extra catalyzer arguments, one run per occurrence (e.g. '--threads 1')",
    )
    parser.add_argument(
        "--old-src",
        type=Path,
        help="also run each catalyzer variant from this older tree's src (an A/B run; e.g. "
        "git archive main src | tar -x -C /tmp/old, then /tmp/old/src)",
    )
    parser.add_argument("--runs", type=int, default=3, help="rounds, servers alternating (3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    variants: list[tuple[str, str, list[str], Path | None]] = []
    for server in args.servers.split(","):
        if server not in SERVERS:
            parser.error(f"unknown server {server!r} (known: {', '.join(SERVERS)})")
        if server == "catalyzer":
            for extra in args.catalyzer_args or [""]:
                label = f"catalyzer --procs {args.procs} {extra}".strip()
                if args.old_src is not None:
                    variants.append(
                        (server, f"{label} (old tree)", shlex.split(extra), args.old_src)
                    )
                variants.append((server, label, shlex.split(extra), None))
        else:
            variants.append((server, f"gunicorn sync -w {args.procs}", [], None))
    results = []
    with tempfile.TemporaryDirectory(prefix="cz-mixed-") as tmp:
        installed = []
        for server, label, extra, source in variants:
            probe = SERVERS[server](0, args.procs, extra, args.app)[0]
            if Path(probe).exists():
                installed.append((server, label, extra, source))
            else:
                print(f"skipping {label}: {probe} is not installed", file=sys.stderr)
        for round_ in range(1, args.runs + 1):
            for server, label, extra, source in installed:
                for mode in args.modes.split(","):
                    port = procs.free_port()
                    argv = SERVERS[server](port, args.procs, extra, args.app)
                    print(
                        f"run {round_}/{args.runs}: {label}, {mode}: {args.duration}s ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    load_before = os.getloadavg()[0]
                    result = measure(server, argv, port, mode, args, Path(tmp), source)
                    result["label"] = label
                    result["run"] = round_
                    result["load_before"] = load_before
                    results.append(result)
    print(
        f"\nbench.apps:{args.app}; "
        + (
            f"one /slow ({args.slow_seconds:g} s) every {args.slow_every:g} s plus "
            if args.slow_every > 0
            else "no /slow; "
        )
        + f"{args.clients} wrk clients on /, {args.duration} s per run, {args.runs} runs "
        "(servers alternating; median, then each run):\n"
    )
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
