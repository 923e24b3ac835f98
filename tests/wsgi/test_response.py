"""The response driven through a recording sink: no connection, no transport, a Clock."""

from __future__ import annotations

import gc
import socket
import weakref
from typing import Any, cast

import pytest
from twisted.internet.task import Clock

from catalyzer.http.reader import RequestReader
from catalyzer.wsgi.response import ThreadedWSGIResponse, WSGIResponse, response_class
from catalyzer.wsgi.sink import ResponseOutcome, ResponseServices


class RecordingSink:
    """A :class:`~catalyzer.wsgi.sink.ResponseSink` that keeps what it is given."""

    def __init__(self, keep_alive_allowed: bool = True) -> None:
        self.keep_alive_allowed = keep_alive_allowed
        self.data = b""
        self.producer: Any = None
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def write_sequence(self, data: list[bytes]) -> None:
        self.data += b"".join(data)

    def register_producer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def start_writing(self) -> None:
        pass

    def abort_connection(self) -> None:
        self.aborted = True

    def sendfile_socket(self) -> socket.socket | None:
        return None

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        return None

    def resume_when_writable(self) -> None:
        raise AssertionError("nothing was sent directly")


def one_request(raw: bytes = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n") -> Any:
    reader = RequestReader()
    reader.receive_data(raw)
    return reader.next_event()


def services(app: Any, clock: Clock) -> ResponseServices:
    return ResponseServices(
        app=app,
        clock=clock,
        write_timeout=10.0,
        date=lambda: "Thu, 01 Jan 1970 00:00:00 GMT",
        date_line=lambda: b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
    )


def run(app: Any, sink: RecordingSink, clock: Clock | None = None) -> list[ResponseOutcome]:
    clock = clock or Clock()
    outcomes: list[ResponseOutcome] = []
    environ = {"RAW_URI": "/p", "PATH_INFO": "/p"}
    WSGIResponse(services(app, clock), sink, one_request(), environ, outcomes.append).run()
    return outcomes


def hello(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "5")])
    return [b"hello"]


def test_done_once_with_status_bytes_and_keep_alive() -> None:
    sink = RecordingSink()
    outcomes = run(hello, sink)
    assert outcomes == [ResponseOutcome(200, 5, True, 0.0)]
    assert sink.data.startswith(b"HTTP/1.1 200 OK\r\n") and sink.data.endswith(b"\r\n\r\nhello")


def test_the_sink_decides_keep_alive_when_the_head_is_built() -> None:
    sink = RecordingSink(keep_alive_allowed=False)
    outcomes = run(hello, sink)
    assert outcomes[0].keep_alive is False
    assert b"Connection: close\r\n" in sink.data


def test_stalled_client_abandons_the_response_and_aborts() -> None:
    clock = Clock()
    sink = RecordingSink()

    def endless(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        while True:
            yield b"x" * 100

    outcomes: list[ResponseOutcome] = []
    response = WSGIResponse(
        services(endless, clock), sink, one_request(), {"RAW_URI": "/"}, outcomes.append
    )
    response.run()
    assert sink.producer is response
    response.pauseProducing()
    clock.advance(9.9)
    assert outcomes == []
    clock.advance(0.1)
    assert len(outcomes) == 1 and outcomes[0].keep_alive is False and sink.aborted


def test_threaded_kind_only_with_a_pool() -> None:
    clock = Clock()
    assert response_class(services(hello, clock)) is WSGIResponse

    class Pool:
        def callInThread(self, f: Any, *args: Any) -> None:
            f(*args)

    threaded = ResponseServices(
        app=hello,
        clock=clock,
        write_timeout=1.0,
        date=lambda: "",
        date_line=lambda: b"",
        threadpool=Pool(),
        call_from_thread=lambda f, *a: f(*a),
    )
    assert response_class(threaded) is ThreadedWSGIResponse
    sink = RecordingSink()
    outcomes: list[ResponseOutcome] = []
    ThreadedWSGIResponse(threaded, sink, one_request(), {"RAW_URI": "/"}, outcomes.append).run()
    assert [o.status for o in outcomes] == [200] and sink.data.endswith(b"hello")


# -- counted before the bytes that complete the response are written (issue 14: a worker killed
# between its last write and its count must not lose an answered request)


class OrderedCounter:
    """Counts responses into the same event list the sink writes to, to see the order."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.observed: list[tuple[int, int]] = []

    def observe(self, status: int, duration: float, bytes_out: int, app: bool = False) -> None:
        self.observed.append((status, bytes_out))
        self.events.append("count")


class OrderedSink(RecordingSink):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def write(self, data: bytes) -> None:
        super().write(data)
        self.events.append("write")

    def write_sequence(self, data: list[bytes]) -> None:
        super().write_sequence(data)
        self.events.append("write")


def counted_run(app: Any) -> tuple[list[str], OrderedCounter, list[ResponseOutcome], bytes]:
    events: list[str] = []
    counter = OrderedCounter(events)
    sink = OrderedSink(events)
    clock = Clock()
    outcomes: list[ResponseOutcome] = []
    svc = services(app, clock)
    svc = ResponseServices(**{**{f: getattr(svc, f) for f in svc.__slots__}, "metrics": counter})
    response = WSGIResponse(svc, sink, one_request(), {"RAW_URI": "/p"}, outcomes.append)
    response.run()
    clock.advance(1)  # a streamed body goes out a few items per reactor turn
    return events, counter, outcomes, sink.data


def streamed_with_length(environ: Any, start_response: Any) -> Any:
    start_response("200 OK", [("Content-Length", "6")])
    yield b"abc"
    yield b"def"


def chunked(environ: Any, start_response: Any) -> Any:
    start_response("200 OK", [])
    yield b"abc"
    yield b"def"


def failing(environ: Any, start_response: Any) -> Any:
    raise RuntimeError("boom")


def test_a_response_is_counted_once_before_its_last_write() -> None:
    for app, status, body, ending in (
        (hello, 200, 5, b"hello"),
        (streamed_with_length, 200, 6, b"abcdef"),
        (chunked, 200, 6, b"def\r\n0\r\n\r\n"),
        (failing, 500, len(b"Internal Server Error\n"), b"Internal Server Error\n"),
    ):
        events, counter, outcomes, data = counted_run(app)
        assert counter.observed == [(status, body)], app
        assert events.count("count") == 1 and events[-1] == "write", (app, events)
        assert outcomes[0].counted is True
        assert data.endswith(ending), (app, data)


def test_without_a_counter_the_outcome_says_not_counted() -> None:
    outcomes = run(hello, RecordingSink())
    assert outcomes[0].counted is False


@pytest.mark.parametrize("body", [[b"hello"], iter([b"hel", b"lo"])], ids=["list", "iterator"])
def test_a_finished_response_is_freed_without_the_garbage_collector(body: Any) -> None:
    """No reference cycle outlives a response: one would leave it, its request and its environ to
    the collector, a dozen objects per request (issue 11)."""
    clock = Clock()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return body

    outcomes: list[ResponseOutcome] = []
    gc.disable()
    try:
        response = WSGIResponse(
            services(app, clock), RecordingSink(), one_request(), {"RAW_URI": "/"}, outcomes.append
        )
        response.run()
        assert response.done
        freed = weakref.ref(response)
        del response
        assert freed() is None
    finally:
        gc.enable()
    assert [o.status for o in outcomes] == [200]


# -- a large list body sent from the application's objects (sendmsg on a plain socket)


class SocketSink(RecordingSink):
    """A sink over a fake plain socket: each ``send_direct`` takes at most ``room`` bytes, or
    says something is queued ahead (``queued``), or fails with ``error``."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.queued = False
        self.error: OSError | None = None
        # Per call, per piece: the object it is a view of, its first bytes and its size.
        self.calls: list[list[tuple[object, bytes, int]]] = []
        self.writing = 0
        self.unregistered = 0

    def sendfile_socket(self) -> socket.socket | None:
        return cast(socket.socket, self)  # only "not None" counts: a plain socket is there

    def register_producer(self, producer: Any, streaming: bool) -> None:
        super().register_producer(producer, streaming)
        if not streaming:  # as a Twisted transport does
            producer.resumeProducing()

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        if self.queued:
            return None
        if self.error is not None:
            raise self.error
        self.calls.append([(p.obj, bytes(p[:200]), p.nbytes) for p in pieces])
        taken = b"".join(bytes(p) for p in pieces)[: self.room]
        self.data += taken
        return len(taken)

    def start_writing(self) -> None:
        self.writing += 1

    def resume_when_writable(self) -> None:
        self.writing += 1

    def unregister_producer(self) -> None:
        self.unregistered += 1
        super().unregister_producer()


BIG = b"b" * 300_000


def big_app(body: list[bytes]) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return body

    return app


def test_large_body_goes_with_its_head_in_one_sendmsg_without_a_copy() -> None:
    sink = SocketSink(room=10**9)
    outcomes = run(big_app([BIG]), sink)
    assert len(sink.calls) == 1
    head, body = sink.calls[0]
    assert head[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 300000\r\n" in head[1]
    assert body[0] is BIG and body[2] == len(BIG)  # the app's object itself, not a copy
    assert outcomes == [ResponseOutcome(200, 300_000, True, 0.0)]
    assert sink.producer is None and sink.unregistered == 1


def test_partial_sends_queue_only_the_tail_and_wait_for_the_socket() -> None:
    clock = Clock()
    sink = SocketSink(room=100_000)
    pieces = [b"1" * 70_000, b"2" * 70_000, b"3" * 70_000]
    outcomes = run(big_app(pieces), sink, clock)
    assert outcomes == []
    assert sink.writing == 1  # asked to be resumed when the socket can take more
    producer = sink.producer
    assert producer is not None
    for _ in range(10):
        if outcomes:
            break
        producer.resumeProducing()
    assert len(outcomes) == 1 and outcomes[0].bytes_sent == 210_000
    head_end = sink.data.index(b"\r\n\r\n") + 4
    assert sink.data[head_end:] == b"".join(pieces)
    # Every call after the first starts where the socket stopped, still on the app's objects.
    assert all(call[-1][0] is pieces[-1] for call in sink.calls)
    assert clock.getDelayedCalls() == []  # the stall timer was disarmed


def test_queued_output_is_waited_for_before_sending() -> None:
    sink = SocketSink(room=10**9)
    sink.queued = True
    outcomes = run(big_app([BIG]), sink)
    assert outcomes == [] and sink.data == b"" and sink.writing == 1
    sink.queued = False
    sink.producer.resumeProducing()
    assert len(outcomes) == 1 and sink.data.endswith(BIG)


def test_a_client_that_stops_reading_is_abandoned_after_write_timeout() -> None:
    clock = Clock()
    sink = SocketSink(room=1000)
    outcomes = run(big_app([BIG]), sink, clock)
    clock.advance(9.9)
    assert outcomes == []
    clock.advance(0.1)
    assert len(outcomes) == 1 and outcomes[0].keep_alive is False and sink.aborted


def test_a_send_error_aborts_the_connection() -> None:
    sink = SocketSink(room=1000)
    outcomes = run(big_app([BIG]), sink)
    sink.error = BrokenPipeError(32, "Broken pipe")
    sink.producer.resumeProducing()
    assert len(outcomes) == 1 and outcomes[0].keep_alive is False and sink.aborted


def test_the_client_going_away_abandons_the_response() -> None:
    sink = SocketSink(room=1000)
    outcomes = run(big_app([BIG]), sink)
    sink.producer.stopProducing()
    assert len(outcomes) == 1 and outcomes[0].keep_alive is False
    sink.producer.resumeProducing()  # a late resume sends nothing more
    assert len(sink.calls) == 1


def test_small_list_body_is_joined_and_written_at_once() -> None:
    sink = SocketSink(room=10**9)
    run(big_app([b"a" * 100, b"b" * 100]), sink)
    assert sink.calls == []
    assert sink.data.endswith(b"a" * 100 + b"b" * 100)


def test_large_body_without_a_plain_socket_goes_to_the_transport_in_pieces() -> None:
    sink = RecordingSink()
    pieces: list[list[bytes]] = []
    sink.write_sequence = pieces.append  # type: ignore[method-assign]
    outcomes = run(big_app([BIG, BIG]), sink)
    assert len(outcomes) == 1
    assert [p for p in pieces[0] if p][1:] == [BIG, BIG]
    assert pieces[0][1] is BIG


# -- large pieces of an iterable, sent from the app's objects


def generator_app(pieces: list[bytes], headers: list[tuple[str, str]] | None = None) -> Any:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", headers or [])
        yield from pieces

    return app


def dechunk(data: bytes) -> bytes:
    body = data[data.index(b"\r\n\r\n") + 4 :]
    out = b""
    for _ in range(1000):
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return out
        out += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    raise AssertionError("no last chunk")


def start(app: Any, sink: RecordingSink, clock: Clock) -> tuple[WSGIResponse, list[Any]]:
    outcomes: list[ResponseOutcome] = []
    response = WSGIResponse(
        services(app, clock), sink, one_request(), {"RAW_URI": "/"}, outcomes.append
    )
    response.run()
    return response, outcomes


def test_large_pieces_of_a_generator_go_out_without_copies() -> None:
    pieces = [b"a" * 200_000, b"b" * 10, b"c" * 300_000]
    sink = SocketSink(room=10**9)
    _, outcomes = start(generator_app(pieces), sink, Clock())
    assert len(outcomes) == 1 and outcomes[0].keep_alive
    assert dechunk(sink.data) == b"".join(pieces)
    # The head, then each large piece between its chunk-size line and CRLF, as the app's object.
    assert [p[0] for p in sink.calls[0]][2] is pieces[0]
    assert [p[0] for p in sink.calls[1]][1] is pieces[2]
    assert len(sink.calls) == 2  # the small piece went the usual way


def test_unsent_tail_pauses_the_generator_until_the_socket_takes_it() -> None:
    clock = Clock()
    pieces = [bytes([65 + i]) * 150_000 for i in range(4)]
    advanced: list[int] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        for i, piece in enumerate(pieces):
            advanced.append(i)
            yield piece

    sink = SocketSink(room=100_000)
    response, outcomes = start(app, sink, clock)
    assert advanced == [0] and sink.writing == 1  # paused on the first piece's tail
    assert clock.getDelayedCalls()  # the stall timer runs while paused
    for _ in range(50):
        if outcomes:
            break
        response.resumeProducing()  # what the transport does once the socket is writable
    assert len(outcomes) == 1 and outcomes[0].keep_alive
    assert dechunk(sink.data) == b"".join(pieces)
    assert clock.getDelayedCalls() == []


def test_a_body_cut_at_its_length_ends_after_its_tail() -> None:
    sink = SocketSink(room=100_000)
    response, outcomes = start(
        generator_app([b"z" * 300_000], [("Content-Length", "250000")]), sink, Clock()
    )
    for _ in range(50):
        if outcomes:
            break
        response.resumeProducing()
    assert len(outcomes) == 1 and not outcomes[0].keep_alive
    assert sink.data.endswith(b"\r\n\r\n" + b"z" * 250_000)


def test_a_send_error_on_a_tail_aborts() -> None:
    sink = SocketSink(room=1000)
    response, outcomes = start(generator_app([b"q" * 300_000]), sink, Clock())
    sink.error = ConnectionResetError(104, "Connection reset by peer")
    response.resumeProducing()
    assert len(outcomes) == 1 and not outcomes[0].keep_alive and sink.aborted
