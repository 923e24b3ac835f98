"""The uwsgi and FastCGI connection shells (server/gateway), in memory: a StringTransport for the
web server, a Clock for time, the same ServerState (and WSGI response) as the HTTP face."""

from __future__ import annotations

import gc
import json
import struct
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from catalyzer.http import fastcgi as f
from catalyzer.server.channel import DRAIN_IDLE_GRACE, ServerState
from catalyzer.server.gateway import FastCGIChannel, GatewayChannel, UwsgiChannel
from catalyzer.settings import Config
from tests.http.gateway_corpus import (
    ABORT,
    FASTCGI_GET,
    GET,
    GET_VALUES,
    NGINX_UWSGI,
    begin,
    fcgi,
    post,
    uw,
)
from tests.http.support import RecordingApp, logged_errors


def make_state(app: Any, **settings: Any) -> ServerState:
    values: dict[str, object] = {"app": "in.memory:app", "access-log": "off"}
    values.update({k.replace("_", "-"): v for k, v in settings.items()})
    return ServerState(app, Config.from_values(values), Clock())


class Conn:
    def __init__(self, state: ServerState, kind: type[GatewayChannel]) -> None:
        self.state = state
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 41000),
        )
        self.channel = kind(state)
        Protocol.makeConnection(self.channel, self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting) or self.channel.disconnected

    def output(self) -> bytes:
        value: bytes = self.transport.value()
        return value

    def lose(self) -> None:
        if not self.channel.disconnected:
            self.channel.connectionLost(Failure(ConnectionError("gone")))


@contextmanager
def gateway_log() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("catalyzer.gateway"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """``(type, request id, content)`` of every FastCGI record in ``data`` (which must be whole)."""
    out = []
    pos = 0
    while pos < len(data):
        version, kind, rid, length, padding = struct.unpack_from("!BBHHBx", data, pos)
        assert version == 1
        out.append((kind, rid, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + padding
    assert pos == len(data)
    return out


def stdout_of(recs: list[tuple[int, int, bytes]], rid: int = 1) -> bytes:
    return b"".join(c for k, r, c in recs if k == f.STDOUT and r == rid)


def ends(recs: list[tuple[int, int, bytes]]) -> list[tuple[int, int]]:
    """``(request id, protocol status)`` of each END_REQUEST."""
    return [(r, c[4]) for k, r, c in recs if k == f.END_REQUEST]


# -- uwsgi


def test_uwsgi_get() -> None:
    app = RecordingApp()
    state = make_state(app)
    conn = Conn(state, UwsgiChannel)
    with logged_errors() as errors:
        conn.send(uw(NGINX_UWSGI))
    out = conn.output()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok\n")
    assert b"Transfer-Encoding" not in out  # framed to end with the connection, never chunked
    assert conn.closed
    (call,) = app.calls
    assert (call.method, call.path, call.query) == ("GET", "/a b/c", "x=1")
    assert call.environ["REMOTE_ADDR"] == "203.0.113.7"
    assert call.environ["wsgi.url_scheme"] == "https"
    # 203.0.113.7 is no trusted proxy: its X-Forwarded-For is removed (--forwarded-allow-ips).
    assert "HTTP_X_FORWARDED_FOR" not in call.environ
    assert state.requests_served == 1
    assert state.metrics.snapshot()["duration_count"] == 1
    assert state.metrics.snapshot()["bytes_in"] == len(uw(NGINX_UWSGI))
    conn.lose()
    assert state.channels == set()
    assert errors == []


def test_a_closed_uwsgi_connection_is_freed_without_the_garbage_collector() -> None:
    """nginx opens a uwsgi connection per request: no reference cycle may outlive it."""
    state = make_state(lambda e, s: (s("200 OK", []), [b"ok"])[1])
    gc.disable()
    try:
        conn = Conn(state, UwsgiChannel)
        conn.send(uw(NGINX_UWSGI))
        assert conn.closed
        conn.lose()
        freed = weakref.ref(conn.channel)
        del conn
        assert freed() is None
    finally:
        gc.enable()


def test_uwsgi_forwarded_headers_of_a_trusted_client_are_believed() -> None:
    app = RecordingApp()
    conn = Conn(make_state(app, forwarded_allow_ips="203.0.113.0/24"), UwsgiChannel)
    conn.send(uw({**NGINX_UWSGI, "HTTP_X_FORWARDED_PROTO": "http"}))
    (call,) = app.calls
    assert call.environ["REMOTE_ADDR"] == "198.51.100.1"
    assert call.environ["wsgi.url_scheme"] == "http"


def test_uwsgi_streamed_body_bytewise() -> None:
    app = RecordingApp()
    conn = Conn(make_state(app), UwsgiChannel)
    body = b"x" * 3000
    for i, byte in enumerate(uw(post(body), body)):
        assert not app.calls, f"app called after {i} bytes"
        conn.send(bytes((byte,)))
    assert app.calls[0].body == body
    assert conn.output().startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("wire", "detail"),
    [
        (b"\x05\x03\x00\x00abc", "modifier1 5"),
        (b"\x00\x04\x00\x00\x01\x00a\x05", "malformed uwsgi packet"),
    ],
)
def test_uwsgi_malformed_is_one_line_and_a_close(wire: bytes, detail: str) -> None:
    app = RecordingApp()
    conn = Conn(make_state(app), UwsgiChannel)
    with gateway_log() as lines, logged_errors() as errors:
        conn.send(wire)
    assert conn.output() == b""
    assert conn.closed
    assert len(lines) == 1 and detail in lines[0]
    assert app.calls == [] and errors == []


def test_uwsgi_refused_gets_a_status() -> None:
    conn = Conn(make_state(RecordingApp(), max_body=10), UwsgiChannel)
    with gateway_log() as lines:
        conn.send(uw(post(b"x" * 11)))
    assert conn.output().startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert conn.closed
    assert len(lines) == 1 and "413" in lines[0]


def test_uwsgi_header_timeout() -> None:
    state = make_state(RecordingApp(), header_timeout=5)
    conn = Conn(state, UwsgiChannel)
    conn.send(uw(GET)[:10])
    clock: Any = state.clock
    clock.advance(4.9)
    assert not conn.closed
    with gateway_log() as lines:
        clock.advance(0.1)
    assert conn.closed and conn.output() == b""
    assert "not received within 5s" in lines[0]


def test_uwsgi_web_server_gone_closes_the_iterable() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield b"y" * 100
        finally:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return endless()

    conn = Conn(make_state(app), UwsgiChannel)
    conn.send(uw(GET))
    assert conn.output().startswith(b"HTTP/1.1 200 OK\r\n")
    assert not closed
    conn.lose()
    assert closed == [True]


def test_uwsgi_upload_progress_is_recorded() -> None:
    state = make_state(RecordingApp(), progress_path="/progress")
    conn = Conn(state, UwsgiChannel)
    body = b"z" * 100
    conn.send(uw(post(body, REQUEST_URI="/upload?X-Progress-ID=abc"), body[:40]))
    assert state.progress is not None
    entry = state.progress.registry.get("abc", 0)
    assert (entry["state"], entry["received"], entry["size"]) == ("uploading", 40, 100)
    conn.send(body[40:])
    assert state.progress.registry.get("abc", 0)["state"] == "done"
    # A poll through the same face.
    poll = Conn(state, UwsgiChannel)
    poll.send(uw({**GET, "REQUEST_URI": "/progress?X-Progress-ID=abc"}))
    head, _, payload = poll.output().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(payload)["state"] == "done"


# -- FastCGI


def test_fastcgi_progress_answered_by_the_master_then_the_connection_serves_on() -> None:
    """In prefork mode the entry comes from the master: the kept connection waits for it,
    answers, then takes the next request."""
    pending: list[Deferred[dict[str, object]]] = []

    def ask(upload_id: str) -> Deferred[dict[str, object]]:
        pending.append(Deferred())
        return pending[-1]

    app = RecordingApp()
    values = {"app": "in.memory:app", "access-log": "off", "progress-path": "/progress"}
    state = ServerState(app, Config.from_values(values), Clock(), progress_source=ask)
    conn = Conn(state, FastCGIChannel)
    poll = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/progress?X-Progress-ID=up1"}
    conn.send(fcgi({**poll, "DOCUMENT_URI": "/progress"}))
    assert conn.output() == b""  # waiting for the master
    pending[0].callback({"state": "uploading", "received": 7, "size": 9})
    recs = records(conn.output())
    head, _, body = stdout_of(recs).partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\n")
    assert json.loads(body) == {"state": "uploading", "received": 7, "size": 9}
    assert ends(recs) == [(1, f.REQUEST_COMPLETE)]
    conn.transport.clear()
    conn.send(fcgi({**FASTCGI_GET, "DOCUMENT_URI": "/next"}, request_id=2))
    assert ends(records(conn.output())) == [(2, f.REQUEST_COMPLETE)]
    assert [c.path for c in app.calls] == ["/next"]
    assert not conn.closed


def test_fastcgi_progress_waiting_for_the_master_is_not_idle() -> None:
    pending: list[Deferred[dict[str, object]]] = []

    def ask(upload_id: str) -> Deferred[dict[str, object]]:
        pending.append(Deferred())
        return pending[-1]

    values = {"app": "in.memory:app", "access-log": "off", "progress-path": "/progress"}
    clock = Clock()
    state = ServerState(RecordingApp(), Config.from_values(values), clock, progress_source=ask)
    conn = Conn(state, FastCGIChannel)
    conn.send(fcgi({**FASTCGI_GET, "DOCUMENT_URI": "/first"}))  # arms the keep-alive wait
    assert ends(records(conn.output())) == [(1, f.REQUEST_COMPLETE)]
    conn.transport.clear()
    poll = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/progress?X-Progress-ID=up3"}
    conn.send(fcgi({**poll, "DOCUMENT_URI": "/progress"}, request_id=2))
    clock.advance(state.config.keepalive_timeout + 1)
    assert not conn.closed  # waiting for the master's answer is not idle
    pending[0].callback({"state": "uploading", "received": 7, "size": 9})
    assert ends(records(conn.output())) == [(2, f.REQUEST_COMPLETE)]
    assert not conn.closed


def test_fastcgi_progress_source_failure_is_a_503_entry() -> None:
    failing: Deferred[dict[str, object]] = Deferred()
    values = {"app": "in.memory:app", "access-log": "off", "progress-path": "/progress"}
    state = ServerState(
        RecordingApp(), Config.from_values(values), Clock(), progress_source=lambda _: failing
    )
    conn = Conn(state, FastCGIChannel)
    poll = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/progress?X-Progress-ID=up2"}
    conn.send(fcgi({**poll, "DOCUMENT_URI": "/progress"}))
    failing.errback(ConnectionError("master gone"))
    _, _, body = stdout_of(records(conn.output())).partition(b"\r\n\r\n")
    assert json.loads(body)["status"] == 503


def test_fastcgi_get_keep_conn() -> None:
    app = RecordingApp()
    state = make_state(app)
    conn = Conn(state, FastCGIChannel)
    with logged_errors() as errors:
        conn.send(fcgi(FASTCGI_GET))
        recs = records(conn.output())
        head, _, body = stdout_of(recs).partition(b"\r\n\r\n")
        assert head.startswith(b"Status: 200 OK\r\n")
        assert body == b"ok\n"
        assert ends(recs) == [(1, f.REQUEST_COMPLETE)]
        assert recs[-2] == (f.STDOUT, 1, b"")  # stdout ended before END_REQUEST
        assert not conn.closed
        # The same connection takes the next request.
        conn.transport.clear()
        conn.send(fcgi({**FASTCGI_GET, "DOCUMENT_URI": "/two"}, request_id=2))
        assert ends(records(conn.output())) == [(2, f.REQUEST_COMPLETE)]
        assert [c.path for c in app.calls] == ["/", "/two"]
        assert not conn.closed
        # Idle past keepalive-timeout: closed.
        clock: Any = state.clock
        clock.advance(state.config.keepalive_timeout)
        assert conn.closed
    assert errors == []


def test_fastcgi_keep_conn_idle_counts_from_the_last_response() -> None:
    """The keep-alive wait is armed once: a request before it fires does not move the timer,
    and when it fires it waits out the rest from the last response's end."""
    state = make_state(RecordingApp())
    clock: Any = state.clock
    timeout = state.config.keepalive_timeout
    conn = Conn(state, FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET))
    clock.advance(timeout - 1)
    conn.send(fcgi({**FASTCGI_GET, "DOCUMENT_URI": "/two"}, request_id=2))
    assert ends(records(conn.output())) == [(1, f.REQUEST_COMPLETE), (2, f.REQUEST_COMPLETE)]
    clock.advance(1)  # the first wait ends: 1 s since the last response
    assert not conn.closed
    clock.advance(timeout - 1.01)
    assert not conn.closed
    clock.advance(0.01)
    assert conn.closed


def test_fastcgi_keep_conn_not_closed_while_a_request_arrives() -> None:
    state = make_state(RecordingApp())
    clock: Any = state.clock
    conn = Conn(state, FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET))
    conn.send(begin(request_id=2))  # the next request has begun
    clock.advance(state.config.keepalive_timeout)
    assert not conn.closed


def test_fastcgi_without_keep_conn_closes() -> None:
    conn = Conn(make_state(RecordingApp()), FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET, keep=False))
    assert ends(records(conn.output())) == [(1, f.REQUEST_COMPLETE)]
    assert conn.closed


def test_fastcgi_large_response_in_records() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "application/octet-stream")])
        return [payload]

    conn = Conn(make_state(app), FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET))
    recs = records(conn.output())
    assert all(len(c) <= 65535 for _, _, c in recs)
    head, _, body = stdout_of(recs).partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 404 Not Found\r\n")
    assert b"Content-Length: 262144" in head
    assert body == payload


def test_fastcgi_app_error_is_a_500() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    conn = Conn(make_state(app), FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET))
    recs = records(conn.output())
    assert stdout_of(recs).startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"boom" not in conn.output()
    assert ends(recs) == [(1, f.REQUEST_COMPLETE)]


def test_fastcgi_management_records() -> None:
    conn = Conn(make_state(RecordingApp(), max_connections=50), FastCGIChannel)
    conn.send(GET_VALUES + f.record(77, 0, b"") + f.record(42, 3, b"x"))
    recs = records(conn.output())
    assert [k for k, _, _ in recs] == [f.GET_VALUES_RESULT, f.UNKNOWN_TYPE, f.UNKNOWN_TYPE]
    assert f.parse_pairs(recs[0][2]) == {b"FCGI_MAX_CONNS": b"50", b"FCGI_MPXS_CONNS": b"0"}
    assert recs[1][2][0] == 77 and recs[2][2][0] == 42
    assert not conn.closed


def test_fastcgi_unknown_role() -> None:
    conn = Conn(make_state(RecordingApp()), FastCGIChannel)
    conn.send(begin(role=3, keep=False))
    assert ends(records(conn.output())) == [(1, f.UNKNOWN_ROLE)]
    assert conn.closed


def test_fastcgi_second_request_refused_then_abort_closes_the_iterable() -> None:
    closed: list[bool] = []

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield b"y" * 100
        finally:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return endless()

    state = make_state(app)
    conn = Conn(state, FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET) + begin(2) + fcgi(FASTCGI_GET, request_id=2)[16:])
    recs = records(conn.output())
    assert ends(recs) == [(2, f.CANT_MPX_CONN)]
    assert stdout_of(recs).startswith(b"Status: 200 OK\r\n")
    assert not closed
    conn.transport.clear()
    conn.send(ABORT)
    assert closed == [True]
    assert ends(records(conn.output())) == [(1, f.REQUEST_COMPLETE)]
    assert not conn.closed
    # The producer the abandoned response registered is gone: the next request can stream.
    assert conn.transport.producer is None
    conn.transport.clear()
    clock: Any = state.clock
    conn.send(fcgi(FASTCGI_GET, request_id=3))
    assert stdout_of(records(conn.output()), 3).startswith(b"Status: 200 OK")
    conn.send(f.record(f.ABORT_REQUEST, 3))
    assert closed == [True, True]
    clock.advance(0)


@pytest.mark.parametrize(
    ("wire", "detail"),
    [
        (b"\x02" + begin()[1:], "version 2"),
        (f.record(f.STDOUT, 1, b"x"), "only an application sends"),
        (begin() + f.record(f.STDIN, 1, b"x"), "before its params ended"),
    ],
)
def test_fastcgi_malformed_is_one_line_and_a_close(wire: bytes, detail: str) -> None:
    app = RecordingApp()
    conn = Conn(make_state(app), FastCGIChannel)
    with gateway_log() as lines, logged_errors() as errors:
        conn.send(wire)
    assert conn.output() == b""
    assert conn.closed
    assert len(lines) == 1 and detail in lines[0], lines
    assert app.calls == [] and errors == []


def test_fastcgi_refused_then_closed() -> None:
    conn = Conn(make_state(RecordingApp(), max_body=10), FastCGIChannel)
    with gateway_log() as lines:
        conn.send(fcgi(post(b"x" * 11), b"x" * 11))
    recs = records(conn.output())
    assert stdout_of(recs).startswith(b"Status: 413 Content Too Large\r\n")
    assert ends(recs) == [(1, f.REQUEST_COMPLETE)]
    assert conn.closed
    assert len(lines) == 1


def test_uwsgi_drain_gives_a_new_connection_its_grace_to_send_its_request() -> None:
    """nginx opens a connection per uwsgi request: one accepted just before the drain has its
    request on the way, and closing it at once would reset it (nginx answers 502)."""
    state = make_state(RecordingApp())
    clock: Any = state.clock
    fresh = Conn(state, UwsgiChannel)
    state.drain()
    assert not fresh.closed
    fresh.send(uw(NGINX_UWSGI))
    assert fresh.output().startswith(b"HTTP/1.1 200 OK\r\n")
    assert fresh.closed

    state = make_state(RecordingApp())
    clock = state.clock
    silent = Conn(state, UwsgiChannel)
    state.drain()
    clock.advance(DRAIN_IDLE_GRACE * 0.9)
    assert not silent.closed
    clock.advance(DRAIN_IDLE_GRACE * 0.1)  # the grace after it was opened, and nothing came
    assert silent.closed and silent.output() == b""


def test_gateway_drain_waits_for_bytes_unread_in_the_socket() -> None:
    state = make_state(RecordingApp())
    clock: Any = state.clock
    conn = Conn(state, FastCGIChannel)
    conn.send(fcgi(FASTCGI_GET))  # keep-conn: idle after its answer
    clock.advance(2 * DRAIN_IDLE_GRACE)
    conn.channel.unread_bytes = lambda: True  # type: ignore[method-assign]
    state.drain()
    clock.advance(2 * DRAIN_IDLE_GRACE)
    assert not conn.closed
    conn.channel.unread_bytes = lambda: False  # type: ignore[method-assign]
    state.drain()
    assert conn.closed


def test_fastcgi_drain_closes_idle_and_finishes_busy() -> None:
    state = make_state(RecordingApp())
    idle = Conn(state, FastCGIChannel)
    idle.send(fcgi(FASTCGI_GET))
    assert not idle.closed
    state.drain()
    assert idle.closed
