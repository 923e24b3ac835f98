"""What an application may put in ``start_response``: checked strictly, because whatever it writes
goes verbatim onto the wire (a CR/LF in a header value is response splitting)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["AppResponseError", "ResponseHead", "check_response_head"]


class AppResponseError(Exception):
    """The application's status or headers would produce an invalid or unsafe response."""


_STATUS: Final = re.compile(r"([1-9][0-9]{2}) [^\x00-\x08\x0a-\x1f\x7f]*\Z")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Connection-specific fields belong to the server (PEP 3333, RFC 9110 7.6.1). "Connection: close"
# is honoured as a request to close after this response; anything else hop-by-hop is an error.
_HOP_BY_HOP: Final = frozenset(
    (
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)


@dataclass(frozen=True)
class ResponseHead:
    status: str
    code: int
    headers: tuple[tuple[str, str], ...]
    content_length: int | None
    close: bool
    # "HTTP/1.1 <status>\r\n" and the encoded header lines, ready for the wire.
    status_line: bytes
    lines: bytes


# Applications send the same status and header list again and again: a validated head is reused.
_CACHE: dict[tuple[str, tuple[object, ...]], ResponseHead] = {}
_CACHE_SIZE: Final = 1024


def check_response_head(status: object, headers: object) -> ResponseHead:
    key = None
    if type(status) is str and type(headers) is list:
        try:
            key = (status, tuple(headers))
            cached = _CACHE.get(key)
        except TypeError:  # an unhashable item: certainly invalid, checked below
            key = cached = None
        if cached is not None:
            return cached
    head = _check(status, headers)
    if key is not None and len(_CACHE) < _CACHE_SIZE:
        _CACHE[key] = head
    return head


def _check(status: object, headers: object) -> ResponseHead:
    if type(status) is not str:
        raise AppResponseError(f"status must be a str, not {type(status).__name__}")
    m = _STATUS.match(status)
    if m is None or (not status.isascii() and not _latin1(status)):
        raise AppResponseError(f"malformed status {status!r}: expected e.g. '200 OK'")
    if type(headers) is not list:
        raise AppResponseError(f"headers must be a list, not {type(headers).__name__}")
    content_length: int | None = None
    close = False
    kept: list[tuple[str, str]] = []
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise AppResponseError(f"header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise AppResponseError(f"header {item!r}: name and value must be str")
        if _TOKEN.match(name) is None:
            raise AppResponseError(f"header name {name!r} is not a valid token")
        if _BAD_VALUE.search(value) is not None or (not value.isascii() and not _latin1(value)):
            raise AppResponseError(f"header {name!r} has a control character or non-latin-1 value")
        lname = name.lower()
        if lname == "content-length":
            if not value.isdigit() or not value.isascii() or content_length is not None:
                raise AppResponseError(f"bad or repeated Content-Length {value!r}")
            content_length = int(value)
        elif lname == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if not tokens <= {"close", "keep-alive"}:
                raise AppResponseError(f"hop-by-hop header Connection: {value!r} is not allowed")
            close = close or "close" in tokens
            continue
        elif lname in _HOP_BY_HOP:
            raise AppResponseError(f"hop-by-hop header {name!r} is not allowed in a WSGI response")
        kept.append((name, value))
    code = int(m.group(1))
    if code == 204 or code < 200:
        # RFC 9110 8.6: no Content-Length on 1xx and 204.
        kept = [(n, v) for n, v in kept if n.lower() != "content-length"]
    lines = "".join(f"{n}: {v}\r\n" for n, v in kept).encode("latin-1")
    return ResponseHead(
        status,
        code,
        tuple(kept),
        content_length,
        close,
        f"HTTP/1.1 {status}\r\n".encode("latin-1"),
        lines,
    )


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
