"""Alive under faults (issue 10): a worker that leaks memory, a worker that freezes, a flood of
connections past the file-descriptor limit. Real processes on 127.0.0.1, bounded in count and
time; every process a test starts or stops is its own, by PID.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import (
    APPS,
    CLIENT_TIMEOUT,
    Launcher,
    ServerProcess,
    pid_alive,
    run_cli,
)

pytestmark = pytest.mark.integration

REPLACE = 20.0  # a worker replaced: noticed, new interpreter started and ready


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Servers whose mode comes from the test's own arguments ("single" adds none)."""
    launch = Launcher("single", tmp_path)
    try:
        yield launch
    finally:
        launch.close()


@dataclass
class Clients:
    """``count`` threads, each sending ``requests`` GETs of ``path``, one connection each
    (Connection: close), recording every status and error."""

    port: int
    path: str
    count: int
    requests: int
    timeout: float = CLIENT_TIMEOUT
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self) -> Clients:
        lock = threading.Lock()

        def one_client() -> None:
            for _ in range(self.requests):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                try:
                    conn.request("GET", self.path, headers={"Connection": "close"})
                    response = conn.getresponse()
                    body = response.read()
                    with lock:
                        self.statuses.append(response.status)
                        self.bodies.append(body)
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        self.errors.append(repr(e))
                finally:
                    conn.close()

        threads = [threading.Thread(target=one_client, daemon=True) for _ in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.timeout * self.requests)
        assert not any(t.is_alive() for t in threads), "a client is still running"
        return self


# -- memory


def test_max_worker_rss_is_refused_without_a_master() -> None:
    result = run_cli("--app", f"{APPS}:app", "--max-worker-rss", "100", deadline=20.0)
    assert result.returncode != 0
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("catalyzer: error: --max-worker-rss needs a master"), result.stderr
    assert "Traceback" not in result.stderr


def test_leaking_worker_is_recycled_with_no_failed_request(
    launcher: Callable[..., ServerProcess],
) -> None:
    # A worker starts at some 30-60 MiB; /leak keeps 20 MiB more per request, so each worker
    # passes 150 MiB within a few requests.
    server = launcher("--procs", "2", "--max-worker-rss", "150", "--access-log", "off")
    first = set(server.worker_pids())
    clients = Clients(server.port, "/leak", count=3, requests=12).run()
    assert not clients.errors, clients.errors
    assert clients.statuses == [200] * 36
    log = server.log()
    lines = re.findall(
        r"worker \d \(pid \d+\): max-worker-rss \(RSS (\d+) MiB > 150 MiB\); "
        r"starting its replacement$",
        log,
        re.M,
    )
    assert lines, log
    assert all(int(figure) > 150 for figure in lines)
    # The replacements serve (and leak, and are recycled in turn), still with no failure.
    server.wait_ready(3, REPLACE)
    more = Clients(server.port, "/leak", count=3, requests=4).run()
    assert not more.errors, more.errors
    assert more.statuses == [200] * 12
    answered = {int(b.split(b"pid=")[1]) for b in clients.bodies + more.bodies}
    assert answered - first, "no replacement worker answered"


# -- a frozen worker


def test_stopped_worker_is_replaced_within_the_liveness_window(
    launcher: Callable[..., ServerProcess],
) -> None:
    server = launcher("--procs", "2", "--worker-liveness", "2", "--access-log", "off")
    (_, victim), (_, survivor) = server.ready_workers()
    os.kill(victim, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        server.wait_for_log(rf"worker \d \(pid {victim}\) frozen: no heartbeat for", REPLACE)
        noticed = time.monotonic() - stopped_at
        server.wait_ready(3, REPLACE)
        # Heartbeats come every second: the window plus one beat, plus a loaded machine's slack.
        assert noticed < 2 + 1 + 2, f"{noticed:.1f}s\n{server.log()}"
        server.wait_until(
            lambda: None if pid_alive(victim) else True, REPLACE, "the frozen worker's end"
        )
        # Every connection is answered, the frozen worker's listening slot included.
        clients = Clients(server.port, "/hello", count=4, requests=10).run()
        assert not clients.errors, clients.errors
        assert clients.statuses == [200] * 40
        assert survivor in server.worker_pids()
        assert server.log().count(" frozen: ") == 1
    finally:
        if pid_alive(victim):
            os.kill(victim, signal.SIGKILL)


# -- log floods


FD_LIMIT = 64


def test_fd_exhaustion_logs_a_bounded_number_of_lines_and_serving_resumes(
    start_server: Launcher, server_mode: str
) -> None:
    server = start_server("--access-log", "off")
    serving = server.worker_pids() if server_mode == "prefork" else [server.pid]
    for pid in serving:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    held: list[socket.socket] = []
    try:
        # Far more connections than the serving processes have descriptors: the kernel queues
        # them, the server accepts until EMFILE, then refuses the rest (Twisted closes them).
        for _ in range(FD_LIMIT * 2 * len(serving) + 100):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        server.wait_for_log(r"EMFILE", 10.0)
        # A second wave while the first is still held: more refusals, no more lines.
        for _ in range(100):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        server.wait_for_log(r"\d+ more accept errors in the last 10s", 20.0)
    finally:
        for sock in held:
            sock.close()
    log = server.log()
    flood_lines = [line for line in log.splitlines() if "EMFILE" in line or "accept errors" in line]
    # One line per serving process per interval, and one count per interval: a handful, not
    # three per refused connection.
    assert 2 <= len(flood_lines) <= 4 * len(serving), "\n".join(flood_lines)
    # The descriptors are back: once the server has worked through the dead connections still
    # queued in its backlog (closed by their clients, each reset as it is accepted), every new
    # connection is served.
    deadline = time.monotonic() + 20.0
    while Clients(server.port, "/hello", count=1, requests=1).run().errors:
        assert time.monotonic() < deadline, "the server did not serve again after the flood"
    clients = Clients(server.port, "/hello", count=2, requests=10).run()
    assert not clients.errors, clients.errors
    assert clients.statuses == [200] * 20


# -- disk full


@pytest.fixture
def full_spool(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (root only), unmounted and removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the spool directory needs root")
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount(8) here")
    spool = tmp_path / "spool"
    spool.mkdir()
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield spool
    finally:
        unmount(spool)
        spool.rmdir()


def unmount(path: Path) -> None:
    """Unmount ``path``, waiting (with a deadline) for a server process still closing a spool
    file there to let go; detached lazily as a last resort, so nothing stays mounted."""
    deadline = time.monotonic() + 10.0
    while subprocess.run(
        ["umount", str(path)], check=False, capture_output=True, timeout=20
    ).returncode:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(path)], timeout=20, check=True)
            return
        time.sleep(0.05)  # polling interval: the condition is checked again


def post_raw(port: int, body: bytes) -> bytes:
    """POST ``body`` on a new connection; everything the server sent back until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        with contextlib.suppress(ConnectionError):
            sock.sendall(head + body)  # the server may answer and close before it has it all
        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def test_full_spool_dir_gets_507_and_the_server_keeps_serving(
    start_server: Launcher, full_spool: Path
) -> None:
    server = start_server(
        "--spool-dir", str(full_spool), "--body-spool-threshold", "64K", "--access-log", "off"
    )
    answer = post_raw(server.port, b"x" * (3 * 1024 * 1024))
    head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 507 Insufficient Storage\r\n"), answer[:300]
    assert "Connection: close" in head
    # A body that fits in memory, and one that fits in what is left of the spool, still work.
    for size in (1000, 200 * 1024):
        status, _, body = server.request("POST", "/echo", body=b"y" * size)
        assert status == 200
        assert f'"body_length": {size}' in body.decode()
    assert server.request("GET", "/hello")[0] == 200
    lines = [line for line in server.log().splitlines() if str(full_spool) in line]
    assert len(lines) == 1, lines
    assert "507 to 127.0.0.1: cannot spool the request body to" in lines[0]
    assert "No space left on device" in lines[0]


# -- connection exhaustion


class Slowloris:
    """``count`` connections that send a request's headers one line every ``every`` seconds
    and never finish them; each one the server closes is opened again (at most ``reopen_max``
    times in all). One thread, non-blocking sockets, stopped by :meth:`stop`."""

    def __init__(self, port: int, count: int, every: float = 0.3, reopen_max: int = 20000):
        self.port = port
        self.count = count
        self.every = every
        self.reopen_max = reopen_max
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        assert not self._thread.is_alive(), "the slowloris thread did not stop"

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            selector.register(self._open(), selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=self.every):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        continue  # an answer (a 408): the server closes it next
                    selector.unregister(sock)
                    sock.close()
                    if self.reopened < self.reopen_max and not self._stop.is_set():
                        self.reopened += 1
                        selector.register(self._open(), selectors.EVENT_READ)
                for key in list(selector.get_map().values()):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    with contextlib.suppress(OSError):
                        sock.send(b"X-Slow: 1\r\n")
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


def test_slowloris_at_max_connections_is_shed_and_fast_clients_are_served(
    start_server: Launcher, server_mode: str
) -> None:
    server = start_server("--max-connections", "50", "--access-log", "off")
    began = time.monotonic()
    with Slowloris(server.port, count=200) as attack:
        # The attack holds every slot, and the server is shedding its connections.
        server.wait_until(
            lambda: True if attack.reopened >= 50 else None, 20.0, "connections being shed"
        )
        fast = Clients(server.port, "/hello", count=4, requests=25, timeout=5.0).run()
        shed = attack.reopened
    assert not fast.errors, fast.errors[:5]
    assert fast.statuses == [200] * 100
    assert shed >= 100
    log = server.log()
    assert "max-connections: closing a connection with an incomplete request" in log
    # The shedding is logged once per 10 s per serving process, with a count. (A connection is
    # shed only once it is 1 s old, so the attack may take more than one interval.)
    intervals = 1 + math.ceil((time.monotonic() - began) / 10)
    processes = 2 if server_mode == "prefork" else 1
    assert log.count("max-connections: closing") <= 2 * intervals * processes
