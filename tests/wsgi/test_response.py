"""The response driven through a recording sink: no connection, no transport, a Clock."""

from __future__ import annotations

import gc
import socket
import weakref
from typing import Any

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
