"""The response driven through a recording sink: no connection, no transport, a Clock."""

from __future__ import annotations

import socket
from typing import Any

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
