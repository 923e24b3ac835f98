"""The ZeroMQ reader on a fake socket (edge-triggered draining, the per-turn batch, re-checks
after sends) and the real sockets' options on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from twisted.internet.testing import MemoryReactorClock

from catalyzer.split.frames import Kind, Message, encode, encode_batch, split_batch
from catalyzer.split.zmqio import (
    ZERO_COPY_FROM,
    SendResult,
    ZmqConnection,
    front_socket,
    handler_socket,
    new_context,
)


class FakeSocket:
    """The parts of a zmq.Socket the connection uses: a queue of incoming messages."""

    def __init__(self) -> None:
        self.incoming: list[list[bytes]] = []
        self.outgoing: list[list[Any]] = []
        self.send_error: Exception | None = None
        self.arrive_on_send: list[bytes] | None = None
        self.closed = False

    def getsockopt(self, option: int) -> int:
        if option == zmq.FD:
            return 42
        if option == zmq.EVENTS:
            return zmq.POLLIN if self.incoming else 0
        raise AssertionError(option)

    def recv_multipart(self, flags: int, copy: bool = True) -> list[Any]:
        assert flags == zmq.NOBLOCK
        if not self.incoming:
            raise zmq.Again()
        frames = self.incoming.pop(0)
        return frames if copy else [zmq.Frame(f) for f in frames]

    def send_multipart(self, frames: list[Any], flags: int, copy: bool) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.outgoing.append(list(frames))
        if self.arrive_on_send is not None:
            # A reply arrives while we send: libzmq may report it on this call's edge only.
            self.incoming.append(self.arrive_on_send)
            self.arrive_on_send = None

    def close(self, linger: int = 0) -> None:
        self.closed = True


def make(batch: int = 3) -> tuple[FakeSocket, MemoryReactorClock, ZmqConnection, list[list[bytes]]]:
    sock = FakeSocket()
    reactor = MemoryReactorClock()
    got: list[list[bytes]] = []
    conn = ZmqConnection(sock, reactor, got.append, batch=batch)
    return sock, reactor, conn, got


def turn(reactor: MemoryReactorClock) -> None:
    """One reactor turn: the calls due now, not those they schedule."""
    (call,) = reactor.getDelayedCalls()
    reactor.calls.remove(call)  # type: ignore[arg-type]
    call.func(*call.args, **call.kw)  # type: ignore[attr-defined]


def test_start_registers_the_fd_and_drains_what_arrived_before() -> None:
    sock, reactor, conn, got = make()
    sock.incoming.append([b"early"])
    conn.start()
    assert conn in reactor.getReaders()
    assert conn.fileno() == 42
    assert got == []
    reactor.advance(0)
    assert got == [[b"early"]]


def test_large_frames_are_received_as_views_of_zeromqs_buffer_small_ones_as_bytes() -> None:
    sock, reactor, conn, got = make()
    large = bytes(range(256)) * (ZERO_COPY_FROM // 256)
    sock.incoming.append([b"header", large, b"x" * (ZERO_COPY_FROM - 1)])
    conn.start()
    reactor.advance(0)
    [[header, body, small]] = got
    assert type(header) is bytes and header == b"header"
    assert type(body) is memoryview and body == large  # no copy into a Python bytes
    assert type(small) is bytes and small == b"x" * (ZERO_COPY_FROM - 1)


def test_drains_at_most_a_batch_per_turn_then_continues_next_turn() -> None:
    sock, reactor, conn, got = make(batch=3)
    conn.start()
    reactor.advance(0)
    sock.incoming.extend([[b"%d" % i] for i in range(7)])
    conn.doRead()
    assert len(got) == 3  # the reactor gets its turn back
    turn(reactor)
    assert len(got) == 6
    turn(reactor)
    assert [m[0] for m in got] == [b"%d" % i for i in range(7)]
    assert reactor.getDelayedCalls() == []  # nothing left: no busy loop


def test_a_send_that_takes_the_edge_schedules_a_drain() -> None:
    sock, reactor, conn, got = make()
    conn.start()
    reactor.advance(0)
    sock.arrive_on_send = [b"reply"]
    assert conn.send([b"id", b"hello"]) is SendResult.SENT
    assert sock.outgoing == [[b"id", b"hello"]]
    assert got == []
    reactor.advance(0)
    assert got == [[b"reply"]]


def test_send_results() -> None:
    sock, _reactor, conn, _got = make()
    sock.send_error = zmq.Again()
    assert conn.send([b"x"]) is SendResult.FULL
    sock.send_error = zmq.ZMQError(zmq.EHOSTUNREACH)
    assert conn.send([b"x"]) is SendResult.UNREACHABLE
    sock.send_error = zmq.ZMQError(zmq.EINVAL)
    with pytest.raises(zmq.ZMQError):
        conn.send([b"x"])


def test_a_failing_handler_does_not_stop_the_drain() -> None:
    sock = FakeSocket()
    reactor = MemoryReactorClock()
    seen: list[bytes] = []

    def on_message(frames: list[bytes]) -> None:
        seen.append(frames[0])
        if frames[0] == b"bad":
            raise RuntimeError("boom")

    conn = ZmqConnection(sock, reactor, on_message)
    conn.start()
    sock.incoming.extend([[b"bad"], [b"good"]])
    conn.doRead()
    assert seen == [b"bad", b"good"]


def test_stop_removes_the_reader_and_the_pending_drain() -> None:
    sock, reactor, conn, got = make()
    conn.start()
    conn.close()
    assert conn not in reactor.getReaders()
    assert reactor.getDelayedCalls() == []
    assert sock.closed
    sock.incoming.append([b"x"])
    conn.doRead()
    assert got == []


def test_real_router_and_dealer_on_loopback() -> None:
    """The option set is accepted by libzmq, and a message goes both ways; the ROUTER refuses
    to route to an unknown identity instead of dropping silently."""
    context = new_context()
    try:
        router, (endpoint,) = front_socket(
            context, ["tcp://127.0.0.1:*"], heartbeat=1.0, liveness=3.0
        )
        assert not endpoint.endswith(":*")
        dealer = handler_socket(context, endpoint, b"h1", heartbeat=1.0, liveness=3.0)
        dealer.send_multipart([b"hi"])
        assert router.poll(5000) == zmq.POLLIN
        assert router.recv_multipart() == [b"h1", b"hi"]
        router.send_multipart([b"h1", b"back"])
        assert dealer.poll(5000) == zmq.POLLIN
        assert dealer.recv_multipart() == [b"back"]
        reader = ZmqConnection(router, MemoryReactorClock(), lambda f: None)
        assert reader.send([b"nobody", b"x"]) is SendResult.UNREACHABLE
        dealer.close(0)
        router.close(0)
    finally:
        context.term()


def test_binding_a_bad_endpoint_fails_cleanly() -> None:
    context = new_context()
    try:
        with pytest.raises(zmq.ZMQError):
            front_socket(context, ["tcp://256.0.0.1:1"], heartbeat=1.0, liveness=3.0)
    finally:
        context.term()


def batching(routed: bool) -> tuple[FakeSocket, MemoryReactorClock, ZmqConnection, list[Any]]:
    sock = FakeSocket()
    reactor = MemoryReactorClock()
    got: list[list[bytes]] = []
    conn = ZmqConnection(sock, reactor, got.append, batching=True, routed=routed)
    return sock, reactor, conn, got


def test_messages_sent_in_one_turn_leave_together_at_its_end() -> None:
    sock, reactor, conn, _got = batching(routed=True)
    one = encode(Message(Kind.REQ, 0, 1, ((b"m", b"GET"),)))
    two = encode(Message(Kind.CANCEL, 1, 1))
    alone = encode(Message(Kind.HB, 0))
    assert conn.send([b"a", *one]) is SendResult.SENT
    conn.send([b"b", *alone])
    conn.send([b"a", *two])
    assert sock.outgoing == []
    reactor.advance(0)
    (to_a, to_b) = sock.outgoing
    assert to_a[0] == b"a" and split_batch(to_a[1:]) == [one, two]
    assert to_b == [b"b", *alone]  # one message goes as it is
    assert conn.batches_sent == 1


def test_a_batch_received_is_delivered_message_by_message() -> None:
    sock, reactor, conn, got = batching(routed=True)
    one, two = encode(Message(Kind.START, 0, 1)), encode(Message(Kind.HB, 1))
    sock.incoming.append([b"peer", *encode_batch([one, two])])
    sock.incoming.append([b"peer", *one])
    conn.start()
    reactor.advance(0)
    assert got == [[b"peer", *one], [b"peer", *two], [b"peer", *one]]


def test_a_malformed_batch_is_delivered_whole_for_the_decoder_to_refuse() -> None:
    sock, reactor, conn, got = batching(routed=False)
    bad = [encode_batch([[b"x"]])[0], b"\x00\x00\x00\x05", b"x"]
    sock.incoming.append(bad)
    conn.start()
    reactor.advance(0)
    assert got == [bad]


def test_a_send_failing_at_the_end_of_the_turn_is_reported() -> None:
    sock, reactor, conn, _got = batching(routed=True)
    failures: list[tuple[bytes | None, SendResult]] = []
    conn.on_send_failure = lambda peer, why: failures.append((peer, why))
    conn.send([b"gone", b"x"])
    sock.send_error = zmq.ZMQError(zmq.EHOSTUNREACH)
    reactor.advance(0)
    assert failures == [(b"gone", SendResult.UNREACHABLE)]


def test_close_sends_what_waits_for_the_end_of_the_turn() -> None:
    sock, reactor, conn, _got = batching(routed=False)
    conn.start()
    conn.send([b"bye"])
    conn.close()
    assert sock.outgoing == [[b"bye"]] and sock.closed
    assert reactor.getDelayedCalls() == []
