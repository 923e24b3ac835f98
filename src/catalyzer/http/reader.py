"""The request side of an HTTP/1.1 connection, without sockets: bytes in, events out.

httptools (llhttp) tokenises and already refuses most malformed framing (Content-Length with
Transfer-Encoding, duplicate or non-decimal Content-Length, bad chunk sizes, bare CR/LF, obs-fold,
invalid tokens, control bytes in values). This layer adds what llhttp leaves to the server: size
limits, Host rules, the version policy, the Transfer-Encoding policy, ``Expect``, a body spooled to
memory or a temporary file, and strict ordering of what the connection must do next.

Usage::

    conn = RequestReader(limits)
    conn.receive_data(data)
    while (event := conn.next_event()) is not None:
        ...  # Request, SendContinue or ProtocolError, in the order they must be acted on

After a :class:`ProtocolError`, or a request after which the connection must close, nothing more is
read: a second request can never be smuggled behind a bad or final one.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from dataclasses import dataclass
from typing import IO, Final, Protocol

import httptools

from catalyzer.http.progress import upload_id_from
from catalyzer.http.spool import MemoryBody, body_file, spool_failure

__all__ = [
    "Limits",
    "ProtocolError",
    "Request",
    "RequestReader",
    "SendContinue",
]

STATUS_REASONS: Final = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}


@dataclass(frozen=True)
class Limits:
    max_request_line: int = 8190
    max_headers: int = 100
    max_header_bytes: int = 65536
    max_body: int = 1024**3
    max_chunk_line: int = 4096
    body_spool_threshold: int = 1024**2
    # Where bodies past body_spool_threshold are spooled; None: the system's temporary directory.
    spool_dir: str | None = None


class Request:
    """One complete request. ``body`` is positioned at 0 and holds exactly the decoded body."""

    __slots__ = (
        "body",
        "body_length",
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "upload_id",
        "version",
    )

    def __init__(self) -> None:
        self.method = "GET"
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.upgrade = False
        self.body: IO[bytes] | MemoryBody | None = None
        self.body_length = 0
        # Set for a request with a body and an X-Progress-ID, when a BodyWatcher is in use.
        self.upload_id: str | None = None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} HTTP/{self.version}>"


@dataclass(frozen=True)
class ProtocolError:
    """The request cannot be served: answer ``status`` and close. ``detail`` is for the log."""

    status: int
    detail: str

    @property
    def reason(self) -> str:
        return STATUS_REASONS.get(self.status, "Bad Request")


@dataclass(frozen=True)
class SendContinue:
    """The request at the head of the queue waits for ``100 Continue`` before sending its body."""


SEND_CONTINUE: Final = SendContinue()

Event = Request | ProtocolError | SendContinue


class BodyWatcher(Protocol):
    """Told about the bodies of requests that carry an upload id (upload progress)."""

    def started(self, request: Request) -> None: ...

    def progress(self, request: Request, received: int) -> None: ...

    def finished(self, request: Request) -> None: ...

    def failed(self, request: Request, status: int | None) -> None:
        """``status`` is the error answered, or None when the client went away."""


class _Reject(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Reslice(Exception):
    """Raised from a callback to stop llhttp at a chunked request's head in a read fed whole."""


_RESLICE: Final = _Reslice()

_SLICE: Final = 1024
# Stands in for a closed reader's parser; never fed (a stopped reader ignores data).
_CLOSED_PARSER: Final = httptools.HttpRequestParser(object())
# A read given as a memoryview is copied to bytes (for llhttp and find) this much at a time.
_VIEW_PIECE: Final = 65536

# Phases whose bytes llhttp or httptools buffer without a callback telling us how many.
_IDLE, _HEAD, _BODY, _CHUNK_LINE = range(4)

_ALLOWED_VERSIONS: Final = frozenset(("1.1", "1.0"))
# RFC 9110 5.6.2.
_TCHAR: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# A method llhttp has not refused yet is a prefix of one it knows: never longer than this.
_METHOD_CARRY: Final = 64
# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ).
# llhttp refuses the BWS; a line that matches this with it reaches llhttp without its extensions
# (which are ignored anyway), and any other line reaches it unchanged, for llhttp to judge.
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE_WITH_EXT: Final = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*"
    + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)+\r\n"
)
# The bytes a Host header may hold: a value is valid when stripping them leaves nothing (one C
# call; building a set of the value and comparing it cost four times as long).
_HOST_CHARS: Final = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+;=:[]%"
)


class RequestReader:
    """Parses one connection's incoming bytes into :data:`Event` objects.

    A ``watcher`` is told how the bodies of requests carrying an upload id arrive.
    """

    def __init__(self, limits: Limits = Limits(), watcher: BodyWatcher | None = None) -> None:
        self.limits = limits
        self._watcher = watcher
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Event] = deque()
        self._request: Request | None = None
        self._phase = _IDLE
        self._phase_bytes = 0
        self._head_limit = limits.max_header_bytes + limits.max_request_line
        self._small = min(self._head_limit, limits.max_chunk_line)
        self._url_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        # "HTTP/0.9" was seen in the request line, read in pieces.
        self._spelled_09 = False
        self._version_tail = b""
        self._plain_head = True  # no Connection or Upgrade header so far
        # Set once nothing more may be read: after an error or a connection-closing request.
        self._stopped = False
        # The bytes of a method llhttp has accepted so far, while a read ends inside it.
        self._method_carry = b""
        # Set when llhttp refused a method and more bytes must say whether it was well formed.
        self._judging: bytearray | None = None
        # A chunk-size line read so far: it goes to llhttp whole, once its line end is in.
        self._chunk_line = b""
        # The read being fed whole (see _feed_whole), None otherwise.
        self._whole: bytes | None = None
        # A Content-Length body kept in memory while it arrives, by this reader or by the
        # caller's reads (body_room).
        self._memory: MemoryBody | None = None
        self.completed_requests = 0

    # -- public

    @property
    def stopped(self) -> bool:
        """True once the connection will read no further request."""
        return self._stopped

    @property
    def queued(self) -> int:
        """Complete requests waiting to be taken with :meth:`next_event`."""
        if not self._events:  # asked of every open connection at max-connections
            return 0
        return sum(1 for e in self._events if isinstance(e, Request))

    @property
    def in_headers(self) -> bool:
        """A request has begun and its header section is not complete yet."""
        return self._phase == _HEAD

    @property
    def in_body(self) -> bool:
        """A request's headers are complete and its body is still arriving."""
        return self._phase in (_BODY, _CHUNK_LINE)

    @property
    def body_room(self) -> int:
        """While a Content-Length body kept in memory arrives: how many bytes the caller's next
        read should ask for (a ``recv`` of its own), to give to :meth:`received_piece`; 0 for
        any other input. The reads then are the body's pieces (spool.MemoryBody): no copy out
        of a read buffer, none out of the body for an app reading it 64 KiB at a time."""
        memory = self._memory
        return memory.room if memory is not None else 0

    def received_piece(self, data: bytes) -> None:
        """``data``, read for the body as :attr:`body_room` asked (at most that much), arrived."""
        request = self._request
        memory = self._memory
        assert request is not None and memory is not None
        memory.add(data)
        self._body_arrived(request, len(data))

    @property
    def between_requests(self) -> bool:
        """Nothing of a next request has been read, nothing waits to be taken, more may come."""
        return self._phase == _IDLE and not self._events and not self._stopped

    @property
    def current(self) -> Request | None:
        """The request whose bytes are being read, if any."""
        return self._request

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive_data(self, data: bytes | memoryview) -> None:
        """Takes one read. A ``memoryview`` (of a reused buffer) is not kept: the bytes of a
        Content-Length body go from it straight to the body file, the rest is copied."""
        if self._stopped or not data:
            return
        if self._phase == _BODY and self._judging is None:
            request = self._request
            if request is not None and not request.chunked and request.body is not None:
                taken = self._take_body(request, data)
                if taken == len(data) or self._stopped:
                    return
                data = data[taken:]
        if type(data) is not bytes:
            if len(data) > _VIEW_PIECE:
                # A large read that starts with a head: copy no more of it than may be head
                # before a Content-Length body begins, the rest goes to the body file from the view.
                self.receive_data(bytes(data[:_VIEW_PIECE]))
                self.receive_data(data[_VIEW_PIECE:])
                return
            data = bytes(data)
        if self._judging is not None:
            self._judge_more(data)
            return
        if self._phase == _IDLE and len(data) <= self._small:
            self._feed_whole(data)
        else:
            self._feed_sliced(data)

    def _feed_whole(self, data: bytes) -> None:
        # The common case: a read too small for any header section in it to break a limit.
        # Chunk-size lines must be read whole first (see _read_chunk_line): a chunked request's
        # head stops the feed (on_headers_complete), and the read is fed again in slices.
        self._whole = data
        self._feed(data)
        if self._feeding_whole():
            self._whole = None
            self._after_small_read(data)

    def _feeding_whole(self) -> bool:
        # A call, not a test of self._whole inline: mypy (and so mypyc) would keep the type
        # narrowed by the assignment above across _feed, which may clear it (_reslice).
        return self._whole is not None

    def _feed_sliced(self, data: bytes, whole_after: int = 0) -> None:
        """``data`` fed in slices; at the end, a rest that fits in a small read is fed whole, once
        ``completed_requests`` has reached ``whole_after``."""
        # llhttp does not say where in the input a phase begins, so the input is cut after
        # every line end (and every _SLICE bytes): each request line, header line and chunk-size
        # line then starts a slice, and limits are checked exactly before the bytes go in. A
        # Content-Length body goes through in one piece, sized exactly.
        size = len(data)
        view = memoryview(data)
        find = data.find
        pos = 0
        while pos < size and not self._stopped:
            phase = self._phase
            request = self._request
            if phase == _BODY and request is not None and not request.chunked:
                if request.body is not None:
                    pos += self._take_body(request, view[pos:])
                    continue
                end = pos + 1
            elif phase == _CHUNK_LINE:
                pos = self._read_chunk_line(data, pos)
                continue
            elif (
                phase == _IDLE
                and size - pos <= self._small
                and self.completed_requests >= whole_after
            ):
                self._feed_whole(data[pos:])
                return
            else:
                nl = find(b"\n", pos, pos + _SLICE)
                end = nl + 1 if nl >= 0 else pos + _SLICE
            n = min(end, size) - pos
            if phase == _IDLE:
                self._phase_bytes = 0
            if phase in (_IDLE, _HEAD) and self._phase_bytes + n > self._head_limit:
                self._fail(431, "header section too large")
                return
            self._phase_bytes += n
            self._feed(view[pos : pos + n])
            pos += n
            if self._phase != phase and not (phase == _IDLE and self._phase == _HEAD):
                self._phase_bytes = 0
            if self._phase == _HEAD and data[pos - 1] == 10:  # a line ended
                self._check_version()

    def _reslice(self, data: bytes, completed: int) -> None:
        """A chunked request's head ended inside a read fed whole: feed that read again from
        where the request began, in slices, with a fresh parser (nothing of the request was
        acted on yet)."""
        self._whole = None
        done = self.completed_requests - completed
        start = _message_start(data, done) if done else 0
        self._parser = httptools.HttpRequestParser(self)
        self._request = None
        self._phase = _IDLE
        self._feed_sliced(data[start:], whole_after=self.completed_requests + 1)

    def _take_body(self, request: Request, data: bytes | memoryview) -> int:
        """Writes the next bytes of a Content-Length body from ``data`` to its file, without
        llhttp (which would hand them over as a new ``bytes``); returns how many were taken.

        llhttp never sees the rest of this body: once it is complete, a fresh parser reads the
        next request (the request's head, all llhttp was needed for, is read already)."""
        assert request.body is not None and request.content_length is not None
        n = min(len(data), request.content_length - request.body_length)
        memory = self._memory
        if memory is not None:
            memory.add(data[:n] if n < len(data) else data)
        else:
            assert not isinstance(request.body, MemoryBody)
            try:
                request.body.write(data[:n] if n < len(data) else data)
            except OSError as e:
                request.body_length += n
                reject = self._spool_failed(e)
                self._fail(reject.status, reject.detail)
                return n
        self._body_arrived(request, n)
        return n

    def _body_arrived(self, request: Request, n: int) -> None:
        """``n`` more bytes of a Content-Length body are in its file."""
        request.body_length += n
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.progress(request, request.body_length)
        if request.body_length == request.content_length:
            self._memory = None
            self._parser = httptools.HttpRequestParser(self)
            try:
                self.on_message_complete()
            except _Reject as e:
                self._fail(e.status, e.detail)

    def _read_chunk_line(self, data: bytes, pos: int) -> int:
        """Takes a chunk-size line's bytes from ``data[pos:]``; returns where they end."""
        nl = data.find(b"\n", pos)
        end = nl + 1 if nl >= 0 else len(data)
        if len(self._chunk_line) + end - pos > self.limits.max_chunk_line:
            self._fail(400, "chunk-size line too long")
            return len(data)
        line = self._chunk_line + data[pos:end]
        if nl < 0:
            self._chunk_line = line
            return end
        self._chunk_line = b""
        if b";" in line and (m := _CHUNK_LINE_WITH_EXT.fullmatch(line)) is not None:
            line = m[1] + b"\r\n"
        self._feed(line)
        return end

    def _after_small_read(self, data: bytes) -> None:
        if self._phase == _HEAD:
            # Over-counts by what preceded the message in this read: at most one small read.
            self._phase_bytes = len(data)
            if data[-1:] == b"\n":
                self._check_version()

    def _check_version(self) -> None:
        if self._header_count == 0:
            version = self._parser.get_http_version()
            if version == "0.0":
                # "GET /" with no version: llhttp would wait for headers that never come. A
                # request line without a version is malformed (no HTTP/0.9 spoken here).
                self._fail(400, "request line without an HTTP version")

    def _feed(self, data: bytes | memoryview) -> None:
        phase = self._phase
        completed = self.completed_requests
        reslice = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            if not self._stopped:
                self._bad_method(bytes(data), phase, completed)
            return
        except httptools.HttpParserUpgrade:
            # llhttp stops at the end of an Upgrade or CONNECT request. The request was queued by
            # on_message_complete; a WSGI server does not switch protocols, so it is the last one.
            self._stop()
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if cause is not _RESLICE:
                if isinstance(cause, _Reject):
                    self._fail(cause.status, cause.detail)
                elif not self._stopped:
                    raise
                return
            reslice = True
        except httptools.HttpParserError as e:
            if not self._stopped:
                self._fail(self._status_for(e), _describe(e))
            return
        if reslice:
            # Outside the except clause: what the new feed raises is not chained to this.
            self._reslice(bytes(data), completed)
            return
        if self._phase == _HEAD and not self._stopped:
            self._ended_in_head(data, phase)

    def _ended_in_head(self, data: bytes | memoryview, phase: int) -> None:
        if self._header_count == 0:
            # A read ended in the request line (or the first header): llhttp says version 0.9
            # both for "HTTP/0.9" and for no version at all, so the bytes tell them apart.
            seen = self._version_tail + bytes(data)
            self._spelled_09 = self._spelled_09 or b"HTTP/0.9" in seen
            self._version_tail = seen[-8:]
        if self._url_bytes == 0:
            # The read ended inside a method (or just after it): keep what llhttp took of it, in
            # case the bytes that follow make llhttp refuse it.
            run = _tchar_tail(data)
            if run == len(data) and phase == _HEAD:
                self._method_carry = (self._method_carry + bytes(data))[-_METHOD_CARRY:]
            else:
                self._method_carry = bytes(data[len(data) - run :])[-_METHOD_CARRY:]

    def _bad_method(self, data: bytes, phase: int, completed: int) -> None:
        """llhttp refused a method: 501 if it is a well-formed one we do not know, else 400."""
        if phase != _IDLE:
            line = self._method_carry + data
        elif self.completed_requests == completed:
            line = data
        else:
            line = data[_message_start(data, self.completed_requests - completed) :]
        self._method_carry = b""
        self._judging = bytearray()
        # A request with a refused method has begun: the header timeout applies to it.
        self._phase = _HEAD
        self._judge_more(line)

    def _judge_more(self, data: bytes) -> None:
        assert self._judging is not None
        self._judging += data
        verdict = _method_verdict(self._judging)
        if verdict is None and len(self._judging) > self.limits.max_request_line:
            verdict = 400
        if verdict is not None:
            method = bytes(self._judging.lstrip(b"\r\n")[:40])
            self._judging = None
            detail = "not implemented" if verdict == 501 else "malformed request line, method"
            self._fail(verdict, f"{detail} {method!r}")

    def receive_eof(self) -> None:
        """The peer finished sending. A request cut short is dropped: nobody is left to answer."""
        self._stop()

    def close(self) -> None:
        """The connection is gone: as :meth:`receive_eof`, and the parser is let go. It holds this
        reader's methods as its callbacks, a cycle that only the garbage collector would free."""
        self._stop()
        self._parser = _CLOSED_PARSER

    def fail(self, status: int, detail: str) -> None:
        """End reading with an error decided outside the parser (a timeout, for instance)."""
        if not self._stopped:
            self._fail(status, detail)

    # -- internals

    def _stop(self, status: int | None = None) -> None:
        self._stopped = True
        self._memory = None
        request = self._request
        if self._phase != _IDLE and request is not None:
            if request.upload_id is not None and self._watcher is not None:
                self._watcher.failed(request, status)
            if request.body is not None:
                # A spool file that could not be written fails its last flush again: the
                # descriptor is closed all the same, and the error was answered already.
                with contextlib.suppress(OSError):
                    request.body.close()
        self._request = None
        self._phase = _IDLE
        self._judging = None
        self._chunk_line = b""

    def _fail(self, status: int, detail: str) -> None:
        self._stop(status)
        self._events.append(ProtocolError(status, detail))

    def _status_for(self, e: httptools.HttpParserError) -> int:
        text = str(e)
        if text == "Invalid HTTP version" or "PRI" in text:
            # "HTTP/1.2" and the HTTP/2 preface are versions we do not speak; anything else
            # wrong around the version is a malformed request line.
            return 505
        if "Content-Length overflow" in text:
            return 413
        return 400

    def _spool_failed(self, e: OSError) -> _Reject:
        return _Reject(*spool_failure(e, self.limits.spool_dir))

    def _enter(self, phase: int) -> None:
        self._phase = phase

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._request = Request()
        self._url_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._spelled_09 = False
        self._version_tail = b""
        self._plain_head = True  # no Connection or Upgrade header so far
        self._enter(_HEAD)

    def on_url(self, piece: bytes) -> None:
        assert self._request is not None
        self._url_bytes += len(piece)
        if self._url_bytes > self.limits.max_request_line:
            raise _Reject(414, f"request target longer than {self.limits.max_request_line} bytes")
        self._request.target += piece

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise _Reject(431, f"more than {self.limits.max_headers} header fields")
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, f"header fields larger than {self.limits.max_header_bytes} bytes")
        if self._phase != _HEAD:
            return  # a trailer field: counted against the limits, not given to the app
        value = value.strip(b" \t")
        request.headers.append((name, value))
        lname = name.lower()
        if lname == b"host":
            if request.host is not None:
                raise _Reject(400, "more than one Host header")
            if value.lstrip(_HOST_CHARS):
                raise _Reject(400, "malformed Host header")
            request.host = value
        elif lname == b"transfer-encoding":
            codings = [c.strip(b" \t").lower() for c in value.split(b",")]
            if (
                request.chunked
                or codings.count(b"chunked") > 1
                or (b"chunked" in codings and codings[-1] != b"chunked")
            ):
                raise _Reject(400, "Transfer-Encoding must end in a single 'chunked'")
            if codings != [b"chunked"]:
                raise _Reject(501, f"unsupported transfer coding {value!r}")
            request.chunked = True
        elif lname == b"content-length":
            # llhttp has already refused signs, lists, spaces, duplicates and overflow.
            request.content_length = int(value)
        elif lname == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417, f"unsupported expectation {value!r}")
            request.expect_continue = True
        elif lname in {b"connection", b"upgrade"}:
            self._plain_head = False

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        if request.chunked and self._whole is not None:
            raise _RESLICE
        parser = self._parser
        # Without a Connection header llhttp keeps only an HTTP/1.1 connection alive (1.0 needs
        # "Connection: keep-alive"), and without an Upgrade header no request but CONNECT
        # (refused below) asks to switch: such a head keeps Request's defaults (1.1, keep-alive,
        # no upgrade), known from one parser call instead of three (get_http_version formats a
        # new str each time).
        if not (self._plain_head and parser.should_keep_alive()):
            version = parser.get_http_version()
            if version == "0.9" and not (self._spelled_09 or b"HTTP/0.9" in (self._whole or b"")):
                # llhttp reads a request line without a version as HTTP/0.9: it is malformed.
                raise _Reject(400, "request line without an HTTP version")
            if version not in _ALLOWED_VERSIONS:
                raise _Reject(505, f"HTTP/{version} is not supported")
            request.version = version
            request.upgrade = parser.should_upgrade()
            # We never switch protocols, and llhttp reads nothing after an upgrade request.
            request.keep_alive = parser.should_keep_alive() and not request.upgrade
        request.method = parser.get_method().decode("ascii")
        if request.method == "CONNECT":
            raise _Reject(501, "CONNECT is not supported")
        if request.version == "1.1":
            if request.host is None:
                raise _Reject(400, "HTTP/1.1 request without Host")
        else:
            if request.chunked:
                raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
            request.expect_continue = False  # RFC 9110 10.1.1: ignored for HTTP/1.0
        length = request.content_length
        has_body = request.chunked or bool(length)
        if has_body and self._watcher is not None:
            request.upload_id = upload_id_from(request.target, request.headers)
            if request.upload_id is not None:
                self._watcher.started(request)
        if length is not None and length > self.limits.max_body:
            raise _Reject(413, f"declared body of {length} bytes exceeds {self.limits.max_body}")
        if request.upgrade and has_body:
            raise _Reject(400, "Upgrade request with a body is not supported")
        if not has_body:
            request.expect_continue = False
            self._enter(_BODY)
            return
        if (
            not request.chunked
            and length is not None
            and length <= self.limits.body_spool_threshold
        ):
            request.body = self._memory = MemoryBody(length)
        else:
            request.body = body_file(
                length, self.limits.body_spool_threshold, self.limits.spool_dir
            )
        if request.expect_continue:
            self._events.append(SEND_CONTINUE)
        self._enter(_CHUNK_LINE if request.chunked else _BODY)

    def on_body(self, data: bytes) -> None:
        request = self._request
        assert request is not None and request.body is not None
        request.body_length += len(data)
        if request.body_length > self.limits.max_body:
            raise _Reject(413, f"body exceeds {self.limits.max_body} bytes")
        memory = self._memory
        if memory is not None:  # a Content-Length body that came in a read fed whole
            memory.add(data)
        else:
            assert not isinstance(request.body, MemoryBody)
            try:
                request.body.write(data)
            except OSError as e:
                raise self._spool_failed(e) from None
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.progress(request, request.body_length)

    def on_chunk_header(self) -> None:
        self._enter(_BODY)

    def on_chunk_complete(self) -> None:
        self._enter(_CHUNK_LINE)

    def on_message_complete(self) -> None:
        self._memory = None
        request = self._request
        assert request is not None
        if request.body is not None:
            try:
                request.body.seek(0)  # flushes what a spooled file still buffers
            except OSError as e:
                raise self._spool_failed(e) from None
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.finished(request)
        self._request = None
        self._phase = _IDLE
        self.completed_requests += 1
        self._events.append(request)
        if not request.keep_alive or request.upgrade:
            # Whatever follows is not read: llhttp would refuse it as data after close anyway.
            self._stopped = True


def _tchar_tail(data: bytes | memoryview) -> int:
    """How many bytes at the end of ``data`` are token characters."""
    n = len(data)
    i = n
    while i > 0 and data[i - 1] in _TCHAR and n - i < _METHOD_CARRY:
        i -= 1
    return n - i


def _method_verdict(line: bytes | bytearray) -> int | None:
    """The status for a request line starting with a method llhttp refused, None until the bytes
    in hand decide: 501 for a well-formed token followed by a space, 400 for anything else."""
    i = 0
    n = len(line)
    while i < n and line[i] in (13, 10):  # empty lines before a request are ignored
        i += 1
    j = i
    while j < n and line[j] in _TCHAR:
        j += 1
    if j == n:
        return None
    return 501 if j > i and line[j] == 32 else 400


class _Completions:
    def __init__(self) -> None:
        self.count = 0

    def on_message_complete(self) -> None:
        self.count += 1


def _message_start(data: bytes, completed: int) -> int:
    """Where in ``data`` (read from a message boundary) the message after the first
    ``completed`` ones begins. llhttp does not say, so a fresh parser is fed byte by byte: only
    after a refused method, with at most one small read."""
    counter = _Completions()
    parser = httptools.HttpRequestParser(counter)
    for i in range(len(data)):
        with contextlib.suppress(httptools.HttpParserError):
            parser.feed_data(data[i : i + 1])
        if counter.count >= completed:
            return i + 1
    return len(data)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
