"""The front's shell on the real HTTP engine in memory: an HTTPChannel on a StringTransport, the
router, a fake ZeroMQ connection and a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock

from catalyzer.server.channel import ServerState
from catalyzer.settings import Config
from catalyzer.split.frames import Kind, Message, encode
from catalyzer.split.front import SplitFront, closing_head
from catalyzer.split.router import Router, RouterSettings
from catalyzer.split.zmqio import SendResult
from catalyzer.testing import InMemoryConnection
from tests.split.fakes import FakeConnection

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def unused_app(environ: Any, start_response: Any) -> list[bytes]:
    raise AssertionError("the front never calls an app")


class Setup:
    def __init__(self, **settings: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.router = Router(
            RouterSettings(**{"window": 1000, "no_handler_grace": 2.0, **settings})
        )
        self.front = SplitFront(self.router, self.reactor)
        self.conn = FakeConnection(routed=True)
        self.front.attach(self.conn)  # type: ignore[arg-type]
        config = Config.from_values({"access-log": "off"})
        self.state = ServerState(unused_app, config, self.reactor, responder=self.front.responder)
        self.seq = 0

    def hello(self, slots: int = 1) -> None:
        self.say(Kind.HELLO, meta=((b"slots", b"%d" % slots), (b"pid", b"9")))
        self.conn.take()

    def say(self, kind: Kind, rid: int = 0, meta: Any = (), body: Any = ()) -> None:
        frames = encode(Message(kind, self.seq, rid, tuple(meta), tuple(body)))
        self.seq += 1
        self.conn.on_message([b"h1", *frames])

    def client(self) -> InMemoryConnection:
        return InMemoryConnection(self.state, 40001)


def test_a_request_goes_to_the_handler_and_its_answer_to_the_client() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET /x?y=1 HTTP/1.1\r\nHost: example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    (req,) = s.conn.take()
    assert req.kind is Kind.REQ
    assert (req.get(b"m"), req.get(b"t"), req.get(b"ka")) == (b"GET", b"/x?y=1", b"1")
    # Loopback is a trusted proxy by default: the front's judgement travels with the request.
    # One pair each for the environ entries and the headers, an item per line.
    (entries,) = req.get_all(b"e")
    assert "REMOTE_ADDR=6.6.6.6" in entries.decode().split("\n")
    assert req.get(b"pk") == b"HTTP_X_FORWARDED_FOR"
    (headers,) = req.get_all(b"h")
    assert b"x-forwarded-for:6.6.6.6" in headers.lower().split(b"\n")
    s.say(Kind.START, req.rid)
    s.say(Kind.HEAD, req.rid, ((b"st", b"200"),), (HEAD + b"hello",))
    s.say(Kind.END, req.rid, ((b"st", b"200"), (b"ka", b"1")))
    assert client.output() == HEAD + b"hello"
    assert not client.closed
    assert s.state.metrics.requests == 1
    # The connection carries the next request.
    client.send(b"GET /again HTTP/1.1\r\nHost: example\r\n\r\n")
    assert [m.kind for m in s.conn.take()] == [Kind.REQ]


def test_the_access_log_and_metrics_count_the_body_the_handler_sent(tmp_path: Any) -> None:
    s = Setup()
    path = tmp_path / "access.log"
    s.state = ServerState.from_config(
        unused_app,
        Config.from_values({"access-log": str(path)}),
        s.reactor,
        responder=s.front.responder,
    )
    s.hello()
    client = s.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n")
    (req,) = s.conn.take()
    s.say(Kind.START, req.rid)
    s.say(Kind.HEAD, req.rid, ((b"st", b"200"),), (HEAD + b"hello",))
    s.say(Kind.END, req.rid, ((b"st", b"200"), (b"ka", b"1"), (b"bs", b"5")))
    assert client.output() == HEAD + b"hello"
    assert s.state.metrics.snapshot()["bytes_out"] == 5
    assert s.state.access_log is not None
    s.state.access_log.close()
    assert '"GET /x HTTP/1.1" 200 5 ' in path.read_text()


def test_a_head_framed_for_keep_alive_before_the_stop_says_close() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n")
    (req,) = s.conn.take()
    assert req.get(b"ka") == b"1"
    s.state.stop_keep_alive()  # SIGTERM while the handler runs the app
    s.say(Kind.START, req.rid)
    s.say(Kind.HEAD, req.rid, ((b"st", b"200"),), (HEAD + b"hello",))
    s.say(Kind.END, req.rid, ((b"st", b"200"), (b"ka", b"1")))
    assert client.output() == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    assert client.closed


def test_closing_head() -> None:
    assert closing_head(
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nA: b\r\n\r\nbody", b"more")
    ) == (
        b"HTTP/1.0 200 OK\r\nA: b\r\nConnection: close\r\n\r\nbody",
        b"more",
    )
    assert closing_head((b"HTTP/1.1 200 OK\r\n\r\n",)) == (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    )
    # Already closing, or a head cut by a small window: left as it is.
    assert closing_head((b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",)) is None
    assert closing_head((b"HTTP/1.1 200 OK\r\nA: b", b"\r\n\r\n")) is None


def test_a_small_body_travels_with_the_request() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    body = b"b" * 200_000
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    (req,) = s.conn.take()
    assert b"".join(req.body) == body
    assert req.get_int(b"bl") == len(body)


def test_a_large_body_is_pulled_by_the_handler_piece_by_piece() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    body = bytes(range(256)) * 4000  # 1,024,000 bytes
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    (req,) = s.conn.take()
    assert req.body == () and req.get_int(b"bl") == len(body)
    s.say(Kind.START, req.rid)
    s.conn.take()  # GO
    s.say(Kind.BODYREQ, req.rid, ((b"o", b"1000"), (b"n", b"5000")))
    (piece,) = s.conn.take()
    assert (piece.kind, piece.rid, piece.get_int(b"o")) == (Kind.BODY, req.rid, 1000)
    assert b"".join(piece.body) == body[1000:6000]
    # Past the end: only what there is.
    s.say(Kind.BODYREQ, req.rid, ((b"o", b"1023000"), (b"n", b"5000")))
    (piece,) = s.conn.take()
    assert b"".join(piece.body) == body[1023000:]
    # A request beyond the body is a protocol error: the handler is lost, the POST answered.
    s.say(Kind.BODYREQ, req.rid, ((b"o", b"2000000"), (b"n", b"1")))
    assert s.router.handlers == {}
    assert client.output().startswith(b"HTTP/1.1 502 ")


def test_no_handler_503_with_retry_after_after_the_grace() -> None:
    s = Setup()
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.reactor.advance(1.9)
    assert client.output() == b""
    s.reactor.advance(0.1)
    out = client.output()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 2\r\n" in out


def test_window_is_granted_as_the_client_drains_and_not_while_paused() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (req,) = s.conn.take()
    s.say(Kind.START, req.rid)
    s.say(Kind.HEAD, req.rid, ((b"st", b"200"),), (b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 300,))
    (win,) = s.conn.take()  # a quarter window taken: granted back
    assert (win.kind, win.get_int(b"n")) == (Kind.WIN, 319)
    producer = client.transport.producer
    producer.pauseProducing()  # the client stopped reading
    s.say(Kind.DATA, req.rid, (), (b"b" * 600,))
    assert s.conn.take() == []
    producer.resumeProducing()
    (win,) = s.conn.take()
    assert win.get_int(b"n") == 600


class PartialSocket:
    """The client's socket as ``send_direct`` sees it: takes ``room`` bytes, then is full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        data = b"".join(pieces)[: self.room]
        self.room -= len(data)
        self.sent.append(data)
        return len(data)


def test_response_bytes_go_straight_to_the_socket_and_only_the_rest_is_queued() -> None:
    s = Setup(window=1 << 20)
    s.hello()
    client = s.client()
    head = HEAD.replace(b"5", b"102400")
    sock = PartialSocket(room=len(head) + 3)
    client.channel.send_direct = sock.send_direct  # type: ignore[method-assign]
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (req,) = s.conn.take()
    body = bytes(range(256)) * 400  # received as a view of ZeroMQ's buffer, as a large frame is
    s.say(Kind.HEAD, req.rid, ((b"st", b"200"),), (head,))
    s.conn.on_message([b"h1", *encode(Message(Kind.DATA, s.seq, req.rid)), memoryview(body)])
    s.seq += 1
    s.say(Kind.END, req.rid, ((b"st", b"200"), (b"ka", b"1")))
    # The socket took the head and 3 bytes of the body at once; the rest waited in the transport.
    assert b"".join(sock.sent) == (head + body)[: len(head) + 3]
    assert b"".join(sock.sent) + client.output() == head + body
    assert s.state.metrics.requests == 1


def test_client_gone_cancels_at_the_handler() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (req,) = s.conn.take()
    client.lose()
    (cancel,) = s.conn.take()
    assert (cancel.kind, cancel.rid) == (Kind.CANCEL, req.rid)
    s.say(Kind.END, req.rid, ((b"r", b"cancelled"),))
    assert s.router.handlers[b"h1"].credit == 1


def test_unreachable_handler_is_lost_and_its_request_answered() -> None:
    s = Setup()
    s.hello()
    s.conn.result = SendResult.UNREACHABLE
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.router.handlers == {}
    s.reactor.advance(2.0)  # no handler left: 503 after the grace
    assert client.output().startswith(b"HTTP/1.1 503 ")


def test_handler_lost_mid_response_cuts_the_client() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (req,) = s.conn.take()
    s.say(Kind.START, req.rid)
    s.say(
        Kind.HEAD, req.rid, ((b"st", b"200"),), (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",)
    )
    s.seq += 1  # a lost message: sequence gap
    s.say(Kind.HB)
    assert client.transport.disconnecting  # aborted, not a clean end
    assert client.output().endswith(b"ab")


def test_timer_follows_the_router_deadline() -> None:
    s = Setup(heartbeat=1.0, liveness=5.0)
    s.hello()
    (call,) = s.reactor.getDelayedCalls()
    assert call.getTime() == 1.0  # the next heartbeat
    s.reactor.advance(1.0)
    assert [m.kind for m in s.conn.take()] == [Kind.HB]


def test_a_batched_send_failing_at_the_end_of_the_turn_loses_the_handler() -> None:
    s = Setup()
    s.hello()
    client = s.client()
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.conn.kinds() == [Kind.REQ]
    # The connection (batching) reports the failure of its end-of-turn send for h1.
    s.front._send_failed(b"h1", SendResult.UNREACHABLE)
    assert s.router.handlers == {} and s.front.send_failures == 1
    s.reactor.advance(2.0)  # the request waits for another handler, then gets the no-handler 503
    assert client.output().startswith(b"HTTP/1.1 503 ")
