"""The HTTP engine driven in memory: timers on a Clock, back-pressure, ordering, app failures."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from catalyzer.server.channel import ServerState
from catalyzer.server.shedding import MIN_AGE, MIN_IDLE, REBUILD, RECHECK
from catalyzer.testing import InMemoryServer
from tests.helpers import GET, CountingIterable, Recorder, dechunk, hello, split_response, statuses


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Formatted log events (with tracebacks) emitted during the test."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        lines.append(text)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- timeouts, each just before and at expiry


def test_header_timeout_408_counts_from_first_byte() -> None:
    server = InMemoryServer(hello, header_timeout=10)
    conn = server.connect()
    server.clock.advance(3)
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    server.clock.advance(6.99)  # 9.99 s since the connection opened
    assert conn.output() == b""
    server.clock.advance(0.01)
    assert statuses(conn.output()) == [408]
    assert conn.closed


def test_header_timeout_for_later_request_counts_from_its_first_byte() -> None:
    server = InMemoryServer(hello, header_timeout=10, keepalive_timeout=60)
    conn = server.connect()
    conn.send(GET)
    server.clock.advance(30)
    conn.new_output()
    conn.send(b"GET / HTTP/1.1\r\n")
    server.clock.advance(9.9)
    assert conn.new_output() == b""
    server.clock.advance(0.1)
    assert statuses(conn.new_output()) == [408]


def test_silent_connection_closed_after_header_timeout() -> None:
    server = InMemoryServer(hello, header_timeout=5)
    conn = server.connect()
    server.clock.advance(4.9)
    assert not conn.closed
    server.clock.advance(0.1)
    assert conn.closed
    assert conn.output() == b""


def test_slow_body_408() -> None:
    server = InMemoryServer(hello, body_timeout=10, body_min_rate=100)
    conn = server.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    conn.send(b"x" * 1000)  # exactly 100 B/s over the first window: enough
    server.clock.advance(10)
    assert conn.output() == b""
    conn.send(b"x" * 999)  # one byte short in the second window
    server.clock.advance(9.99)
    assert conn.output() == b""
    server.clock.advance(0.01)
    assert statuses(conn.output()) == [408]
    assert conn.closed


def _closes_in(server: InMemoryServer, conn: Any, seconds: float) -> None:
    """The connection is open until ``seconds`` from now and closed at that moment."""
    server.clock.advance(seconds - 0.01)
    assert not conn.closed
    server.clock.advance(0.01)
    assert conn.closed


def _one_request(**settings: Any) -> tuple[InMemoryServer, Any]:
    server = InMemoryServer(hello, **settings)
    conn = server.connect()
    conn.send(GET)
    return server, conn


def test_idle_keepalive_closed() -> None:
    server, conn = _one_request(keepalive_timeout=5)
    assert statuses(conn.output()) == [200]
    _closes_in(server, conn, 5)


def test_idle_keepalive_counts_from_the_last_response() -> None:
    server, conn = _one_request(keepalive_timeout=5)
    server.clock.advance(3)
    conn.send(GET)
    assert statuses(conn.output()) == [200, 200]
    server.clock.advance(2)  # the first response's wait ends: three seconds of it are left
    _closes_in(server, conn, 3)


def test_idle_keepalive_waits_for_a_request_under_way() -> None:
    server, conn = _one_request(keepalive_timeout=5)
    server.clock.advance(4)
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the head is not complete at the deadline
    server.clock.advance(1)
    assert not conn.closed
    conn.send(b"\r\n")
    assert statuses(conn.output()) == [200, 200]
    _closes_in(server, conn, 5)


def test_stalled_write_aborts_and_closes_iterable() -> None:
    body = CountingIterable(chunks=1000)
    server = InMemoryServer(lambda e, s: (s("200 OK", []), body)[1], write_timeout=30)
    conn = server.connect()
    conn.send(GET)
    producer = conn.transport.producer
    assert producer is not None
    producer.pauseProducing()  # what the transport does when its buffer fills
    consumed = body.produced
    server.clock.advance(29.9)
    assert body.produced == consumed and not conn.closed
    server.clock.advance(0.1)
    assert conn.closed
    assert body.closed == 1


# -- back-pressure and streaming


def test_iterable_not_advanced_while_paused() -> None:
    body = CountingIterable(chunks=2000, size=4096)
    server = InMemoryServer(lambda e, s: (s("200 OK", []), body)[1])
    conn = server.connect()
    conn.send(GET)
    # Nothing pushes back in memory, so one reactor turn takes a bounded number of items.
    first_turn = body.produced
    assert 0 < first_turn < 2000
    conn.transport.producer.pauseProducing()
    server.clock.advance(0)
    assert body.produced == first_turn
    conn.transport.producer.resumeProducing()
    while body.closed == 0:
        server.clock.advance(0)
    assert body.closed == 1
    assert len(dechunk(split_response(conn.output())[2])) == 2000 * 4096


def test_generator_response_chunked_on_11_and_close_delimited_on_10() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"ab"
        yield b""
        yield b"cd"

    server = InMemoryServer(app)
    _, headers, body = split_response(server.request(GET))
    assert headers["transfer-encoding"] == "chunked"
    assert dechunk(body) == b"abcd"

    conn = server.connect()
    conn.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    _, headers, body = split_response(conn.output())
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    assert body == b"abcd" and conn.closed


def test_list_body_without_length_gets_content_length() -> None:
    server = InMemoryServer(lambda e, s: (s("200 OK", []), [b"ab", b"c"])[1])
    _, headers, body = split_response(server.request(GET))
    assert headers["content-length"] == "3" and body == b"abc"


def test_head_and_204_304_have_no_body() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        status = {"/204": "204 No Content", "/304": "304 Not Modified"}.get(
            environ["PATH_INFO"], "200 OK"
        )
        start_response(status, [("Content-Length", "5")] if status[0] == "2" else [])
        return [b"hello"]

    server = InMemoryServer(app)
    conn = server.connect()
    conn.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.send(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.send(b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.send(GET)
    out = conn.output()
    assert statuses(out) == [200, 204, 304, 200]
    assert out.count(b"hello") == 1  # only the GET has a body
    assert b"Content-Length: 5\r\n" in out.split(b"HTTP/1.1 204")[0]  # HEAD keeps the length
    assert not conn.closed


def test_legacy_write_callable() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Length", "6")])
        write(b"abc")
        return [b"def"]

    status, _, body = split_response(InMemoryServer(app).request(GET))
    assert (status, body) == (200, b"abcdef")


# -- Content-Length honesty


def test_body_longer_than_content_length_is_cut_and_connection_closed(logged: list[str]) -> None:
    body = CountingIterable(chunks=5, size=10)
    server = InMemoryServer(lambda e, s: (s("200 OK", [("Content-Length", "15")]), body)[1])
    conn = server.connect()
    conn.send(GET + GET)
    out = conn.output()
    assert statuses(out) == [200]  # the second request is not answered on this connection
    assert split_response(out)[2] == b"x" * 15
    assert conn.closed and body.closed == 1
    assert any("longer than its Content-Length" in line for line in logged)


def test_body_shorter_than_content_length_closes(logged: list[str]) -> None:
    server = InMemoryServer(
        lambda e, s: (s("200 OK", [("Content-Length", "10")]), iter([b"abc"]))[1]
    )
    conn = server.connect()
    conn.send(GET + GET)
    assert statuses(conn.output()) == [200]
    assert conn.closed
    assert any("shorter" in line for line in logged)


# -- application failures


def test_exception_before_start_gives_500_and_serving_continues(logged: list[str]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("secret detail")
        return hello(environ, start_response)

    conn = InMemoryServer(app).connect()
    conn.send(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    out = conn.output()
    assert statuses(out) == [500, 200]
    assert b"secret detail" not in out and b"Traceback" not in out
    assert any("secret detail" in line and "Traceback" in line for line in logged)


def test_exception_after_start_aborts_connection(logged: list[str]) -> None:
    body = CountingIterable(chunks=10, fail_at=3)
    conn = InMemoryServer(lambda e, s: (s("200 OK", []), body)[1]).connect()
    conn.send(GET)
    assert conn.transport.disconnecting  # aborted: the client sees a truncated chunked body
    assert statuses(conn.output()) == [200]
    assert body.closed == 1
    assert any("iteration failed on purpose" in line for line in logged)


def test_close_raising_is_logged_and_serving_continues(logged: list[str]) -> None:
    server = InMemoryServer(
        lambda e, s: (s("200 OK", []), CountingIterable(chunks=1, fail_close=True))[1]
    )
    conn = server.connect()
    conn.send(GET + GET)
    assert statuses(conn.output()) == [200, 200]
    assert any("close() raised" in line for line in logged)


def test_close_called_when_client_disconnects_mid_response() -> None:
    body = CountingIterable(chunks=1000)
    conn = InMemoryServer(lambda e, s: (s("200 OK", []), body)[1]).connect()
    conn.send(GET)
    conn.transport.producer.pauseProducing()
    conn.lose()
    assert body.closed == 1


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200 OK\r\nX-Injected: 1", []),
        ("200", []),
        ("2000 OK", []),
        (b"200 OK", []),
        ("200 OK", [("X-Bad", "a\r\nX-Injected: 1")]),
        ("200 OK", [("X-Bad", "nul\x00")]),
        ("200 OK", [("Bad Name", "v")]),
        ("200 OK", [("Transfer-Encoding", "chunked")]),
        ("200 OK", [("Upgrade", "h2c")]),
        ("200 OK", [("Connection", "upgrade")]),
        ("200 OK", [("Content-Length", "-1")]),
        ("200 OK", [("X-Unicode", "\u2603")]),
        ("200 OK", (("X-Tuple", "headers must be a list"),)),
    ],
)
def test_start_response_rejects_unsafe_input(status: Any, headers: Any, logged: list[str]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, headers)
        return [b"body"]

    out = InMemoryServer(app).request(GET)
    assert statuses(out) == [500]
    assert b"X-Injected" not in out
    assert any("application raised" in line for line in logged)


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return [b""]

    assert statuses(InMemoryServer(app).request(GET)) == [500]


def test_exc_info_before_headers_sent_replaces_the_response() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        try:
            raise KeyError("x")
        except KeyError:
            import sys

            start_response("503 Service Unavailable", [("Content-Length", "4")], sys.exc_info())
        return [b"oops"]

    status, _, body = split_response(InMemoryServer(app).request(GET))
    assert (status, body) == (503, b"oops")


def test_exc_info_after_headers_sent_reraises_and_aborts() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise KeyError("late")
        except KeyError:
            import sys

            start_response("500 Oops", [], sys.exc_info())
        yield b"never"

    conn = InMemoryServer(app).connect()
    conn.send(GET)
    assert b"never" not in conn.output()
    assert conn.transport.disconnecting


def test_validator_wrapped_apps() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"len=%d" % len(data)

    server = InMemoryServer(validator(app))
    conn = server.connect()
    conn.send(b"POST /a%20b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    conn.send(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    )
    conn.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    out = conn.output()
    assert statuses(out) == [200, 200, 200]
    assert b"len=3" in out and b"len=2" in out


# -- ordering, pipelining, 100-continue, connection management


def test_pipelined_responses_in_order_with_bounded_read_ahead() -> None:
    gate = CountingIterable(chunks=100)
    app = Recorder()

    def slow_first(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/slow":
            start_response("200 OK", [])
            return gate
        return app(environ, start_response)

    server = InMemoryServer(slow_first, max_pipeline=2)
    conn = server.connect()
    conn.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.transport.producer.pauseProducing()
    conn.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)))
    assert conn.transport.producerState == "paused"  # reading stopped: read-ahead bounded
    assert app.calls == []
    conn.transport.producer.resumeProducing()
    while gate.closed == 0:
        server.clock.advance(0)
    assert [c["PATH_INFO"] for c in app.calls] == ["/0", "/1", "/2"]
    assert conn.transport.producerState == "producing"
    out = conn.output()
    assert statuses(out) == [200, 200, 200, 200]
    assert out.index(b"\r\n\r\n/0") < out.index(b"\r\n\r\n/1") < out.index(b"\r\n\r\n/2")


def test_100_continue_sent_only_when_body_accepted() -> None:
    app = Recorder()
    server = InMemoryServer(app, max_body=10)
    conn = server.connect()
    conn.send(b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert conn.new_output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"abc")
    assert statuses(conn.new_output()) == [200]
    conn.send(b"POST /b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    out = conn.new_output()
    assert statuses(out) == [413] and b"100 Continue" not in out
    assert [c["body"] for c in app.calls] == [b"abc"]


def test_100_continue_waits_for_earlier_response() -> None:
    gate = CountingIterable(chunks=200)
    server = InMemoryServer(
        lambda e, s: (s("200 OK", []), gate if e["PATH_INFO"] == "/slow" else [b"ok"])[1]
    )
    conn = server.connect()
    conn.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.transport.producer.pauseProducing()
    conn.send(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert b"100 Continue" not in conn.output()
    conn.transport.producer.resumeProducing()
    while gate.closed == 0:
        server.clock.advance(0)
    assert conn.output().endswith(b"HTTP/1.1 100 Continue\r\n\r\n")


def test_unknown_expectation_417() -> None:
    out = InMemoryServer(hello).request(
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx"
    )
    assert statuses(out) == [417]


def test_options_asterisk_answered_by_server() -> None:
    app = Recorder()
    out = InMemoryServer(app).request(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = split_response(out)
    assert status == 200 and "GET" in headers["allow"]
    assert app.calls == []


def test_connection_close_request_closes_after_response() -> None:
    conn = InMemoryServer(hello).connect()
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET)
    out = conn.output()
    assert statuses(out) == [200]
    assert b"Connection: close" in out and conn.closed


def test_app_connection_close_header_honoured() -> None:
    app = lambda e, s: (s("200 OK", [("Connection", "close")]), [b"x"])[1]  # noqa: E731
    conn = InMemoryServer(app).connect()
    conn.send(GET + GET)
    assert statuses(conn.output()) == [200] and conn.closed


def test_keepalive_disabled_with_zero_timeout() -> None:
    conn = InMemoryServer(hello, keepalive_timeout=0).connect()
    conn.send(GET)
    assert b"Connection: close" in conn.output() and conn.closed


def test_half_close_still_answered() -> None:
    conn = InMemoryServer(hello).connect()
    conn.send(GET)
    conn.new_output()
    conn.send(GET)
    conn.channel.readConnectionLost()
    assert statuses(conn.output()) == [200, 200]
    assert conn.closed


class FakePort:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_max_connections_pauses_accepting() -> None:
    server = InMemoryServer(hello, max_connections=2)
    port = FakePort()
    server.state.listening_on([port])
    a = server.connect()
    assert port.reading
    b = server.connect()
    assert not port.reading
    a.lose()
    assert port.reading
    b.lose()
    assert port.reading


def test_drain_closes_idle_now_and_busy_after_response() -> None:
    body = CountingIterable(chunks=500)
    apps = [hello]

    def app(environ: Any, start_response: Any) -> Any:
        return apps[-1](environ, start_response)  # the app of the moment

    server = InMemoryServer(app)
    idle = server.connect()
    idle.send(GET)
    apps.append(lambda e, s: (s("200 OK", []), body)[1])
    busy = server.connect()
    busy.send(GET)
    busy.transport.producer.pauseProducing()
    server.clock.advance(1)  # the idle connection has been idle for a while
    done = server.state.drain()
    fired: list[object] = []
    done.addCallback(fired.append)
    assert idle.closed and not busy.closed
    idle.finish_close()
    busy.transport.producer.resumeProducing()
    while body.closed == 0:
        server.clock.advance(0)
    # Its head went out before the drain and promised keep-alive: the client may be sending its
    # next request already, so the connection gets an idle one's grace rather than a close.
    assert not busy.closed
    server.clock.advance(1)
    assert busy.closed
    busy.finish_close()
    assert fired == [None]


def test_request_body_spooled_to_file_and_readable() -> None:
    app = Recorder()
    server = InMemoryServer(app, body_spool_threshold=1024)
    payload = bytes(range(256)) * 64  # 16 KiB
    server.request(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    )
    assert app.calls[0]["body"] == payload
    assert app.calls[0]["wsgi.input_terminated"] is True


def test_file_wrapper_without_socket_iterates(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 1000)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 4096)

    body = split_response(InMemoryServer(app).request(GET))[2]
    assert dechunk(body) == path.read_bytes()


class InlinePool:
    """A thread pool stand-in that runs work at once, for deterministic tests of threaded mode."""

    def callInThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_threaded_mode_serves_and_reports_errors(logged: list[str]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("threaded failure")
        write = start_response("200 OK", [])
        write(b"w")
        yield b"a"
        yield b"b"

    server = InMemoryServer(app, threads=2)
    server.state = ServerState(
        app,
        server.config,
        server.clock,
        threadpool=InlinePool(),  # type: ignore[arg-type]
        call_from_thread=lambda f, *a: f(*a),
    )
    conn = server.connect()
    conn.send(GET + b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    out = conn.output()
    assert statuses(out) == [200, 500, 200]
    assert dechunk(split_response(out)[2]) == b"wab"
    assert any("threaded failure" in line for line in logged)


def test_drain_gives_just_idle_connection_a_grace_then_closes() -> None:
    server = InMemoryServer(hello)
    conn = server.connect()
    conn.send(GET)
    server.state.drain()
    assert not conn.closed  # its next request may already be on the way
    conn.send(GET)  # and it is answered, with Connection: close
    out = conn.new_output()
    assert statuses(out) == [200, 200] and out.endswith(b"Connection: close\r\n\r\nhello")
    assert conn.closed

    server = InMemoryServer(hello)
    quiet = server.connect()
    quiet.send(GET)
    server.state.drain()
    server.clock.advance(0.5)
    assert not quiet.closed
    server.clock.advance(0.5)  # idle for DRAIN_IDLE_GRACE
    assert quiet.closed


def test_drain_gives_a_new_connection_its_grace_to_send_its_first_request() -> None:
    """A connection accepted just before the drain has its request on the way (or unread in the
    socket): closing it at once would reset it under the client."""
    server = InMemoryServer(hello)
    fresh = server.connect()
    server.state.drain()
    assert not fresh.closed
    fresh.send(GET)
    out = fresh.new_output()
    assert statuses(out) == [200] and b"Connection: close\r\n" in out
    assert fresh.closed

    server = InMemoryServer(hello)
    silent = server.connect()
    server.state.drain()
    server.clock.advance(0.9)
    assert not silent.closed
    server.clock.advance(0.1)  # DRAIN_IDLE_GRACE after it was opened, and nothing came
    assert silent.closed


def test_drain_never_closes_a_connection_with_unread_bytes() -> None:
    server = InMemoryServer(hello)
    conn = server.connect()
    conn.send(GET)
    assert statuses(conn.new_output()) == [200]
    server.clock.advance(2)  # idle past the grace: closed at once, unless bytes wait unread
    channel = next(iter(server.state.channels))
    channel.unread_bytes = lambda: True  # type: ignore[method-assign]
    server.state.drain()
    assert not conn.closed
    server.clock.advance(1)
    assert not conn.closed
    conn.send(GET)  # the reactor reads them: their response is the last, and closes it
    assert statuses(conn.new_output()) == [200]
    assert conn.closed


class HeldPool:
    """A thread pool stand-in that runs work only when the test says so."""

    def __init__(self) -> None:
        self.work: list[tuple[Any, tuple[Any, ...]]] = []

    def callInThread(self, f: Any, *args: Any) -> None:
        self.work.append((f, args))

    def run_all(self) -> None:
        while self.work:
            f, args = self.work.pop(0)
            f(*args)


def test_drain_makes_a_response_whose_head_is_not_sent_the_last_one() -> None:
    """Issue 15: a stop announced while the app runs turns its response into ``Connection:
    close`` and closes the connection after it."""
    pool = HeldPool()
    server = InMemoryServer(hello)
    server.state = ServerState(
        hello,
        server.config,
        server.clock,
        threadpool=pool,  # type: ignore[arg-type]
        call_from_thread=lambda f, *a: f(*a),
    )
    conn = server.connect()
    conn.send(GET + GET)  # a pipelined request waits behind the first
    assert conn.output() == b""  # the app has not run yet
    server.state.stop_keep_alive()
    pool.run_all()
    out = conn.output()
    assert statuses(out) == [200]
    assert out.endswith(b"Connection: close\r\n\r\nhello")
    assert conn.closed


def test_head_sent_before_the_stop_keeps_its_framing() -> None:
    """A response whose head went out before the stop finishes as announced; the connection it
    promised to keep is then drained like an idle one (a grace for the next request, then a
    close), never cut under a request already on its way."""
    body = CountingIterable(chunks=500)
    server = InMemoryServer(lambda e, s: (s("200 OK", []), body)[1])
    conn = server.connect()
    conn.send(GET)
    conn.transport.producer.pauseProducing()
    # The head went with the first chunk; the stop comes after it.
    assert b"Transfer-Encoding: chunked" in conn.output()
    server.state.stop_keep_alive()
    conn.transport.producer.resumeProducing()
    while body.closed == 0:
        server.clock.advance(0)
    assert b"Connection: close" not in conn.output()
    assert not conn.closed
    conn.send(GET)  # the request the client sent meanwhile is answered, and is the last
    out = conn.output()
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.endswith(b"Connection: close\r\n\r\n")
    assert conn.closed


def test_http_service_stops_keep_alive_before_its_listeners_close() -> None:
    from twisted.internet.defer import Deferred

    from catalyzer.server.service import HTTPService

    server = InMemoryServer(hello)
    closing: Deferred[None] = Deferred()

    class SlowPort:
        def stopListening(self) -> Deferred[None]:
            return closing

    service = HTTPService(server.state, [], server.clock)
    service.ports = [SlowPort()]  # type: ignore[list-item]
    service.startService()
    stopped = service.stopService()
    assert server.state.draining  # while the listener is still closing
    conn = server.connect()  # accepted meanwhile: its answer is its last
    conn.send(GET)
    assert conn.output().endswith(b"Connection: close\r\n\r\nhello") and conn.closed
    closing.callback(None)
    conn.finish_close()
    assert stopped.called


# -- proxy headers: believed from trusted peers, removed from the others


SPOOF = (
    b"GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\nForwarded: for=198.51.100.1\r\n\r\n"
)


def test_trusted_peer_headers_believed() -> None:
    app = Recorder()
    server = InMemoryServer(app)  # the in-memory peer is 127.0.0.1: trusted by default
    server.request(SPOOF.replace(b"Forwarded: for=198.51.100.1\r\n", b""))
    call = app.calls[0]
    assert (call["REMOTE_ADDR"], call["wsgi.url_scheme"], call["HTTPS"]) == (
        "203.0.113.7",
        "https",
        "on",
    )


def test_untrusted_peer_headers_removed() -> None:
    app = Recorder()
    server = InMemoryServer(app, forwarded_allow_ips="10.0.0.1")
    server.request(SPOOF)
    call = app.calls[0]
    assert (call["REMOTE_ADDR"], call["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert not [k for k in call if "FORWARDED" in k]


def test_malformed_proxy_header_is_a_debug_note_not_an_error(logged: list[str]) -> None:
    app = Recorder()
    server = InMemoryServer(app)
    out = server.request(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: evil.example\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert app.calls[0]["REMOTE_ADDR"] == "127.0.0.1"
    assert any("ignoring X-Forwarded-For" in line for line in logged)


def test_a_flood_of_bad_requests_logs_one_line_and_a_count(logged: list[str]) -> None:
    server = InMemoryServer(hello)
    for _ in range(50):
        conn = server.connect()
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        assert statuses(conn.output()) == [400]
    bad = [line for line in logged if line.startswith("400 to ")]
    assert len(bad) == 1
    server.clock.advance(10.0)
    assert logged[-1] == "49 more bad requests in the last 10s (one line per kind every 10s)"


def test_at_max_connections_the_least_advanced_is_shed_to_make_room(logged: list[str]) -> None:
    server = InMemoryServer(hello, max_connections=3, keepalive_timeout=60)
    port = FakePort()
    server.state.listening_on([port])
    idle = server.connect()
    idle.send(GET)  # answered: now an idle keep-alive connection
    server.clock.advance(1)
    slow = server.connect()
    slow.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    server.clock.advance(1)
    busy = server.connect()
    busy.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")  # body arriving
    server.clock.advance(1)
    assert port.reading  # at the limit, with connections that could go
    newcomer = server.connect()
    assert slow.closed and slow.transport.disconnecting
    assert not idle.closed and not busy.closed and not newcomer.closed
    assert any("closing a connection with an incomplete request" in line for line in logged)
    newcomer.send(GET)
    assert statuses(newcomer.output()) == [200]
    slow.finish_close()
    server.clock.advance(1)
    second = server.connect()  # then the keep-alive connection idle longest
    assert idle.closed
    assert not busy.closed and not newcomer.closed and not second.closed


def test_at_max_connections_with_nothing_to_shed_accepting_pauses() -> None:
    server = InMemoryServer(hello, max_connections=2)
    port = FakePort()
    server.state.listening_on([port])
    a = server.connect()
    a.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1")
    server.clock.advance(1)
    b = server.connect()  # a is receiving a body, b is brand new: neither can go
    assert not port.reading
    assert not a.closed and not b.closed
    a.lose()
    assert port.reading


def test_paused_at_max_connections_accepts_again_once_a_young_one_may_be_shed() -> None:
    server = InMemoryServer(hello, max_connections=2)
    port = FakePort()
    server.state.listening_on([port])
    first = server.connect()
    server.clock.advance(0.05)
    second = server.connect()  # both new and silent: neither can be shed yet
    assert not port.reading
    server.clock.advance(MIN_AGE - 0.05 - 0.01)
    assert not port.reading
    server.clock.advance(0.02)
    assert port.reading  # the next connection will shed the older silent one
    third = server.connect()
    assert first.closed
    assert not second.closed and not third.closed


def test_the_shedding_order_kept_for_a_while_never_sheds_a_connection_that_moved_on() -> None:
    """The order is worked out at most once per RECHECK (it looks at every connection); a
    keep-alive connection that was idle longest when it was worked out, and has since been
    answered again, is no longer the one to go."""
    server = InMemoryServer(hello, max_connections=2, keepalive_timeout=60)
    port = FakePort()
    server.state.listening_on([port])
    regular = server.connect()
    regular.send(GET)
    silent = server.connect()
    assert not port.reading  # neither may go yet
    server.clock.advance(max(MIN_AGE, MIN_IDLE))
    assert port.reading  # the order now says: the idle one first, then the silent one
    regular.send(GET)  # answered again: idle only since now
    assert statuses(regular.output()) == [200, 200]
    newcomer = server.connect()
    assert silent.closed
    assert not regular.closed and not newcomer.closed


def test_paused_with_nothing_to_shed_looks_again_without_a_close() -> None:
    """A request that ends and leaves its keep-alive connection idle makes room: the server
    notices it on its own (every RECHECK) rather than waiting for a connection to close."""
    server = InMemoryServer(hello, max_connections=1, keepalive_timeout=60)
    port = FakePort()
    server.state.listening_on([port])
    conn = server.connect()
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n1")
    server.clock.advance(MIN_AGE)
    assert not port.reading  # its body is arriving: it cannot be shed
    conn.send(b"2")  # answered: idle keep-alive from now on
    server.clock.advance(MIN_IDLE - 0.05)
    assert not port.reading
    server.clock.advance(RECHECK)
    assert port.reading
    assert not conn.closed  # only the next connection in sheds it
    server.connect()
    assert conn.closed


@pytest.mark.parametrize("how", ["server closes", "client leaves"])
def test_a_closed_connection_is_freed_without_the_garbage_collector(how: str) -> None:
    """No reference cycle outlives a connection (timers, the parser's callbacks): with one, each
    Connection: close request left some 30 objects to the collector (issue 11)."""
    server = InMemoryServer(hello)
    gc.disable()
    try:
        conn = server.connect()
        if how == "server closes":
            conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert statuses(conn.output()) == [200]
            conn.finish_close()
        else:
            conn.send(GET)
            conn.lose()
        assert not server.state.channels
        freed = weakref.ref(conn.channel)
        del conn
        assert freed() is None
    finally:
        gc.enable()


def test_under_a_reopening_attack_the_order_is_worked_out_once_per_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each connection accepted at the limit sheds the oldest incomplete one as it comes of age;
    the order (a look at every connection) is worked out again only after REBUILD, not each
    time accepting paused for the next one to come of age."""
    server = InMemoryServer(hello, max_connections=20)
    port = FakePort()
    server.state.listening_on([port])
    room = server.state.room
    scans = 0
    scan = room._candidates_now

    def counted() -> list[Any]:
        nonlocal scans
        scans += 1
        return scan()

    monkeypatch.setattr(room, "_candidates_now", counted)
    attackers = []
    for _ in range(20):
        conn = server.connect()
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        attackers.append(conn)
        server.clock.advance(MIN_AGE / 20)
    scans = 0
    shed = 0
    for _ in range(20):  # one re-open each time one comes of age, over one REBUILD
        assert port.reading
        conn = server.connect()
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        shed += sum(1 for a in attackers if a.closed)
        attackers = [a for a in attackers if not a.closed] + [conn]
        server.clock.advance(REBUILD / 20)
    assert shed == 20
    assert scans <= 2


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Any, Any]]:
    """A connected loopback TCP pair: (the server's accepted socket, the client's)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    try:
        yield accepted, client
    finally:
        accepted.close()
        client.close()


def _real_transport(accepted: Any, responder: Any = None) -> tuple[Any, Any, Any]:
    """An HTTPChannel on a real transport whose reactor is a MemoryReactorClock, made as
    accept_lightly makes it for HTTPFactory: not registered for reading until the channel
    asks."""
    from twisted.internet.testing import MemoryReactorClock

    from catalyzer.server.channel import HTTPChannel, HTTPFactory
    from catalyzer.server.twistedprivate import AcceptedServer
    from catalyzer.settings import Config

    memory = MemoryReactorClock()
    state = ServerState(hello, Config.from_values({}), memory, responder=responder)
    channel = HTTPChannel(state)
    register = not HTTPFactory.starts_reading
    transport = AcceptedServer(accepted, channel, accepted.getpeername(), None, 1, memory, register)
    channel.makeConnection(transport)
    return memory, state, channel


def test_a_connection_close_request_on_a_real_socket_closes_at_once_and_leaves_no_cycle(
    tcp_pair: tuple[Any, Any],
) -> None:
    """The response goes out directly, the connection closes in the same turn (no write
    wake-up, no linger timer), and neither the channel nor its transport needs the garbage
    collector (read_into_target's replacement doRead is undone)."""
    accepted, client = tcp_pair
    gc.disable()
    try:
        memory, state, channel = _real_transport(accepted)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        transport = channel.transport
        assert memory.readers == {transport}
        client.settimeout(5)
        transport.doRead()  # what the reactor calls: reads, answers, closes
        assert not state.channels and channel.disconnected
        assert not memory.readers and not memory.writers
        assert not memory.getDelayedCalls()  # no linger timer left behind
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        assert statuses(received) == [200]
        freed, freed_transport = weakref.ref(channel), weakref.ref(transport)
        del channel, transport
        assert freed() is None and freed_transport() is None
    finally:
        gc.enable()


def test_a_post_body_on_a_real_socket_is_read_as_its_own_pieces(
    tcp_pair: tuple[Any, Any],
) -> None:
    """A Content-Length body under the spool threshold is read with recv in the pieces the
    body keeps and the app reads (no pass through the shared read buffer), whatever the
    sizes the client sends."""
    import hashlib

    from twisted.internet.testing import MemoryReactorClock

    from catalyzer.server.channel import HTTPChannel, HTTPFactory
    from catalyzer.server.twistedprivate import AcceptedServer
    from catalyzer.settings import Config

    seen: list[bytes] = []

    def digest(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        seen.append(hashlib.sha256(body).hexdigest().encode())
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    accepted, client = tcp_pair
    memory = MemoryReactorClock()
    state = ServerState(digest, Config.from_values({}), memory)
    channel = HTTPChannel(state)
    transport = AcceptedServer(
        accepted, channel, accepted.getpeername(), None, 1, memory, not HTTPFactory.starts_reading
    )
    channel.makeConnection(transport)
    body = bytes(range(256)) * 1024  # 256 KiB, more than one read on loopback
    client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    client.settimeout(5)
    transport.doRead()  # the head, into the shared buffer
    assert channel.reader.in_body
    buffer = state.read_buffer
    buffer[:] = b"\xee" * len(buffer)  # any read into it from now on would show
    sent = reads = 0
    while sent < len(body):
        sent += client.send(body[sent : sent + 40000])
        transport.doRead()  # what the reactor calls when the socket is readable
        reads += 1
    assert reads >= 2
    assert seen == [hashlib.sha256(body).hexdigest().encode()]
    assert buffer.tobytes() == b"\xee" * len(buffer)  # the body never passed through it
    assert statuses(client.recv(65536)) == [200]


def test_a_request_waiting_at_accept_is_answered_in_the_accepting_turn(
    tcp_pair: tuple[Any, Any],
) -> None:
    """The client sent its request before the server accepted: it is read, answered and the
    connection closed inside makeConnection, without a header timer ever armed."""
    accepted, client = tcp_pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    client.settimeout(5)
    import select

    assert select.select([accepted], [], [], 5)[0]  # in the server's receive buffer
    memory, state, channel = _real_transport(accepted)
    assert channel.disconnected and not state.channels
    assert not memory.getDelayedCalls()
    assert not memory.readers  # never registered with the reactor
    assert statuses(client.recv(65536)) == [200]


def test_a_connection_with_nothing_sent_waits_for_its_request_under_the_header_timeout(
    tcp_pair: tuple[Any, Any],
) -> None:
    accepted, _client = tcp_pair
    memory, state, channel = _real_transport(accepted)
    assert state.channels == {channel}
    assert memory.readers == {channel.transport}  # it waits for the reactor to say readable
    assert [c.getTime() for c in memory.getDelayedCalls()] == [state.config.header_timeout]
    memory.advance(state.config.header_timeout)
    assert channel.disconnected


class _Pending:
    """A responder that answers later (as the thread pool or split mode's front does)."""

    def __init__(self, services: Any, sink: Any, request: Any, environ: Any, done: Any) -> None:
        self.request, self.environ, self.started = request, environ, 0.0

    def run(self) -> None:
        pass

    def abort(self, why: str) -> None:
        pass


def test_a_request_read_at_accept_and_answered_later_leaves_the_connection_reading(
    tcp_pair: tuple[Any, Any],
) -> None:
    """Its response is still running when connectionMade ends: the connection registers for
    reading all the same, or the client's next request would never be read."""
    import select

    accepted, client = tcp_pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert select.select([accepted], [], [], 5)[0]
    memory, _state, channel = _real_transport(accepted, responder=_Pending)
    assert channel.response is not None
    assert memory.readers == {channel.transport}


class _Cut(_Pending):
    """A responder that cuts the connection as split mode's front does when its handler dies
    mid-response: abort_connection, then done with keep_alive false."""

    def __init__(self, services: Any, sink: Any, request: Any, environ: Any, done: Any) -> None:
        super().__init__(services, sink, request, environ, done)
        self.sink, self.done = sink, done

    def run(self) -> None:
        from catalyzer.wsgi.sink import ResponseOutcome

        self.sink.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        self.sink.abort_connection()
        self.done(ResponseOutcome(200, 10, False, 0.0))


def test_a_cut_connection_ends_with_a_reset_not_a_clean_close(
    tcp_pair: tuple[Any, Any],
) -> None:
    import select

    accepted, client = tcp_pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert select.select([accepted], [], [], 5)[0]
    memory, _state, channel = _real_transport(accepted, responder=_Cut)
    assert not channel.disconnected  # the abort's connectionLost comes a turn later
    memory.advance(0)
    assert channel.disconnected
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            pass
