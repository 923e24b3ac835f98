"""The response side of an HTTP/1.1 connection, without sockets: a response in, bytes out.

:class:`ResponseFramer` decides how a response body is delimited and keeps the body honest: a body
longer than its Content-Length is cut and a shorter one is reported, and either way the connection is
closed afterwards, so the client can never read the rest of one response as the start of the next.
"""

from __future__ import annotations

from typing import Final

from catalyzer.http.headers import ResponseHead

__all__ = ["ResponseFramer", "simple_response"]

_NO_BODY_STATUS: Final = frozenset((204, 304))
# How the body is delimited.
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_CLOSE: Final = 3


class ResponseFramer:
    """Frames one response. ``head`` holds the status line and header block to send first."""

    __slots__ = ("_length", "_mode", "_sent", "error", "head", "keep_alive")

    def __init__(
        self,
        response: ResponseHead,
        method: str,
        request_version: str,
        keep_alive: bool,
        date: bytes,
        known_length: int | None = None,
    ) -> None:
        """``keep_alive`` is whether the request and the server allow the connection to continue;
        ``known_length`` is the body's exact size when the server can tell (a list body, a file);
        ``date`` is the complete ``Date: ...\r\n`` line."""
        self.error: str | None = None
        self._sent = 0
        code = response.code
        keep_alive = keep_alive and not response.close
        length = response.content_length
        extra = b""
        if method == "HEAD" or code < 200 or code in _NO_BODY_STATUS:
            self._mode = _NONE
            if code == 204 or code < 200:
                length = None
            elif length is None and known_length is not None and method != "HEAD":
                length = known_length
        elif length is not None:
            self._mode = _LENGTH
        elif known_length is not None:
            self._mode = _LENGTH
            length = known_length
            extra = b"Content-Length: %d\r\n" % length
        elif request_version == "1.1":
            self._mode = _CHUNKED
            extra = b"Transfer-Encoding: chunked\r\n"
        else:
            self._mode = _CLOSE
            keep_alive = False
        self._length = length or 0
        self.keep_alive = keep_alive
        if not keep_alive:
            extra += b"Connection: close\r\n"
        elif request_version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        self.head = response.status_line + date + response.lines + extra + b"\r\n"

    @property
    def has_body(self) -> bool:
        return self._mode != _NONE

    @property
    def remaining(self) -> int | None:
        """Bytes still owed under a Content-Length, or None when the body is not length-delimited."""
        return self._length - self._sent if self._mode == _LENGTH else None

    def body(self, data: bytes) -> bytes:
        """The bytes to send for a piece of the body."""
        if not data:
            return b""
        mode = self._mode
        if mode == _LENGTH:
            room = self._length - self._sent
            if len(data) > room:
                self._fail(f"response body longer than its Content-Length of {self._length}")
                data = data[:room]
            self._sent += len(data)
            return data
        if mode == _CHUNKED:
            self._sent += len(data)
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == _CLOSE:
            self._sent += len(data)
            return data
        return b""

    def body_parts(self, data: bytes) -> tuple[bytes, ...]:
        """:meth:`body` as pieces to send in order, ``data`` itself among them (no copy of it
        for the chunk's framing)."""
        if self._mode == _CHUNKED and data:
            self._sent += len(data)
            return (b"%x\r\n" % len(data), data, b"\r\n")
        out = self.body(data)
        return (out,) if out else ()

    def end(self) -> bytes:
        """The bytes that finish the body; sets :attr:`error` if it fell short."""
        if self._mode == _CHUNKED:
            return b"0\r\n\r\n"
        if self._mode == _LENGTH and self._sent < self._length:
            self._fail(
                f"response body shorter ({self._sent} bytes) than its Content-Length of "
                f"{self._length}"
            )
        return b""

    def count_sent(self, n: int) -> None:
        """Account for ``n`` body bytes sent around :meth:`body` (by ``sendfile``)."""
        self._sent += n

    @property
    def sent(self) -> int:
        return self._sent

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.keep_alive = False


def simple_response(
    status: int,
    reason: str,
    date: str,
    body: bytes = b"",
    *,
    close: bool = True,
    extra: str = "",
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    """A complete small response the server writes itself (errors, ``OPTIONS *``, progress)."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nDate: {date}\r\n{extra}"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + (b"" if head_only else body)
