"""Helpers for the HTTP engine tests: a recording WSGI app, a strict response parser, feeding
helpers for a bare :class:`RequestReader`, and a capture of logged errors."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from catalyzer.http.reader import Limits, ProtocolError, Request, RequestReader, SendContinue

SECOND = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"

# Any of these in what the server writes means internals leaked to the client.
LEAK_MARKERS = (b"Traceback", b"Exception", b"Error:", b"HttpParser", b"httptools", b'File "')

STATUS_LINE = re.compile(rb"HTTP/1\.[01] \d{3} ")


# -- the application side


@dataclass
class Call:
    method: str
    path: str
    query: str
    body: bytes
    environ: dict[str, Any]


class RecordingApp:
    """A WSGI app that reads the whole body and records what it saw. Answers ``200`` with
    ``ok``, a body that cannot be mistaken for a status line."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        self.calls.append(
            Call(
                environ["REQUEST_METHOD"],
                environ["PATH_INFO"],
                environ["QUERY_STRING"],
                body,
                {k: v for k, v in environ.items() if isinstance(v, str)},
            )
        )
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.calls]


# -- the client side: parsing what the server wrote


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        return ",".join(values) if values else None

    @property
    def closes(self) -> bool:
        value = self.header("connection") or ""
        return "close" in [t.strip().lower() for t in value.split(",")]


def parse_responses(data: bytes, head_requests: int = 0) -> list[Response]:
    """Every response in ``data``, interim ones included. Fails on anything malformed.

    ``head_requests``: how many of the leading final responses answer HEAD (no body)."""
    responses: list[Response] = []
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"unterminated response head: {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        m = re.fullmatch(r"HTTP/1\.1 (\d{3}) (.*)", lines[0])
        assert m, f"not a status line: {lines[0]!r}"
        response = Response(int(m.group(1)), m.group(2))
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"malformed header line {line!r}"
            response.headers.append((name.lower(), value.strip()))
        responses.append(response)
        if response.status < 200:
            continue
        if head_requests > 0:
            head_requests -= 1
            continue
        length = response.header("content-length")
        if response.header("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                assert sep, "unterminated chunk-size line"
                size = int(size_line, 16)
                if size == 0:
                    assert rest.startswith(b"\r\n"), "missing end of chunked body"
                    rest = rest[2:]
                    break
                body += rest[:size]
                assert rest[size : size + 2] == b"\r\n", "chunk data not followed by CRLF"
                rest = rest[size + 2 :]
            response.body = body
        elif length is not None:
            n = int(length)
            assert len(rest) >= n, f"body shorter than Content-Length {n}"
            response.body, rest = rest[:n], rest[n:]
        else:
            response.body, rest = rest, b""
    return responses


def status_line_count(data: bytes) -> int:
    return len(STATUS_LINE.findall(data))


def assert_no_leak(data: bytes) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in data, f"{marker!r} in the output: {data[:500]!r}"


# -- the bare reader


def limits_for(settings: dict[str, Any]) -> Limits:
    """The :class:`Limits` an InMemoryServer with ``settings`` would give its readers."""
    known = set(Limits.__dataclass_fields__)
    return Limits(**{k: v for k, v in settings.items() if k in known})


def drain(reader: RequestReader) -> list[Request | ProtocolError | SendContinue]:
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def feed(reader: RequestReader, data: bytes, pieces: list[int] | None = None) -> list[Any]:
    """Feed ``data`` whole, or cut at the offsets in ``pieces``; return every event, in order,
    taking them after each feed as a server would."""
    events: list[Any] = []
    cuts = [0, *sorted(set(pieces or [])), len(data)]
    for a, b in itertools.pairwise(cuts):
        if a < b:
            reader.receive_data(data[a:b])
            events += drain(reader)
    return events


def feed_bytewise(reader: RequestReader, data: bytes) -> list[Any]:
    return feed(reader, data, list(range(1, len(data))))


def kind(event: object) -> str:
    """``"request"``, ``"continue"`` or ``"error:STATUS"``."""
    if isinstance(event, Request):
        return "request"
    if isinstance(event, SendContinue):
        return "continue"
    if isinstance(event, ProtocolError):
        return f"error:{event.status}"
    raise AssertionError(f"unexpected event {event!r}")


def summary(event: object) -> tuple[Any, ...]:
    """What a request event carries, comparable across feeds."""
    if isinstance(event, Request):
        body = b""
        if event.body is not None:
            position = event.body.tell()
            body = event.body.read()
            event.body.seek(position)
        return (
            "request",
            event.method,
            event.target,
            event.version,
            tuple(event.headers),
            event.host,
            event.content_length,
            event.chunked,
            event.keep_alive,
            event.expect_continue,
            body,
        )
    if isinstance(event, ProtocolError):
        return ("error", event.status)
    return (kind(event),)


def close_bodies(events: list[Any]) -> None:
    for event in events:
        if isinstance(event, Request) and event.body is not None:
            event.body.close()


# -- logging


@contextmanager
def logged_errors() -> Iterator[list[str]]:
    """Collects log events at error level or above, and any logged failure, while active."""
    found: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        if failure is not None or level in (LogLevel.error, LogLevel.critical):
            text = formatEvent(event)
            if failure is not None:
                text += "\n" + failure.getTraceback()
            found.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        yield found
    finally:
        globalLogPublisher.removeObserver(observe)
