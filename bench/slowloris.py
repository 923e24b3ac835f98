"""Fast clients under a re-opening slowloris at max-connections (issue 10, "Alive under faults").

    .venv/bin/python -m bench.slowloris [--procs 1|2] [--slow 1500] [--max-connections 1000]
                                        [--seconds 20] [--close] [--runs 3]
                                        [--attacker process|thread] [--catalyzer-args ...]

Starts catalyzer on the ``hello`` app, measures wrk on 16 fast connections alone, then again
while ``--slow`` connections each send a partial request head and one more header line every
second, and re-open as soon as the server closes them (the attack of the issue). Prints both
runs and the ratio as JSON; the goal is a ratio >= 0.9 with no wrk timeouts, in single and
prefork mode. One attacker (a process of its own by default), bounded in connections and time.

Each wrk run also reports the CPU time (in cores) the server, the attacker and wrk used, and the
attacker's re-opens a second (each one an accept-and-shed cycle in the server); from those, the
server's CPU time per cycle. ``--attack-only`` leaves wrk out: the server's CPU time per cycle
with nothing to subtract, and how long a new client (one a second) waits for its response.
Several ``--catalyzer-args`` variants, and ``--baseline`` (an older tree's ``src``), alternate
run by run.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import multiprocessing
import os
import resource
import selectors
import shlex
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.run import _catalyzer, run_wrk

FAST_CONNECTIONS = 16
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\n"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ReopeningSlowloris:
    """``count`` partial requests, one header line per ``every`` seconds each, re-opened when
    closed; at most ``max_seconds`` of it.

    Cheap on purpose, since it shares the 2 cores with the server and wrk where a real attacker
    would sit on other hosts: connections are opened without blocking (a ``connect`` in
    progress is watched for writing, then sent its partial head), and with ``process`` it runs
    in a process of its own (``multiprocessing``), whose CPU time the bench reads apart from
    wrk's and the server's. Its counters live in shared memory so the bench can read them
    during the run."""

    def __init__(
        self,
        port: int,
        count: int,
        every: float = 1.0,
        max_seconds: float = 300,
        process: bool = False,
    ):
        self.port = port
        self.count = count
        self.every = every
        self.max_seconds = max_seconds
        self.process = process
        context = multiprocessing.get_context("fork")
        self._reopened: Any = context.Value("q", 0, lock=False)
        self._connect_failed: Any = context.Value("q", 0, lock=False)
        self._stop: Any = context.Event() if process else threading.Event()
        self._runner: Any = (
            context.Process(target=self._run, name="slowloris", daemon=True)
            if process
            else threading.Thread(target=self._run, name="slowloris", daemon=True)
        )

    @property
    def reopened(self) -> int:
        return int(self._reopened.value)

    @property
    def pid(self) -> int:
        """The attacker's process (this one for a thread)."""
        return self._runner.pid if self.process else os.getpid()

    def start(self) -> None:
        self._runner.start()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._runner.join(30)
        if self.process and self._runner.is_alive():
            self._runner.kill()
            self._runner.join(5)
        return {"reopened": self.reopened, "connect_failed": int(self._connect_failed.value)}

    def _open(self, selector: selectors.BaseSelector) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            self._connect_failed.value += 1
            return
        sock.setblocking(False)
        if sock.connect_ex((procs.HOST, self.port)) not in (0, errno.EINPROGRESS):
            sock.close()
            self._connect_failed.value += 1
            return
        selector.register(sock, selectors.EVENT_WRITE, _CONNECTING)

    def _closed(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        selector.unregister(sock)
        sock.close()
        self._reopened.value += 1
        self._open(selector)

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
                    if key.data is _CONNECTING:
                        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            self._connect_failed.value += 1
                            self._closed(selector, sock)
                            continue
                        with contextlib.suppress(OSError):
                            sock.send(PARTIAL)
                        selector.modify(sock, selectors.EVENT_READ, None)
                        continue
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._closed(selector, sock)
                if time.monotonic() >= next_line:
                    next_line += self.every
                    for key in list(selector.get_map().values()):
                        if key.data is None:
                            with contextlib.suppress(OSError):
                                key.fileobj.send(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


_CONNECTING = "connecting"


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` (those still alive), from /proc."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def measured_wrk(
    port: int, seconds: int, extra: tuple[str, ...], server_pid: int, attack: Any
) -> dict[str, Any]:
    """wrk's run, with the CPU time the server (all its processes), the attacker and wrk spent
    meanwhile, and the attacker's re-opens (each one an accept-and-shed cycle in the server)."""
    tree = procs.process_tree(server_pid)
    attacker = [attack.pid] if attack is not None and attack.process else []
    each_before = [cpu_seconds([pid]) for pid in tree]
    attacker_before = cpu_seconds(attacker) if attack is None or attack.process else 0.0
    self_before = sum(os.times()[:2])
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reopened_before = attack.reopened if attack is not None else 0
    result = run_wrk(port, FAST_CONNECTIONS, seconds, extra)
    reopened = (attack.reopened if attack is not None else 0) - reopened_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    each = [cpu_seconds([pid]) - before for pid, before in zip(tree, each_before, strict=True)]
    server = sum(each)
    if attack is not None and not attack.process:
        attacker_cpu = sum(os.times()[:2]) - self_before  # the attacker thread (main waits)
    else:
        attacker_cpu = cpu_seconds(attacker) - attacker_before
    wrk_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    elapsed = result.get("wrk_seconds") or seconds
    result["cpu"] = {
        "server_cores": round(server / elapsed, 2),
        "attacker_cores": round(attacker_cpu / elapsed, 2),
        "wrk_cores": round(wrk_cpu / elapsed, 2),
        "reopens_per_s": round(reopened / elapsed),
        # Each server process (the master first, with --procs): a worker near 1.0 and another
        # near 0 is the fast connections piled on one worker.
        "server_cores_each": [round(c / elapsed, 2) for c in each],
    }
    result["cpu_seconds"] = {"server": server, "reopened": reopened}
    return result


def one_run(
    args: argparse.Namespace, extra_args: list[str], source: Path | None = None
) -> dict[str, Any]:
    """Fast clients alone, then under the attack, on one server."""
    port = procs.free_port()
    log = Path(f"/tmp/catalyzer-slowloris-{port}.log")
    argv = [
        *_catalyzer("hello", port, "hello_keepalive", log),
        "--max-connections",
        str(args.max_connections),
        "--procs",
        str(args.procs),
        *extra_args,
    ]
    server = procs.start_server("catalyzer", argv, port, log, source)
    extra = ("-H", "Connection: close") if args.close else ()
    attack: ReopeningSlowloris | None = None
    try:
        procs.wait_ready(server)
        if args.procs > 1:
            time.sleep(2)  # every worker ready (the bench does not parse the master's log)
        if args.attack_only:
            return attack_only(args, server.pid, port, extra_args, source)
        alone = measured_wrk(port, args.seconds, extra, server.pid, None)
        attack = ReopeningSlowloris(port, args.slow, process=args.attacker == "process")
        attack.start()
        time.sleep(min(5.0, args.seconds / 2))  # the attack fills every slot first
        attacked = measured_wrk(port, args.seconds, extra, server.pid, attack)
        attack_stats = attack.stop()
        attack = None
    finally:
        if attack is not None:
            attack.stop()
        stop = procs.stop_server(server)
        log.unlink(missing_ok=True)
    keys = ("rps", "p50_ms", "p99_ms", "errors", "cpu")
    return {
        "argv": extra_args,
        "source": str(source or "installed"),
        "alone": {k: alone.get(k) for k in keys},
        "attacked": {k: attacked.get(k) for k in keys},
        "ratio": round(attacked["rps"] / alone["rps"], 3) if alone["rps"] else None,
        # The server's CPU time per accept-and-shed cycle: what it spent under attack beyond
        # what the fast requests it answered cost alone, divided by the attacker's re-opens.
        "server_us_per_cycle": _per_cycle(alone, attacked),
        "attack": attack_stats,
        "stop": stop,
    }


def attack_only(
    args: argparse.Namespace, server_pid: int, port: int, extra_args: list[str], source: Any
) -> dict[str, Any]:
    """The attack with no fast clients: the server's CPU time per accept-and-shed cycle is its
    CPU time over the attacker's re-opens, with nothing to subtract."""
    attack = ReopeningSlowloris(port, args.slow, process=args.attacker == "process")
    attack.start()
    try:
        time.sleep(min(5.0, args.seconds / 2))  # every slot taken
        tree = procs.process_tree(server_pid)
        before, reopened, started = cpu_seconds(tree), attack.reopened, time.monotonic()
        # A new client meanwhile, once a second: how long from connect() to its response (it
        # waits in the listen queue behind the attacker's connections beyond the limit).
        waits = []
        for _ in range(args.seconds):
            waits.append(new_client_wait(port))
            time.sleep(max(0.0, started + len(waits) - time.monotonic()))
        cpu, cycles = cpu_seconds(tree) - before, attack.reopened - reopened
        elapsed = time.monotonic() - started
    finally:
        attack_stats = attack.stop()
    return {
        "argv": extra_args,
        "source": str(source or "installed"),
        "server_cores": round(cpu / elapsed, 3),
        "reopens_per_s": round(cycles / elapsed),
        "server_us_per_cycle": round(1e6 * cpu / cycles, 1) if cycles else None,
        "new_client_s": {
            "median": statistics.median(waits) if waits else None,
            "max": max(waits) if waits else None,
        },
        "attack": attack_stats,
    }


def new_client_wait(port: int, timeout: float = 10.0) -> float:
    """Seconds from connecting to the whole status line of a GET (``timeout`` if none came)."""
    started = time.monotonic()
    try:
        procs.status_line(port, timeout=timeout)
    except OSError:
        return timeout
    return round(time.monotonic() - started, 3)


def _per_cycle(alone: dict[str, Any], attacked: dict[str, Any]) -> float | None:
    requests_alone = alone.get("requests") or 0
    cycles = attacked["cpu_seconds"]["reopened"]
    if not requests_alone or not cycles:
        return None
    per_request = alone["cpu_seconds"]["server"] / requests_alone
    extra = attacked["cpu_seconds"]["server"] - per_request * (attacked.get("requests") or 0)
    return round(1e6 * extra / cycles, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--slow", type=int, default=1500)
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--close", action="store_true", help="fast clients use Connection: close")
    parser.add_argument(
        "--attacker",
        choices=("thread", "process"),
        default="process",
        help="run the attacker in a process of its own (default) or a thread of this one",
    )
    parser.add_argument(
        "--attack-only",
        action="store_true",
        help="no wrk: the server's CPU time per accept-and-shed cycle under the attack alone",
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds, variants alternating")
    parser.add_argument(
        "--catalyzer-args",
        action="append",
        default=None,
        help="extra catalyzer arguments, one variant per occurrence",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run (alternating) the catalyzer package under this directory (an older "
        "tree's src, e.g. from `git archive main src`), with the first --catalyzer-args",
    )
    args = parser.parse_args()
    variants: list[tuple[Path | None, list[str]]] = [
        (None, shlex.split(v)) for v in (args.catalyzer_args or [""])
    ]
    if args.baseline is not None:
        variants.insert(0, (args.baseline.resolve(), variants[0][1]))
    results = []
    for round_ in range(1, args.runs + 1):
        for source, extra_args in variants:
            label = f"{source or 'installed'} {shlex.join(extra_args)}".strip()
            print(f"run {round_}/{args.runs}: {label}", file=sys.stderr)
            result = one_run(args, extra_args, source)
            result["run"] = round_
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for source, extra_args in variants:
        where = str(source or "installed")
        mine = [r for r in results if r["argv"] == extra_args and r["source"] == where]
        if args.attack_only:
            summary[f"{where} {shlex.join(extra_args)}".strip()] = {
                "server_us_per_cycle": [r["server_us_per_cycle"] for r in mine],
                "reopens_per_s": [r["reopens_per_s"] for r in mine],
                "server_cores": [r["server_cores"] for r in mine],
                "new_client_s": [r["new_client_s"] for r in mine],
            }
            continue
        summary[f"{where} {shlex.join(extra_args)}".strip()] = {
            "ratio_median": statistics.median(r["ratio"] or 0 for r in mine),
            "ratios": [r["ratio"] for r in mine],
            "attacked_errors": [r["attacked"]["errors"] for r in mine],
            "attacked_p99_ms": [r["attacked"]["p99_ms"] for r in mine],
            "server_us_per_cycle": [r["server_us_per_cycle"] for r in mine],
            "attacked_cpu": [r["attacked"]["cpu"] for r in mine],
        }
    print(
        json.dumps(
            {
                "procs": args.procs,
                "slow": args.slow,
                "max_connections": args.max_connections,
                "attacker": args.attacker,
                "close": args.close,
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
