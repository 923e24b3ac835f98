"""What the gateway faces (uwsgi, FastCGI) hand the server: a request as CGI variables.

A web server in front (nginx's ``uwsgi_pass`` / ``fastcgi_pass``) has already parsed HTTP and sends
the request as variables (``REQUEST_METHOD``, ``REQUEST_URI``, ``HTTP_HOST``, ...) plus a body.
Both parsers produce the same events, so one connection shell and one environ builder serve both.
Pure: no Twisted, no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from catalyzer.http.progress import upload_id_from
from catalyzer.http.reader import Limits, Request

__all__ = [
    "CGIRequest",
    "Malformed",
    "Refused",
    "count_headers",
    "new_request",
    "uwsgi_var_block_limit",
    "var_block_limit",
]

# A uwsgi packet's size field is 16 bits, and nginx sends a FastCGI params stream of any size.
_UWSGI_MAX: Final = 65535


@dataclass(frozen=True, slots=True)
class Malformed:
    """The peer broke the protocol: log ``detail`` once and close, answering nothing."""

    detail: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A well-formed request the server will not take (too large, bad Content-Length): answer
    ``status`` and close."""

    status: int
    detail: str
    request_id: int = 0


@dataclass(slots=True)
class CGIRequest:
    """One complete request: its variables as sent (bytes, keys as the server named them) and the
    :class:`Request` the WSGI response works from (method, target, body). ``request_id`` and
    ``keep_conn`` are FastCGI's (0 and False for uwsgi)."""

    variables: dict[bytes, bytes]
    request: Request
    request_id: int = 0
    keep_conn: bool = False


def var_block_limit(limits: Limits) -> int:
    """The most bytes of variables a request may carry: the HTTP face's budget for a request line
    and its header fields (``max-request-line`` + ``max-header-bytes``), so a request refused
    over HTTP is refused behind nginx too. uwsgi's 16-bit size field caps it at 65535."""
    return limits.max_request_line + limits.max_header_bytes


def uwsgi_var_block_limit(limits: Limits) -> int:
    return min(_UWSGI_MAX, var_block_limit(limits))


def count_headers(variables: dict[bytes, bytes]) -> int:
    return sum(1 for k in variables if k.startswith(b"HTTP_"))


def new_request(variables: dict[bytes, bytes]) -> Request | Refused:
    """The :class:`Request` for these variables, or why they cannot make one.

    The response is framed as for an HTTP/1.0 request that closes: a body of unknown length is
    sent as it comes (nginx reads the uwsgi response until the connection closes, and a FastCGI
    response ends with its END_REQUEST record), never chunked. ``SERVER_PROTOCOL`` in the
    environ is still what the web server sent."""
    method = variables.get(b"REQUEST_METHOD", b"")
    if not method or not method.isalpha() or not method.isascii():
        return Refused(400, f"missing or malformed REQUEST_METHOD {method!r}")
    request = Request()
    request.method = method.decode("ascii").upper()
    target = variables.get(b"REQUEST_URI")
    if target is None:
        target = variables.get(b"PATH_INFO", b"/")
        query = variables.get(b"QUERY_STRING")
        if query:
            target += b"?" + query
    request.target = target
    request.version = "1.0"
    request.keep_alive = False
    request.host = variables.get(b"HTTP_HOST")
    raw_length = variables.get(b"CONTENT_LENGTH", b"")
    if raw_length:
        if not raw_length.isdigit() or not raw_length.isascii() or len(raw_length) > 19:
            return Refused(400, f"malformed CONTENT_LENGTH {raw_length!r}")
        request.content_length = int(raw_length)
    progress_id = variables.get(b"HTTP_X_PROGRESS_ID")
    headers = [(b"x-progress-id", progress_id)] if progress_id else []
    request.headers = headers
    if request.content_length:
        request.upload_id = upload_id_from(target, headers)
    return request
