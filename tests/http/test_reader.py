"""RequestReader behaviour that no single corpus file shows: 100-continue, pipelining order, what
is (not) read after a final request or an error, body spooling, chunked decoding, upload progress,
and property-based fuzzing."""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalyzer.http.reader import SEND_CONTINUE, Limits, ProtocolError, Request, RequestReader
from catalyzer.http.spool import PIECE, MemoryBody
from catalyzer.testing import InMemoryServer
from tests.http.support import (
    SECOND,
    RecordingApp,
    assert_no_leak,
    close_bodies,
    drain,
    feed,
    feed_bytewise,
    kind,
    limits_for,
    logged_errors,
    parse_responses,
    summary,
)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def post(target: bytes, headers: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    host = b"Host: x\r\n" if version == b"1.1" else b""
    return b"POST %s HTTP/%s\r\n%s%s\r\n%s" % (target, version, host, headers, body)


def get(target: bytes, headers: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (target, headers)


def body_of(request: Request) -> bytes:
    return request.body.read() if request.body is not None else b""


# -- 100-continue


def test_send_continue_comes_before_the_request() -> None:
    reader = RequestReader()
    head = post(b"/up", b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"")
    reader.receive_data(head)
    assert drain(reader) == [SEND_CONTINUE]
    assert reader.in_body
    reader.receive_data(b"hello")
    [request] = drain(reader)
    assert isinstance(request, Request)
    assert request.expect_continue
    assert body_of(request) == b"hello"


def test_send_continue_arrives_exactly_when_the_head_ends() -> None:
    reader = RequestReader()
    head = post(b"/up", b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n", b"")
    for i in range(len(head) - 1):
        reader.receive_data(head[i : i + 1])
        assert reader.next_event() is None
    reader.receive_data(head[-1:])
    assert drain(reader) == [SEND_CONTINUE]
    reader.receive_data(b"3\r\nabc\r\n0\r\n\r\n")
    [request] = drain(reader)
    assert isinstance(request, Request)
    assert body_of(request) == b"abc"


def test_no_continue_when_the_declared_body_is_too_large() -> None:
    reader = RequestReader(Limits(max_body=1024))
    reader.receive_data(post(b"/", b"Expect: 100-continue\r\nContent-Length: 1025\r\n", b""))
    assert [kind(e) for e in drain(reader)] == ["error:413"]
    assert reader.stopped


def test_server_answers_413_without_100_continue() -> None:
    app = RecordingApp()
    conn = InMemoryServer(app, max_body=1024).connect()
    conn.send(post(b"/", b"Expect: 100-continue\r\nContent-Length: 4096\r\n", b""))
    output = conn.output()
    assert output.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in output
    assert conn.closed
    assert app.calls == []


def test_no_continue_for_http10() -> None:
    reader = RequestReader()
    reader.receive_data(post(b"/", b"Expect: 100-continue\r\nContent-Length: 3\r\n", b"", b"1.0"))
    assert drain(reader) == []
    reader.receive_data(b"abc")
    [request] = drain(reader)
    assert isinstance(request, Request)
    assert not request.expect_continue
    assert body_of(request) == b"abc"


@pytest.mark.parametrize(
    "headers",
    [b"Expect: 100-continue\r\n", b"Expect: 100-continue\r\nContent-Length: 0\r\n"],
    ids=["no-length", "length-0"],
)
def test_no_continue_without_a_body(headers: bytes) -> None:
    reader = RequestReader()
    reader.receive_data(get(b"/", headers))
    [request] = drain(reader)
    assert isinstance(request, Request)
    assert not request.expect_continue


def test_server_sends_100_continue_only_once_the_request_is_next() -> None:
    app = RecordingApp()
    conn = InMemoryServer(app).connect()
    conn.send(get(b"/a") + post(b"/b", b"Expect: 100-continue\r\nContent-Length: 3\r\n", b""))
    responses = parse_responses(conn.output())
    assert [r.status for r in responses] == [200, 100]
    conn.send(b"xyz")
    responses = parse_responses(conn.output())
    assert [r.status for r in responses] == [200, 100, 200]
    assert [c.path for c in app.calls] == ["/a", "/b"]
    assert app.calls[1].body == b"xyz"


# -- pipelining order


PIPELINE = (
    get(b"/1")
    + post(b"/2", b"Content-Length: 3\r\n", b"two")
    + post(b"/3", b"Transfer-Encoding: chunked\r\n", b"5\r\nthree\r\n0\r\n\r\n")
    + get(b"/4?q")
)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_pipelined_requests_come_out_in_order(bytewise: bool) -> None:
    reader = RequestReader()
    events = feed_bytewise(reader, PIPELINE) if bytewise else feed(reader, PIPELINE)
    assert [e.target for e in events] == [b"/1", b"/2", b"/3", b"/4?q"]
    assert [body_of(e) for e in events] == [b"", b"two", b"three", b""]
    assert reader.completed_requests == 4
    assert not reader.stopped
    close_bodies(events)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_error_after_two_good_requests_comes_third(bytewise: bool) -> None:
    data = get(b"/1") + post(b"/2", b"Content-Length: 1\r\n", b"x") + b"GET /3 HTTP/1.1\r\n\r\n"
    data += SECOND
    reader = RequestReader()
    events = feed_bytewise(reader, data) if bytewise else feed(reader, data)
    assert [kind(e) for e in events] == ["request", "request", "error:400"]
    assert [e.target for e in events[:2]] == [b"/1", b"/2"]
    assert reader.stopped
    assert reader.completed_requests == 2
    close_bodies(events)


def test_continue_keeps_its_place_in_the_pipeline() -> None:
    data = (
        get(b"/1")
        + post(b"/2", b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"ok")
        + get(b"/3")
    )
    reader = RequestReader()
    events = feed(reader, data)
    assert [kind(e) for e in events] == ["request", "continue", "request", "request"]
    close_bodies(events)


def test_server_answers_pipelined_requests_then_the_error_in_order() -> None:
    app = RecordingApp()
    conn = InMemoryServer(app).connect()
    conn.send(get(b"/1") + get(b"/2") + b"GET /3 HTTP/1.1\r\nHost: a b\r\n\r\n" + SECOND)
    output = conn.output()
    assert_no_leak(output)
    responses = parse_responses(output)
    assert [r.status for r in responses] == [200, 200, 400]
    assert responses[-1].closes
    assert not any(r.closes for r in responses[:-1])
    assert app.paths == ["/1", "/2"]
    assert conn.closed


# -- version, keep-alive and upgrade, with and without the headers that decide them


@pytest.mark.parametrize(
    ("head", "version", "keep_alive", "upgrade"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n", "1.1", True, False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", "1.1", False, False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n", "1.1", True, False),
        (b"GET / HTTP/1.0\r\n", "1.0", False, False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n", "1.0", True, False),
        (b"GET / HTTP/1.0\r\nConnection: close\r\n", "1.0", False, False),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
            "1.1",
            False,
            True,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n", "1.1", True, False),
    ],
    ids=[
        "11",
        "11-close",
        "11-keep-alive",
        "10",
        "10-keep-alive",
        "10-close",
        "11-upgrade",
        "11-upgrade-without-connection",
    ],
)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_version_keep_alive_and_upgrade(
    head: bytes, version: str, keep_alive: bool, upgrade: bool, bytewise: bool
) -> None:
    reader = RequestReader()
    data = head + b"\r\n"
    [request] = feed_bytewise(reader, data) if bytewise else feed(reader, data)
    assert isinstance(request, Request)
    assert (request.version, request.keep_alive, request.upgrade) == (
        version,
        keep_alive,
        upgrade,
    )


# -- nothing is read after a final request or an error


@pytest.mark.parametrize(
    "first",
    [
        get(b"/1", b"Connection: close\r\n"),
        b"GET /1 HTTP/1.0\r\n\r\n",
        get(b"/1", b"Connection: keep-alive, close\r\n"),
    ],
    ids=["connection-close", "http10", "close-in-list"],
)
def test_nothing_is_read_after_a_final_request(first: bytes) -> None:
    reader = RequestReader()
    reader.receive_data(first + SECOND)
    [request] = drain(reader)
    assert isinstance(request, Request)
    assert not request.keep_alive
    assert reader.stopped
    reader.receive_data(SECOND)
    assert reader.next_event() is None
    assert reader.completed_requests == 1


def test_server_answers_only_the_final_request() -> None:
    app = RecordingApp()
    conn = InMemoryServer(app).connect()
    conn.send(get(b"/1", b"Connection: close\r\n") + SECOND)
    responses = parse_responses(conn.output())
    assert [r.status for r in responses] == [200]
    assert responses[0].closes
    assert app.paths == ["/1"]
    assert conn.closed


def test_nothing_is_read_after_an_error() -> None:
    reader = RequestReader()
    reader.receive_data(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    assert [kind(e) for e in drain(reader)] == ["error:400"]
    for _ in range(3):
        reader.receive_data(SECOND)
    reader.receive_eof()
    reader.fail(408, "too late")  # ignored: already stopped
    assert reader.next_event() is None
    assert reader.completed_requests == 0


def test_fail_ends_a_request_in_progress() -> None:
    reader = RequestReader()
    reader.receive_data(post(b"/", b"Content-Length: 10\r\n", b"abc"))
    body = reader.current.body if reader.current else None
    assert body is not None
    reader.fail(408, "body too slow")
    assert [kind(e) for e in drain(reader)] == ["error:408"]
    assert body.closed
    reader.receive_data(b"defghij" + SECOND)
    assert reader.next_event() is None


# -- body spooling


def pattern(n: int) -> bytes:
    return bytes((i * 7 + i // 256) % 256 for i in range(n))


def rolled(body: Any) -> bool:
    assert isinstance(body, tempfile.SpooledTemporaryFile)
    return bool(body._rolled)


@pytest.mark.parametrize("size", [0, 1, 1000, 1024], ids=lambda n: f"len-{n}")
def test_body_up_to_the_threshold_stays_in_memory(size: int) -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024))
    body = pattern(size)
    [request] = feed(reader, post(b"/", b"Content-Length: %d\r\n" % size, body))
    assert isinstance(request, Request)
    if size:
        assert isinstance(request.body, MemoryBody)
        assert body_of(request) == body
    else:
        assert request.body is None


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_body_over_the_threshold_is_spooled_to_a_file(bytewise: bool) -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024))
    body = pattern(5000)
    data = post(b"/", b"Content-Length: 5000\r\n", body)
    [request] = feed_bytewise(reader, data) if bytewise else feed(reader, data)
    assert isinstance(request, Request)
    assert rolled(request.body)
    assert request.body_length == 5000
    assert body_of(request) == body
    request.body.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(("size", "on_disk"), [(100, False), (1024, False), (5000, True)])
def test_chunked_body_spools_once_past_the_threshold(size: int, on_disk: bool) -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024))
    body = pattern(size)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700]) for i in range(0, size, 700)
    )
    [request] = feed(reader, post(b"/", b"Transfer-Encoding: chunked\r\n", chunks + b"0\r\n\r\n"))
    assert isinstance(request, Request)
    assert rolled(request.body) == on_disk
    assert body_of(request) == body
    request.body.close()  # type: ignore[union-attr]


def test_spooled_body_reaches_the_app_intact_and_is_closed_after() -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append((stream, stream.read(10), stream.read()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    conn = InMemoryServer(app, body_spool_threshold=1024).connect()
    body = pattern(5000)
    conn.send(post(b"/", b"Content-Length: 5000\r\n", body))
    [(stream, head, rest)] = seen
    assert head + rest == body
    assert rolled(stream)
    assert stream.closed
    assert [r.status for r in parse_responses(conn.output())] == [200]


def test_body_of_a_request_cut_short_is_closed() -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024))
    reader.receive_data(post(b"/", b"Content-Length: 5000\r\n", pattern(3000)))
    assert reader.current is not None
    body = reader.current.body
    assert body is not None and rolled(body)
    reader.receive_eof()
    assert body.closed
    assert reader.next_event() is None


def test_server_closes_the_body_of_a_request_cut_short() -> None:
    app = RecordingApp()
    conn = InMemoryServer(app, body_spool_threshold=1024).connect()
    conn.send(post(b"/", b"Content-Length: 5000\r\n", pattern(3000)))
    current = conn.channel.reader.current
    assert current is not None and current.body is not None
    body = current.body
    conn.lose()
    assert body.closed
    assert app.calls == []
    assert conn.output() == b""


# -- chunked decoding


CHUNKINGS = {
    "one-chunk": b"b\r\nhello world\r\n0\r\n\r\n",
    "byte-chunks": b"".join(b"1\r\n%c\r\n" % c for c in b"hello world") + b"0\r\n\r\n",
    "extensions": b'5;a=1\r\nhello\r\n1;b\r\n \r\n5;c="x;y"\r\nworld\r\n0;end\r\n\r\n',
    "trailers": b"6\r\nhello \r\n5\r\nworld\r\n0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n",
    "leading-zeros": b"0006\r\nhello \r\n00005\r\nworld\r\n000\r\n\r\n",
}


@pytest.mark.parametrize("wire", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_chunked_body_decodes(wire: bytes) -> None:
    for bytewise in (False, True):
        reader = RequestReader()
        data = post(b"/", b"Transfer-Encoding: chunked\r\n", wire) + SECOND
        events = feed_bytewise(reader, data) if bytewise else feed(reader, data)
        assert [kind(e) for e in events] == ["request", "request"]
        request = events[0]
        assert request.chunked
        assert request.content_length is None
        assert request.body_length == 11
        assert body_of(request) == b"hello world"
        assert [name for name, _ in request.headers] == [b"Host", b"Transfer-Encoding"]
        close_bodies(events)


@pytest.mark.parametrize("wire", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_chunked_body_as_wsgi_input(wire: bytes) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(
            (
                environ["CONTENT_LENGTH"],
                environ["wsgi.input_terminated"],
                stream.read(3),
                stream.readline(),
                stream.read(),
                stream.read(),
            )
        )
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    conn = InMemoryServer(app).connect()
    conn.send(post(b"/", b"Transfer-Encoding: chunked\r\n", wire))
    assert seen == [("11", True, b"hel", b"lo world", b"", b"")]


# -- upload progress


class Watcher:
    """Records what a BodyWatcher is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def started(self, request: Request) -> None:
        self.seen.append(("started", request.upload_id))

    def progress(self, request: Request, received: int) -> None:
        self.seen.append(("progress", received))

    def finished(self, request: Request) -> None:
        self.seen.append(("finished", request.upload_id))

    def failed(self, request: Request, status: int | None) -> None:
        self.seen.append(("failed", status))


def progress_counts(watcher: Watcher) -> list[object]:
    return [n for what, n in watcher.seen if what == "progress"]


def test_progress_counts_increase_to_the_body_length() -> None:
    watcher = Watcher()
    reader = RequestReader(watcher=watcher)
    body = pattern(1000)
    data = post(b"/?X-Progress-ID=up1", b"Content-Length: 1000\r\n", body)
    feed(reader, data, [len(data) - 1000 + k for k in (1, 250, 600, 999)])
    assert watcher.seen[0] == ("started", "up1")
    assert progress_counts(watcher) == [1, 250, 600, 999, 1000]
    assert watcher.seen[-1] == ("finished", "up1")


def test_progress_for_a_chunked_body_counts_data_only() -> None:
    watcher = Watcher()
    reader = RequestReader(watcher=watcher)
    feed_bytewise(
        reader,
        post(
            b"/", b"X-Progress-ID: up2\r\nTransfer-Encoding: chunked\r\n", CHUNKINGS["extensions"]
        ),
    )
    assert progress_counts(watcher) == list(range(1, 12))


def test_no_upload_id_no_tracking() -> None:
    watcher = Watcher()
    reader = RequestReader(watcher=watcher)
    reader.receive_data(post(b"/", b"Content-Length: 3\r\n", b"abc"))
    assert watcher.seen == []


def test_progress_failures_carry_the_status() -> None:
    watcher = Watcher()
    reader = RequestReader(Limits(max_body=10), watcher=watcher)
    reader.receive_data(post(b"/?X-Progress-ID=big", b"Content-Length: 11\r\n", b""))
    assert watcher.seen == [("started", "big"), ("failed", 413)]
    watcher = Watcher()
    reader = RequestReader(watcher=watcher)
    reader.receive_data(post(b"/?X-Progress-ID=gone", b"Content-Length: 10\r\n", b"abc"))
    reader.receive_eof()
    assert watcher.seen[-1] == ("failed", None)


# -- property-based


def check_event_stream(events: list[Any], reader: RequestReader) -> None:
    kinds = [kind(e) for e in events]
    errors = [k for k in kinds if k.startswith("error:")]
    assert len(errors) <= 1
    if errors:
        assert kinds[-1] == errors[0]
        assert reader.stopped
    for event in events:
        if isinstance(event, ProtocolError):
            assert 400 <= event.status <= 505
            assert event.reason


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_never_raise(pieces: list[bytes]) -> None:
    reader = RequestReader(Limits(max_body=4096, body_spool_threshold=64))
    events = []
    for piece in pieces:
        reader.receive_data(piece)
        events += drain(reader)
    reader.receive_eof()
    events += drain(reader)
    check_event_stream(events, reader)
    close_bodies(events)


HTTPISH = st.sampled_from(
    [
        b"GET ", b"POST ", b"/", b" HTTP/1.1", b" HTTP/1.0", b"\r\n", b"\n", b"\r", b": ", b":",
        b"Host", b"Content-Length", b"Transfer-Encoding", b"chunked", b"Expect", b"100-continue",
        b"Connection", b"close", b"0", b"5", b"ff", b";", b"=", b" ", b"\t", b"\x00", b"\x80",
        b"hello", b"PRI * HTTP/2.0", b"CONNECT ", b"Upgrade", b"a" * 300,
    ]
)  # fmt: skip


@FUZZ
@given(st.lists(HTTPISH, max_size=40), st.lists(st.integers(0, 2000), max_size=6))
def test_random_http_shaped_tokens_never_raise(tokens: list[bytes], cuts: list[int]) -> None:
    data = get(b"/") + b"".join(tokens)
    reader = RequestReader(Limits(max_body=512, max_chunk_line=64, body_spool_threshold=32))
    events = feed(reader, data, [c for c in cuts if c < len(data)])
    reader.receive_eof()
    events += drain(reader)
    assert events and kind(events[0]) == "request"
    check_event_stream(events, reader)
    close_bodies(events)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_through_the_server_never_leak_or_log_errors(data: bytes) -> None:
    app = RecordingApp()
    conn = InMemoryServer(app).connect()
    with logged_errors() as errors:
        conn.send(data)
        output = conn.output()
        assert_no_leak(output)
        final = [r for r in parse_responses(output) if r.status >= 200]
        refusals = [r for r in final if r.status >= 400]
        # Every application call is answered; an error is the last thing said, and closes.
        assert len(final) - len(refusals) >= len(app.calls)
        assert len(refusals) <= 1
        if refusals:
            assert final[-1] is refusals[0]
            assert refusals[0].closes
            assert conn.closed
        conn.lose()
    assert errors == []


TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
RESERVED = {
    "host", "content-length", "transfer-encoding", "expect", "connection", "upgrade",
    "proxy-connection", "keep-alive", "te", "trailer",
}  # fmt: skip
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"
VALUE_BYTES = [b for b in range(0x21, 0x100) if b != 0x7F]


@st.composite
def header_fields(draw: Any) -> tuple[bytes, bytes]:
    name = draw(st.text(TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in RESERVED))
    inner = draw(st.lists(st.sampled_from([*VALUE_BYTES, 0x20, 0x09]), max_size=30))
    value = bytes(inner).strip(b" \t")
    padding = draw(st.sampled_from([(b"", b""), (b" ", b""), (b"\t ", b" "), (b"", b"  ")]))
    return name.encode(), padding[0] + value + padding[1]


@st.composite
def requests(draw: Any) -> tuple[bytes, dict[str, Any]]:
    """One valid request and what the reader should make of it."""
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "none"]) if body else st.just("none"))
    if version == b"1.0" and framing == "chunked":
        framing = "length"
    if framing == "none":
        body = b""
    method = draw(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
        if framing == "none"
        else st.sampled_from(["POST", "PUT", "PATCH"])
    )
    path = "/" + draw(st.text(PATH_CHARS, max_size=20))
    query = draw(st.one_of(st.none(), st.text(PATH_CHARS + "?", max_size=20)))
    target = (path + ("" if query is None else "?" + query)).encode()
    fields = draw(st.lists(header_fields(), max_size=6))
    head = [b"%s %s HTTP/%s\r\n" % (method.encode(), target, version)]
    if version == b"1.1":
        head.append(b"Host: example.com\r\n")
    else:
        head.append(b"Connection: keep-alive\r\n")
    head += [b"%s:%s\r\n" % f for f in fields]
    wire_body = b""
    if framing == "length":
        head.append(b"Content-Length: %d\r\n" % len(body))
        wire_body = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked\r\n")
        sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=10))
        i = 0
        while i < len(body):
            n = sizes[len(wire_body) % len(sizes)]
            ext = draw(st.sampled_from([b"", b";x", b";n=v", b';q="a b"']))
            piece = body[i : i + n]
            wire_body += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
            i += n
        wire_body += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: t\r\n"])) + b"\r\n"
    data = b"".join(head) + b"\r\n" + wire_body
    fields_seen = [(n, v.strip(b" \t")) for n, v in fields]
    return data, {"method": method, "target": target, "body": body, "fields": fields_seen}


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3), st.data())
def test_valid_requests_split_anywhere_parse_the_same(
    pipeline: list[tuple[bytes, dict[str, Any]]], data: st.DataObject
) -> None:
    wire = b"".join(raw for raw, _ in pipeline)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=12))
    whole_reader, split_reader = RequestReader(), RequestReader()
    whole = feed(whole_reader, wire)
    split = feed(split_reader, wire, cuts)
    try:
        assert [kind(e) for e in whole] == ["request"] * len(pipeline)
        assert [summary(e) for e in split] == [summary(e) for e in whole]
        for event, (_, want) in zip(whole, pipeline, strict=True):
            assert event.method == want["method"]
            assert event.target == want["target"]
            assert body_of(event) == want["body"]
            for field in want["fields"]:
                assert field in event.headers
        assert not whole_reader.stopped and not split_reader.stopped
    finally:
        close_bodies(whole + split)


CORPUS = Path(__file__).parent / "corpus"
# Cases whose outcome depends on read boundaries are known bugs (see their .expect files).
SPLIT_STABLE = sorted(
    p
    for p in (CORPUS / "invalid").glob("*.http")
    if "xfail" not in json.loads(p.with_suffix(".expect").read_text())
) + sorted((CORPUS / "valid").glob("*.http"))


@pytest.mark.parametrize("path", SPLIT_STABLE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_case_split_anywhere_parses_the_same(path: Path) -> None:
    raw = path.read_bytes()
    expect = json.loads(path.with_suffix(".expect").read_text())
    limits = limits_for(expect.get("settings", {}))
    whole_events = feed(RequestReader(limits), raw)
    whole = [summary(e) for e in whole_events]
    close_bodies(whole_events)

    @settings(FUZZ, max_examples=25)
    @given(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=10))
    def check(cuts: list[int]) -> None:
        events = feed(RequestReader(limits), raw, cuts)
        try:
            assert [summary(e) for e in events] == whole
        finally:
            close_bodies(events)

    check()


def test_body_is_spooled_in_the_spool_dir(tmp_path: Path) -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024, spool_dir=str(tmp_path)))
    reader.receive_data(post(b"/", b"Content-Length: 5000\r\n", pattern(3000)))
    assert reader.current is not None
    body = reader.current.body
    assert body is not None and rolled(body)
    assert os.readlink(f"/proc/self/fd/{body.fileno()}").startswith(str(tmp_path) + "/")
    reader.receive_eof()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_body_that_cannot_be_spooled_is_refused_naming_the_directory(
    tmp_path: Path, bytewise: bool
) -> None:
    gone = tmp_path / "gone"
    reader = RequestReader(Limits(body_spool_threshold=1024, spool_dir=str(gone)))
    data = post(b"/", b"Content-Length: 5000\r\n", pattern(5000)) + get(b"/")
    events = feed_bytewise(reader, data) if bytewise else feed(reader, data)
    assert events == [
        ProtocolError(503, f"cannot spool the request body to {gone}: No such file or directory")
    ]
    assert ProtocolError(507, "").reason == "Insufficient Storage"
    assert reader.stopped  # nothing after it is read


def test_server_answers_a_body_it_cannot_spool_and_keeps_serving(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    server = InMemoryServer(RecordingApp(), body_spool_threshold=1024, spool_dir=str(gone))
    with logged_errors() as lines:
        conn = server.connect()
        conn.send(post(b"/", b"Content-Length: 5000\r\n", pattern(5000)))
        [response] = parse_responses(conn.output())
        assert response.status == 503
        assert response.closes
        assert conn.closed
    assert [line for line in lines if str(gone) in line] == [
        f"503 to 127.0.0.1: cannot spool the request body to {gone}: No such file or directory"
    ]
    small = server.connect()
    small.send(post(b"/", b"Content-Length: 10\r\n", pattern(10)))
    assert [r.status for r in parse_responses(small.output())] == [200]


# -- malformed request lines: 400; a well-formed method we do not know: 501


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (b"BREW / HTTP/1.1\r\n", 501),
        (b"G@T / HTTP/1.1\r\n", 400),
        (b"BREW\t/ HTTP/1.1\r\n", 400),
        (b" / HTTP/1.1\r\n", 400),
        (b"\x16\x03\x01\x00\xc4", 400),
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_refused_method_after_pipelined_requests_is_judged_on_its_own_bytes(
    first: bytes, status: int, bytewise: bool
) -> None:
    # The good requests ahead of it in the same read must not be mistaken for its start: a
    # POST body of token characters comes right before it.
    wire = get(b"/a") + post(b"/b", b"Content-Length: 3\r\n", b"XYZ") + first + b"Host: x\r\n\r\n"
    events = (feed_bytewise if bytewise else feed)(RequestReader(), wire)
    assert [kind(e) for e in events] == ["request", "request", f"error:{status}"]
    close_bodies(events)


@pytest.mark.parametrize("cut", range(1, 6))
def test_method_cut_across_reads_is_judged_whole(cut: int) -> None:
    # llhttp may take the first bytes of a method it refuses later: those kept from earlier reads
    # are judged with the rest.
    line = b"\r\nBREW / HTTP/1.1\r\nHost: x\r\n\r\n"
    reader = RequestReader()
    reader.receive_data(line[:cut])
    reader.receive_data(line[cut:])
    assert [kind(e) for e in drain(reader)] == ["error:501"]


def test_refused_method_waits_for_the_byte_after_the_token() -> None:
    reader = RequestReader()
    reader.receive_data(b"BRE")
    assert reader.next_event() is None
    assert reader.in_headers  # the header timeout applies while the verdict waits
    reader.receive_data(b"W")
    assert reader.next_event() is None
    reader.receive_data(b"\t")
    assert [kind(e) for e in drain(reader)] == ["error:400"]


def test_refused_method_cut_short_is_dropped() -> None:
    reader = RequestReader()
    reader.receive_data(b"BREW")
    reader.receive_eof()
    assert reader.next_event() is None
    assert reader.stopped


def test_endless_token_is_malformed() -> None:
    reader = RequestReader(Limits(max_request_line=100))
    reader.receive_data(b"X" * 50)
    assert reader.next_event() is None
    reader.receive_data(b"X" * 60)
    assert [kind(e) for e in drain(reader)] == ["error:400"]


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (b"GET / HTTP/0.9\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"GET /\r\nA: HTTP/0.8\r\n\r\n", 400),
    ],
)
@pytest.mark.parametrize("cut", [0, 3, 8, 12, 14, 15, 16])
def test_version_spelled_09_is_unsupported_and_missing_is_malformed(
    wire: bytes, status: int, cut: int
) -> None:
    reader = RequestReader()
    if cut:
        reader.receive_data(wire[:cut])
    reader.receive_data(wire[cut:])
    assert [kind(e) for e in drain(reader)] == [f"error:{status}"]


# -- chunk extensions with optional whitespace (RFC 9112 7.1.1)


@pytest.mark.parametrize(
    "line",
    [
        b"5; a=b",
        b"5 ;a = b",
        b'5\t;\ta\t=\t"q ; \\" "',
        b"5;a;b=c ; d",
        b"5;a=b",
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_chunk_extension_whitespace_is_accepted(line: bytes, bytewise: bool) -> None:
    wire = post(b"/", b"Transfer-Encoding: chunked\r\n", line + b"\r\nhello\r\n0\r\n\r\n")
    events = (feed_bytewise if bytewise else feed)(RequestReader(), wire + SECOND)
    assert [kind(e) for e in events] == ["request", "request"]
    assert isinstance(events[0], Request)
    assert body_of(events[0]) == b"hello"
    close_bodies(events)


@pytest.mark.parametrize(
    "line", [b"5 ", b" 5", b"5 ; ", b"5;a =", b"5;a=b ", b"5;\x0ba", b"5 a", b'5;a="x', b"5;a b"]
)
def test_chunk_line_stays_strict_otherwise(line: bytes) -> None:
    wire = post(b"/", b"Transfer-Encoding: chunked\r\n", line + b"\r\nhello\r\n0\r\n\r\n")
    assert [kind(e) for e in feed(RequestReader(), wire)] == ["error:400"]


def test_chunk_line_limit_counts_a_line_read_in_pieces() -> None:
    reader = RequestReader(Limits(max_chunk_line=20))
    reader.receive_data(post(b"/", b"Transfer-Encoding: chunked\r\n", b"5;a=" + b"b" * 10))
    assert reader.next_event() is None
    reader.receive_data(b"b" * 10)
    assert [kind(e) for e in drain(reader)] == ["error:400"]


# -- Content-Length bodies taken from the read buffer, without llhttp


def test_body_in_a_reused_buffer_is_copied_before_the_buffer_is_reused() -> None:
    reader = RequestReader()
    reader.receive_data(post(b"/", b"Content-Length: 10\r\n", b""))
    buffer = bytearray(b"01234")
    reader.receive_data(memoryview(buffer))
    buffer[:] = b"xxxxx"
    tail = bytearray(b"56789" + SECOND)
    reader.receive_data(memoryview(tail))
    tail[:] = b"y" * len(tail)
    events = drain(reader)
    assert [kind(e) for e in events] == ["request", "request"]
    assert body_of(events[0]) == b"0123456789"
    assert events[1].target == b"/second"
    close_bodies(events)


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_a_fresh_parser_reads_what_follows_a_body_taken_directly(pieces: int) -> None:
    body = bytes(range(256)) * 40
    reader = RequestReader(Limits(body_spool_threshold=1000))
    reader.receive_data(post(b"/up", b"Content-Length: %d\r\n" % len(body), b""))
    step = len(body) // pieces + 1
    for i in range(0, len(body), step):
        reader.receive_data(body[i : i + step])
    reader.receive_data(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    events = drain(reader)
    assert [e.target for e in events] == [b"/up", b"/after"]
    assert body_of(events[0]) == body and events[0].body_length == len(body)
    assert reader.stopped and reader.completed_requests == 2
    close_bodies(events)


def _receive_piece(reader: RequestReader, data: bytes) -> int:
    """As the channel's recv: at most the bytes the body asks for, handed over as they are."""
    room = reader.body_room
    assert room > 0
    reader.received_piece(data[:room])
    return min(room, len(data))


@pytest.mark.parametrize("into", [False, True], ids=["from-a-buffer", "received-piece"])
def test_a_body_taken_directly_reports_progress_and_completion(into: bool) -> None:
    seen: list[tuple[str, int]] = []

    class Watcher:
        def started(self, request: Request) -> None:
            seen.append(("started", 0))

        def progress(self, request: Request, received: int) -> None:
            seen.append(("progress", received))

        def finished(self, request: Request) -> None:
            seen.append(("finished", request.body_length))

        def failed(self, request: Request, status: int | None) -> None:
            seen.append(("failed", status or 0))

    reader = RequestReader(watcher=Watcher())
    reader.receive_data(post(b"/?X-Progress-ID=abc", b"Content-Length: 6\r\n", b""))
    for piece in (b"abc", b"def"):  # from the read buffer, or read for the body by the caller
        if into:
            _receive_piece(reader, piece)
        else:
            reader.receive_data(memoryview(piece))
    assert seen == [("started", 0), ("progress", 3), ("progress", 6), ("finished", 6)]
    close_bodies(drain(reader))


@pytest.mark.parametrize("pieces", [1, 2, 5])
def test_a_body_in_memory_is_read_in_the_pieces_it_asks_for(pieces: int) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: four 64 KiB pieces
    reader = RequestReader(Limits(body_spool_threshold=len(body)))
    assert reader.body_room == 0  # no request yet
    reader.receive_data(post(b"/up", b"Content-Length: %d\r\n" % len(body), body[:100]))
    assert reader.body_room == PIECE - 100  # what completes the first piece
    step = PIECE // pieces + 1
    pos = 100
    kept: list[bytes] = []
    while pos < len(body):
        room = reader.body_room
        assert 0 < room <= PIECE and (pos + room) % PIECE in (0, len(body) % PIECE)
        piece = body[pos : pos + min(room, step)]
        kept.append(piece)
        pos += _receive_piece(reader, piece)
    assert reader.body_room == 0  # complete
    reader.receive_data(get(b"/after"))
    events = drain(reader)
    assert [e.target for e in events] == [b"/up", b"/after"]
    request_body = events[0].body
    assert isinstance(request_body, MemoryBody)
    for i in range(1, len(body) // PIECE):  # whole pieces read as whole reads: not copied
        request_body.seek(i * PIECE)
        got = request_body.read(PIECE)
        assert got == body[i * PIECE : (i + 1) * PIECE]
        assert (pieces == 1) == any(got is k for k in kept)
    request_body.seek(0)
    assert body_of(events[0]) == body
    close_bodies(events)


@pytest.mark.parametrize(
    "head",
    [b"Transfer-Encoding: chunked\r\n", b"Content-Length: 2000\r\n"],
    ids=["chunked", "over-threshold"],
)
def test_no_body_pieces_for_a_chunked_or_spooled_body(head: bytes) -> None:
    reader = RequestReader(Limits(body_spool_threshold=1024))
    reader.receive_data(post(b"/", head, b""))
    assert reader.in_body and reader.body_room == 0


def test_a_body_in_memory_cut_short_can_be_closed() -> None:
    reader = RequestReader()
    reader.receive_data(post(b"/", b"Content-Length: 10\r\n", b""))
    _receive_piece(reader, b"0123")
    request = reader.current
    assert request is not None and request.body is not None
    reader.receive_eof()
    assert request.body.closed and reader.body_room == 0


def test_a_small_request_with_its_body_in_one_read_fills_the_memory_body() -> None:
    # A read small enough to go to llhttp whole: llhttp hands the body over (on_body).
    [request] = feed(RequestReader(), post(b"/", b"Content-Length: 5\r\n", b"hello"))
    assert isinstance(request.body, MemoryBody) and body_of(request) == b"hello"
    request.body.close()


@pytest.mark.parametrize("before", [0, 1, 2])
def test_chunked_request_behind_others_in_one_small_read_is_read_in_slices(before: int) -> None:
    # The whole read goes to llhttp at once until a chunked head appears; then the read is fed
    # again from where that request starts, whatever came before it in the read.
    chunked = post(b"/c", b"Transfer-Encoding: chunked\r\n", b"5 ; a = b\r\nhello\r\n0\r\n\r\n")
    wire = get(b"/a") * before + chunked + get(b"/z")
    events = feed(RequestReader(), wire)
    assert [e.target for e in events] == [b"/a"] * before + [b"/c", b"/z"]
    assert body_of(events[before]) == b"hello"
    close_bodies(events)


def test_large_read_with_heads_and_bodies_in_a_reused_buffer() -> None:
    # A 1 MiB read can hold the end of one body, the next request's head and most of its body.
    first, second = pattern(300_000), pattern(500_000)
    wire = post(b"/1", b"Content-Length: %d\r\n" % len(first), first)
    wire += post(b"/2", b"Content-Length: %d\r\n" % len(second), second) + SECOND
    reader = RequestReader(Limits(body_spool_threshold=100_000))
    buffer = bytearray(wire)
    reader.receive_data(memoryview(buffer)[:1000])
    reader.receive_data(memoryview(buffer)[1000:])
    buffer[:] = bytes(len(buffer))
    events = drain(reader)
    assert [e.target for e in events] == [b"/1", b"/2", b"/second"]
    assert body_of(events[0]) == first and body_of(events[1]) == second
    close_bodies(events)
