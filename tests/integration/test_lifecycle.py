"""Stopping: SIGTERM finishes requests in flight, cuts hung ones after --die-timeout, doesn't wait
for idle keep-alive connections; SIGINT stops at once."""

from __future__ import annotations

import http.client
import signal
import socket
import uuid

import pytest

from tests.integration.conftest import (
    CLIENT_TIMEOUT,
    Launcher,
    ServerProcess,
    SplitServer,
    read_until_closed,
)

pytestmark = pytest.mark.integration

# Deadlines for the process to exit. Generous for a loaded machine, yet far below the waits a
# wrong behaviour would cause (die-timeout 30 s, keepalive-timeout 60 s, a hang of 600 s).
QUICK_EXIT = 8.0
# How long after its connections are cut a process with a thread stuck in the app may take to
# exit. These tests always use all of it while the bug below is there: kept short.
HUNG_EXIT = 5.0

# What the log says on SIGTERM, per mode.
STOP_LINE = {"single": "SIGTERM", "prefork": "graceful stop", "split": "SIGTERM"}


def token() -> str:
    return uuid.uuid4().hex[:12]


def start_request(server: ServerProcess, path: str, marker: str) -> http.client.HTTPConnection:
    """Send a request to an app that logs ``marker TOKEN`` when it starts; return once it has."""
    tag = token()
    conn = server.connection()
    conn.request("GET", f"{path}{'&' if '?' in path else '?'}token={tag}")
    server.wait_for_log(rf"{marker} {tag}$")
    return conn


def test_sigterm_idle_exits_zero(start_server: Launcher) -> None:
    server = start_server()
    status, _, _ = server.request("GET", "/hello")
    assert status == 200
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit(QUICK_EXIT) == 0, server.log()


@pytest.mark.parametrize("threads", ["0", "2"])
def test_sigterm_finishes_request_in_flight(
    start_server: Launcher, server_mode: str, threads: str
) -> None:
    server = start_server("--threads", threads)
    conn = start_request(server, "/slow?seconds=2", "slow-started")
    try:
        server.send_signal(signal.SIGTERM)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert (response.status, body) == (200, b"slow done\n")
    # The stop was seen while the app ran (in a thread, or in the reactor's own thread, where the
    # signal handler marks the process as stopping at once): the response says the connection
    # won't be reused.
    assert response.headers["Connection"] == "close"
    assert server.wait_exit(QUICK_EXIT) == 0, server.log()
    # The log says what stopped the server (a prefork master calls it a graceful stop).
    assert STOP_LINE[server_mode] in server.log()


def test_sigterm_cuts_hung_request_after_die_timeout(start_server: Launcher) -> None:
    server = start_server("--threads", "2", "--die-timeout", "1")
    conn = start_request(server, "/hang", "hang-started")
    try:
        server.send_signal(signal.SIGTERM)
        status = server.wait_exit(1 + HUNG_EXIT)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()  # cut: no response at all
    finally:
        conn.close()
    assert status == 1, server.log()
    assert "die-timeout (1s) reached" in server.log()


def test_idle_keepalive_connection_does_not_delay_exit(start_server: Launcher) -> None:
    server = start_server("--keepalive-timeout", "60")
    conn = server.connection()
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        assert not response.will_close
        sock = conn.sock
        assert sock is not None
        # One idle keep-alive connection, and one that connected and never sent a byte.
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit(QUICK_EXIT) == 0, server.log()
        assert read_until_closed(sock) == b""
        assert read_until_closed(silent) == b""
    finally:
        conn.close()
        silent.close()


def test_sigint_stops_an_idle_server(start_server: Launcher) -> None:
    server = start_server()
    server.send_signal(signal.SIGINT)
    assert server.wait_exit(QUICK_EXIT) == 0, server.log()


def test_sighup_without_a_master_is_logged_and_ignored(start_server: Launcher) -> None:
    if start_server.mode == "prefork":
        pytest.skip("the prefork master reloads on HUP (tests/integration/test_prefork.py)")
    server = start_server()
    # Each process that has no workers to reload: one catalyzer; a front and its handler.
    processes = [server, *([server.handler] if isinstance(server, SplitServer) else [])]
    for n, process in enumerate(processes, start=1):
        assert process is not None
        process.send_signal(signal.SIGHUP)
        server.wait_for_log(r"SIGHUP ignored: \S.*$", count=n)
    status, _, body = server.request("GET", "/hello")
    assert (status, body) == (200, b"hello\n")
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit(QUICK_EXIT) == 0, server.log()


def test_sigint_does_not_wait_for_requests_in_flight(start_server: Launcher) -> None:
    # die-timeout stays at its 30 s default: SIGINT must not wait for it.
    server = start_server("--threads", "2")
    conn = start_request(server, "/hang", "hang-started")
    try:
        server.send_signal(signal.SIGINT)
        status = server.wait_exit(HUNG_EXIT)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()
    assert status == 1, server.log()


def test_sigusr1_dumps_state_and_keeps_serving(start_server: Launcher) -> None:
    server = start_server()
    conn = server.connection()
    try:
        conn.request("GET", "/hello")
        conn.getresponse().read()
        local_port = conn.sock.getsockname()[1]
        server.send_signal(signal.SIGUSR1)
        # Single process: its own view; prefork: the master's table and each worker's view.
        server.wait_for_log(rf"127\.0\.0\.1:{local_port}: idle; 1 requests")
    finally:
        conn.close()
    assert server.request("GET", "/hello")[0] == 200
