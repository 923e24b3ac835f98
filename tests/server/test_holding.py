"""Connections accepted at max-connections are held as bare sockets until their head is in."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.tcp import Port
from twisted.internet.testing import MemoryReactor

from catalyzer.server.channel import HTTPChannel, HTTPFactory
from catalyzer.server.holding import HeldConnection, head_complete
from catalyzer.server.shedding import MIN_AGE, Standing
from catalyzer.testing import InMemoryServer
from tests.helpers import hello

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"", False),
        (PARTIAL, False),
        (b"GET / HTTP/1.1\r\n", False),
        (REQUEST, True),
        (b"GET / HTTP/1.1\nHost: x\n\n", True),  # bare LF: the reader decides
        (b"\x16\x03\x01\x02\x00", True),  # a TLS ClientHello: the reader's 400, at once
        (b"get / HTTP/1.1\r\n", True),  # not a method: the same
    ],
)
def test_head_complete(data: bytes, complete: bool) -> None:
    # Only the first len(data) bytes have arrived: what follows them must not count.
    assert head_complete(data + b"\r\n\r\n", len(data)) is complete


class Harness:
    """A real listening port on a memory reactor, served by an in-memory server's state with
    catalyzer's accept loop; clients are real sockets on 127.0.0.1."""

    def __init__(self, **settings: Any) -> None:
        self.server = InMemoryServer(hello, **settings)
        self.state = self.server.state
        self.reactor = MemoryReactor()
        self.port = Port(0, HTTPFactory(self.state), 50, "127.0.0.1", self.reactor)
        self.port.startListening()
        self.state.listening_on([self.port])
        self.clients: list[socket.socket] = []

    def client(self, data: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=5)
        self.clients.append(sock)
        if data:
            sock.sendall(data)
        return sock

    def accept(self) -> None:
        self.port.doRead()

    def held(self) -> list[HeldConnection]:
        return [c for c in self.state.channels if isinstance(c, HeldConnection)]

    def watch_turn(self) -> None:
        """What the reactor does when the held sockets' epoll is readable."""
        heads = self.state.heads
        assert heads is not None
        heads.doRead()

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        for channel in list(self.state.channels):
            if isinstance(channel, HeldConnection):
                channel.drain()
            elif isinstance(channel, HTTPChannel) and channel.transport is not None:
                channel.transport.socket.close()  # type: ignore[attr-defined]
        self.port.connectionLost(None)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(max_connections=1, header_timeout=10)
    try:
        yield h
    finally:
        h.close()


def _answer(sock: socket.socket) -> bytes:
    """The response to one request for ``hello`` (its body is b"hello")."""
    data = b""
    with contextlib.suppress(TimeoutError):
        while not data.endswith(b"hello"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_below_the_limit_nothing_is_held(harness: Harness) -> None:
    harness.client(PARTIAL)
    harness.accept()
    assert harness.held() == [] and len(harness.state.channels) == 1


def test_at_the_limit_an_incomplete_head_is_held_and_served_once_complete(
    harness: Harness,
) -> None:
    harness.client()  # fills the one slot, silent (too young to shed)
    harness.accept()
    late = harness.client(PARTIAL)
    harness.accept()
    (held,) = harness.held()
    assert held.standing is Standing.HEADERS
    assert len(harness.state.channels) == 2  # over the limit by the one that came in
    assert harness.state.heads in harness.reactor.readers
    late.sendall(b"\r\n")
    harness.watch_turn()
    assert harness.held() == []
    # An ordinary connection now, which read the whole request from the kernel itself.
    assert _answer(late).startswith(b"HTTP/1.1 200 OK")
    assert harness.state.heads not in harness.reactor.readers  # none held: not watched


def test_a_connection_whose_request_is_in_at_accept_is_never_held(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client(REQUEST)
    harness.accept()
    assert harness.held() == []
    assert _answer(late).startswith(b"HTTP/1.1 200 OK")


def test_a_silent_connection_held_becomes_headers_as_bytes_arrive(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client()
    harness.accept()
    (held,) = harness.held()
    assert held.standing is Standing.SILENT and not held.unread_bytes()
    late.sendall(b"GET / HTTP/1.1\r\n")
    harness.watch_turn()
    assert held.standing is Standing.HEADERS and held.unread_bytes()


def test_a_held_connection_is_shed_for_a_newer_one_once_old_enough(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client(PARTIAL)
    harness.accept()
    (held,) = harness.held()
    harness.server.clock.advance(MIN_AGE)
    # The held one is the least advanced (an incomplete head, the oldest): it goes.
    harness.state.room._check()
    newest = harness.client(PARTIAL)
    harness.accept()
    assert held not in harness.state.channels
    with pytest.raises(ConnectionResetError):  # its head unread: the close is a reset
        assert late.recv(100) == b""
    assert [h.sock.getpeername() for h in harness.held()] == [newest.getsockname()]


def test_a_client_that_leaves_while_held_is_forgotten(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client(PARTIAL)
    harness.accept()
    late.close()
    harness.watch_turn()
    assert harness.held() == [] and len(harness.state.channels) == 1


def test_a_held_connection_past_the_header_timeout_gets_a_408(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client(PARTIAL)
    harness.accept()
    harness.server.clock.advance(10)
    assert harness.held() == []
    assert late.recv(4096).startswith(b"HTTP/1.1 408 Request Timeout")
    assert harness.state.metrics.snapshot()["by_class"]["4xx"] == 1


def test_draining_closes_held_connections(harness: Harness) -> None:
    harness.client()
    harness.accept()
    late = harness.client(PARTIAL)
    harness.accept()
    harness.state.drain()
    assert harness.held() == []
    with pytest.raises(ConnectionResetError):
        late.recv(100)


def test_the_accept_loop_stops_once_accepting_pauses() -> None:
    h = Harness(max_connections=1)
    try:
        for _ in range(4):
            h.client(PARTIAL)
        h.accept()
        # The first fills the only slot, and none is old enough to shed for the next: accepting
        # pauses, and the other three wait in the kernel's queue rather than past the limit.
        assert len(h.state.channels) == 1 and not h.state.accepting
    finally:
        h.close()


def test_held_connections_are_listed_as_receiving(harness: Harness) -> None:
    from catalyzer.server.channel import describe_connections

    harness.client()
    harness.accept()
    harness.client(PARTIAL)
    harness.accept()
    assert "?: receiving a request; 0 requests" in describe_connections(harness.state)
