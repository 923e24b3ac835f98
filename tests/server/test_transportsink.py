"""TransportSink.send_direct on a real connected transport (a socketpair, no reactor turns)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.tcp import Server

from catalyzer.server.transportsink import TransportSink


class Sink(TransportSink):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[Sink, socket.socket, Server]]:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    sink = Sink()
    transport = Server(left, sink, ("127.0.0.1", 1), None, 1, reactor)
    sink.makeConnection(transport)
    sink._socket = left
    try:
        yield sink, right, transport
    finally:
        transport.stopReading()
        transport.stopWriting()
        left.close()
        right.close()


def read_all(sock: socket.socket) -> bytes:
    out = b""
    for _ in range(10_000):
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        out += data
    return out


def test_pieces_go_out_in_order_in_one_call(pair: tuple[Sink, socket.socket, Server]) -> None:
    sink, peer, _ = pair
    head, body = b"HEAD\r\n\r\n", b"body" * 10
    assert sink.send_direct([memoryview(head), memoryview(body)]) == len(head) + len(body)
    assert read_all(peer) == head + body


def test_nothing_is_sent_past_queued_output(pair: tuple[Sink, socket.socket, Server]) -> None:
    sink, peer, transport = pair
    transport.write(b"queued first")
    assert sink.send_direct([memoryview(b"later")]) is None
    assert read_all(peer) == b""


def test_a_full_socket_takes_part_then_nothing(pair: tuple[Sink, socket.socket, Server]) -> None:
    sink, peer, _ = pair
    big = b"x" * (64 << 20)
    sent = sink.send_direct([memoryview(big)])
    assert sent is not None and 0 < sent < len(big)
    assert sink.send_direct([memoryview(big)[sent:]]) == 0
    assert len(read_all(peer)) == sent


def test_no_plain_socket_no_direct_send(pair: tuple[Sink, socket.socket, Server]) -> None:
    sink, _peer, _ = pair
    sink._socket = None
    assert sink.send_direct([memoryview(b"x")]) is None


def test_a_closed_peer_raises(pair: tuple[Sink, socket.socket, Server]) -> None:
    sink, peer, _ = pair
    peer.close()
    with pytest.raises(OSError):
        sink.send_direct([memoryview(b"x" * 1000)])
