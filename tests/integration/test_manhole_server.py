"""--manhole on a real server: a session through its unix socket sees the live server."""

from __future__ import annotations

import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration


class Session:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(0.2)
        self.sock.connect(path)
        self.seen = b""

    def read_until(self, marker: bytes, deadline: float = 10.0) -> bytes:
        end = time.monotonic() + deadline
        while marker not in self.seen:
            if time.monotonic() > end:
                raise AssertionError(f"{marker!r} not seen; got {self.seen[-500:]!r}")
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"closed before {marker!r}; got {self.seen[-500:]!r}")
            self.seen += data
        before, _, self.seen = self.seen.partition(marker)
        return before

    def run(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        self.read_until(line.encode())  # the echo of what we typed
        return self.read_until(b">>> ")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.split_skip(
    "the front's manhole offers handlers(), not workers(): tests/split/test_operations.py"
)
def test_session_sees_live_server(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    path = str(tmp_path / "manhole.sock")
    server = start_server("--manhole", f"unix:{path}")
    server.wait_until(lambda: Path(path).exists() or None, 10.0, "the manhole socket")
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert server.request("GET", "/hello")[0] == 200
    session = Session(path)
    try:
        assert b"catalyzer manhole: workers(), dump(), stats(), reload()" in session.read_until(
            b">>> "
        )
        assert session.run("len(workers())").strip() == str(server.procs).encode()
        assert b"requests" in session.run("print(dump())")
        if server.procs > 1:
            before = server.worker_pids()
            session.run("reload()")
            server.wait_ready(server.procs * 2)  # a new generation reported ready
            assert set(server.worker_pids()) - set(before)
        else:
            assert b"cannot reload itself" in session.run("reload()")
    finally:
        session.close()
