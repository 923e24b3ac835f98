"""Upload progress over real sockets: one client uploads slowly while others poll, in both modes
(with --procs 2 the polls land on both workers: each new connection is hashed to one of them)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Callable

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

SIZE = 200_000
PIECE = 10_000


def poll(server: ServerProcess, upload_id: str) -> dict[str, object]:
    status, _, body = server.request("GET", f"/progress?X-Progress-ID={upload_id}")
    assert status == 200
    result: dict[str, object] = json.loads(body)
    return result


def slow_upload(
    server: ServerProcess, upload_id: str, step: threading.Event, sent: threading.Event, pieces: int
) -> socket.socket:
    """Send the headers, then one piece each time ``step`` is set (and ``sent`` once it went)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(
        f"POST /echo?X-Progress-ID={upload_id} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {SIZE}\r\n\r\n".encode()
    )

    def feed() -> None:
        for _ in range(pieces):
            if not step.wait(timeout=30):
                return
            step.clear()
            sock.sendall(b"u" * PIECE)
            sent.set()

    threading.Thread(target=feed, daemon=True).start()
    return sock


def test_polls_never_go_backwards_and_end_done(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--progress-path", "/progress", "--access-log", "off")
    step, sent = threading.Event(), threading.Event()
    sock = slow_upload(server, "up-1", step, sent, SIZE // PIECE)
    seen: list[int] = []
    try:
        for i in range(SIZE // PIECE):
            step.set()
            assert sent.wait(timeout=15)
            sent.clear()
            target = (i + 1) * PIECE

            def caught_up(target: int = target) -> dict[str, object] | None:
                entry = poll(server, "up-1")
                # In prefork mode the master's view can lag a fraction of a second: a poll may
                # still say "starting" before the first news, but never goes backwards.
                assert entry["state"] in ("starting", "uploading", "done"), entry
                received = int(entry["received"])  # type: ignore[call-overload]
                assert not seen or received >= seen[-1], (seen, entry)
                seen.append(received)
                return entry if received >= target else None

            server.wait_until(caught_up, 10.0, f"progress to reach {target}")
        sock.settimeout(15)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

        def done() -> dict[str, object] | None:
            entry = poll(server, "up-1")
            return entry if entry["state"] == "done" else None

        final = server.wait_until(done, 10.0, "the upload to be done")
        assert final == {"state": "done", "received": SIZE, "size": SIZE}
    finally:
        sock.close()
    assert seen == sorted(seen) and seen[-1] == SIZE


def test_upload_of_a_dead_worker_ends_in_error(
    server_mode: str, start_server: Callable[..., ServerProcess]
) -> None:
    if server_mode != "prefork":
        pytest.skip("needs workers: runs in prefork mode")
    server = start_server("--progress-path", "/progress", "--access-log", "off")
    step, sent = threading.Event(), threading.Event()
    sock = slow_upload(server, "doomed", step, sent, 1)
    try:
        step.set()
        assert sent.wait(timeout=15)
        server.wait_until(
            lambda: poll(server, "doomed")["received"] == PIECE or None, 10.0, "progress"
        )
        for pid in server.worker_pids():  # ours (the master's children); the receiver among them
            os.kill(pid, signal.SIGKILL)
        server.wait_until(
            lambda: poll(server, "doomed")["state"] == "error" or None, 15.0, "state error"
        )
    finally:
        sock.close()
