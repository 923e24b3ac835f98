"""Reading a prefork master (``catalyzer --procs N``) from the outside: its log and SIGUSR1.

The master logs ``worker N (pid P) ready``, ``reload: starting generation G``, ``generation G
ready: retiring G-1`` and ``worker N (pid P): max-requests; starting its replacement``; a
retiring worker's own log (tagged ``[worker N pid P]``) says ``stopping: waiting ...`` and
``Main loop terminated.``; SIGUSR1
makes it log its table (``worker 0 pid 123 gen 1 ready up 13s, 456 requests, ...``, from the
heartbeat, up to a second old) and then each worker's own view (``worker 0 pid 123 generation 1:
456 requests, 3 connections``, exact). Every wait here has a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from typing import Any

from bench import procs

READY = re.compile(r"worker (\d+) \(pid (\d+)\) ready")
RELOAD_START = re.compile(r"reload: starting generation (\d+)")
GENERATION_READY = re.compile(r"generation (\d+) ready: retiring (\d+)")
RECYCLE = re.compile(r"worker (\d+) \(pid (\d+)\): max-requests; starting its replacement")
WORKER_STOPPING = re.compile(r"\[worker (\d+) pid (\d+)\] .*stopping: waiting")
WORKER_DONE = re.compile(r"\[worker (\d+) pid (\d+)\] .*Main loop terminated")
TROUBLE = re.compile(
    r"died unexpectedly|did not exit in time|reload failed|reload ignored|failed to boot|"
    r"Traceback|Unhandled|exiting with status [1-9]"
)
_MASTER_HEAD = re.compile(
    r"state of master pid (\d+): generation (\d+), (\d+) workers, restarts (\{[^\n]*\})"
)
_MASTER_ROW = re.compile(r"worker (\d+) pid (\d+) gen (\d+) (\w+) up (\d+)s, (\d+) requests")
_WORKER_SELF = re.compile(r"worker (\d+) pid (\d+) generation (\d+): (\d+) requests")


def _flush(server: procs.Server) -> None:
    if not server.log_file.closed:
        server.log_file.flush()


def _read_from(server: procs.Server, offset: int) -> str:
    _flush(server)
    try:
        with open(server.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_size(server: procs.Server) -> int:
    try:
        return os.path.getsize(server.log_path)
    except OSError:
        return 0


def log_text(server: procs.Server) -> str:
    return _read_from(server, 0)


def wait_for(server: procs.Server, pattern: re.Pattern[str], count: int, timeout: float) -> bool:
    """Poll the log until ``pattern`` matches at least ``count`` times."""
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        if len(pattern.findall(log_text(server))) >= count:
            return True
        if time.monotonic() > deadline or server.proc.poll() is not None:
            return False
        time.sleep(0.1)  # polling interval
    return False


def usr1_dump(server: procs.Server, timeout: float = 5.0) -> dict[str, Any]:
    """SIGUSR1 to the master (by PID); parse its table and the workers' own lines."""
    offset = log_size(server)
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    text = ""
    for _ in range(100_000):
        text = _read_from(server, offset)
        head = _MASTER_HEAD.search(text)
        if head is not None:
            rows = _MASTER_ROW.findall(text[head.start() :])
            ready = [r for r in rows if r[3] == "ready"]
            if len(_WORKER_SELF.findall(text)) >= len(ready):
                break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling interval
    head = _MASTER_HEAD.search(text)
    if head is None:
        return {"error": f"no state dump in the log within {timeout:g} s"}
    own = {int(pid): int(n) for _, pid, _, n in _WORKER_SELF.findall(text)}
    workers = []
    for slot, pid, gen, state, up, requests in _MASTER_ROW.findall(text[head.start() :]):
        workers.append(
            {
                "slot": int(slot),
                "pid": int(pid),
                "generation": int(gen),
                "state": state,
                "up_seconds": int(up),
                "requests_heartbeat": int(requests),
                "requests": own.get(int(pid), int(requests)),
                "exact": int(pid) in own,
            }
        )
    return {
        "generation": int(head.group(2)),
        "workers": workers,
        "restarts": head.group(4),
        "text": text.strip(),
    }


def split(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Requests each worker served between two dumps (same PIDs: no recycling in between)."""
    if "error" in before or "error" in after:
        return {"error": before.get("error") or after.get("error")}
    start = {w["pid"]: w["requests"] for w in before["workers"]}
    counts = []
    for w in sorted(after["workers"], key=lambda w: w["slot"]):
        counts.append(
            {
                "slot": w["slot"],
                "pid": w["pid"],
                "requests": w["requests"] - start.get(w["pid"], 0),
                "exact": w["exact"],
            }
        )
    values = [c["requests"] for c in counts]
    out: dict[str, Any] = {"workers": counts, "total": sum(values)}
    if len(values) >= 2:
        busiest, least = max(values), min(values)
        out["ratio"] = busiest / least if least else None  # None: one worker served nothing
        out["within_2_to_1"] = bool(least) and busiest <= 2 * least
    return out


class LogWatch:
    """Tails a server log from a thread every 100 ms and notes when (monotonic) each line that
    matters first appeared, and when each of ``watch_pids`` stopped existing."""

    PATTERNS = (
        READY,
        RELOAD_START,
        GENERATION_READY,
        RECYCLE,
        WORKER_STOPPING,
        WORKER_DONE,
        TROUBLE,
    )

    def __init__(self, server: procs.Server, watch_pids: list[int], max_seconds: float = 120):
        self.server = server
        self.watch_pids = list(watch_pids)
        self.max_seconds = max_seconds
        self.events: list[tuple[float, str]] = []
        self.gone: dict[int, float] = {}
        self._offset = log_size(server)
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-watch", daemon=True)

    def __enter__(self) -> LogWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.wait(0.1) and time.monotonic() < end:
            self.poll()

    def poll(self) -> None:
        now = time.monotonic()
        _flush(self.server)
        try:
            with open(self.server.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            data = b""
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if any(p.search(line) for p in self.PATTERNS):
                self.events.append((now, line))
        for pid in self.watch_pids:
            if pid not in self.gone and not procs.is_alive(pid):
                self.gone[pid] = now

    def timeline(self, origin: float) -> list[dict[str, Any]]:
        out = [{"t": round(t - origin, 2), "line": line} for t, line in self.events]
        out += [
            {"t": round(t - origin, 2), "line": f"(pid {pid} no longer exists)"}
            for pid, t in self.gone.items()
        ]
        return sorted(out, key=lambda e: e["t"])
