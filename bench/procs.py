"""Process plumbing shared by ``run.py`` and ``stream_rss.py``: free ports, starting a server,
waiting for it to answer, stopping it by PID, and sampling the RSS of a process tree.

Every wait here has a deadline; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "127.0.0.1"  # the only address any traffic is ever sent to
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- /proc


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." where comm may contain spaces and parentheses.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) > 1:
            parents[int(entry)] = int(rest[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that exist now."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppid_map().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    for _ in range(100_000):  # bounded walk
        if not todo:
            break
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, 0 if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(p) for p in process_tree(pid))


class RssSampler:
    """Samples the summed VmRSS of a process tree every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1, max_seconds: float = 900.0) -> None:
        self.pid = pid
        self.interval = interval
        self.max_seconds = max_seconds
        self.peak = 0
        self.samples = 0
        self._tree: list[int] = []
        self._tree_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        # Walking /proc for the process tree costs far more than reading a few status files:
        # do it once a second (and whenever a known process is gone), not at every sample.
        now = time.monotonic()
        if now - self._tree_at >= 1.0 or not self._tree:
            self._tree, self._tree_at = process_tree(self.pid), now
        values = [rss_bytes(p) for p in self._tree]
        if 0 in values:
            self._tree, self._tree_at = process_tree(self.pid), now
            values = [rss_bytes(p) for p in self._tree]
        value = sum(values)
        self.peak = max(self.peak, value)
        self.samples += 1
        return value

    def reset(self) -> None:
        self.peak = 0
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def accept_queue(port: int) -> int | None:
    """Connections waiting in the listen backlog of the sockets listening on ``HOST:port``
    (the rx_queue column of the LISTEN rows in /proc/net/tcp, added up: with SO_REUSEPORT there
    is one socket per worker), None if there is no such socket."""
    wanted = f"0100007F:{port:04X}"
    total: int | None = None
    try:
        with open("/proc/net/tcp") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 4 and cols[1] == wanted and cols[3] == "0A":
                    total = (total or 0) + int(cols[4].split(":")[1], 16)
    except OSError:
        pass
    return total


# -- server processes


@dataclass
class Server:
    """A running server subprocess, in its own session so its output stays out of ours."""

    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        self.log_file.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_server(
    name: str, argv: list[str], port: int, log_path: Path, source: Path | None = None
) -> Server:
    """``source``: a directory whose ``catalyzer`` package the server imports instead of the
    installed one (an older tree's ``src``, for an A/B run)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # noqa: SIM115 (closed in stop_server)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) if source is None else f"{source}{os.pathsep}{ROOT}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(name, argv, port, proc, log_path, log_file)


class NotReady(RuntimeError):
    pass


def status_line(port: int, path: str = "/", timeout: float = 2.0) -> str:
    """Connect, send one GET, and return the response's status line (then hang up)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in data and time.monotonic() < deadline and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0].decode("latin-1")


def wait_ready(server: Server, timeout: float = 30.0) -> float:
    """Poll TCP connect + one HTTP request until a 2xx answer; seconds it took."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    for _ in range(10_000):
        if server.proc.poll() is not None:
            raise NotReady(
                f"{server.name} exited with status {server.proc.returncode} before answering:\n"
                + server.log_tail()
            )
        if time.monotonic() > deadline:
            break
        try:
            line = status_line(server.port, timeout=1.0)
            if line.startswith("HTTP/1.") and line[9:10] == "2":
                return time.monotonic() - server.started
            last_error = f"status line {line!r}"
        except OSError as e:
            last_error = f"{type(e).__name__}: {e}"
        time.sleep(0.05)  # polling interval, not synchronisation
    raise NotReady(
        f"{server.name} not ready after {timeout:g}s ({last_error}):\n" + server.log_tail()
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def is_alive(pid: int) -> bool:
    """Does ``pid`` exist and is it not a zombie?"""
    return _alive(pid)


def stop_server(server: Server, timeout: float = STOP_TIMEOUT) -> dict[str, object]:
    """SIGTERM the server's PID, SIGKILL it after ``timeout``; then SIGKILL any of its
    descendants that outlived it (by PID). Returns what happened."""
    tree = process_tree(server.pid)
    killed: list[int] = []
    outcome: dict[str, object] = {"signal": "SIGTERM"}
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            outcome["signal"] = "SIGKILL"
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
    else:
        outcome["signal"] = "already exited"
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        left = [p for p in tree if p != server.pid and _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in tree:
        if p != server.pid and _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
                killed.append(p)
    outcome["returncode"] = server.proc.returncode
    outcome["killed_leftovers"] = killed
    server.log_file.close()
    return outcome
