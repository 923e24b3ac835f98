"""Building the PEP 3333 ``environ`` for a request (pure: no Twisted, no sockets)."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import IO, Any, Final
from urllib.parse import unquote_to_bytes

import httptools

from catalyzer.http.reader import Request

__all__ = ["ConnectionInfo", "build_environ", "split_target"]

_EMPTY: Final = b""


@dataclass(frozen=True)
class ConnectionInfo:
    """What the server knows about a connection before any request arrives on it."""

    server_name: str
    server_port: str
    remote_addr: str
    remote_port: str
    url_scheme: str = "http"


class BadTarget(ValueError):
    """The request target cannot be mapped to a path."""


def split_target(target: bytes) -> tuple[bytes, bytes, bytes | None]:
    """``(path, query, authority)`` of an origin-form or absolute-form request target.

    ``authority`` is the host of an absolute-form target, which replaces the Host header
    (RFC 9112 3.2.2).
    """
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query, None
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise BadTarget(f"malformed absolute-form target {target!r}") from None
        authority = url.host or b""
        if b":" in authority:
            authority = b"[" + authority + b"]"  # an IPv6 literal
        if url.port is not None:
            authority += b":%d" % url.port
        return url.path or b"/", url.query or b"", authority
    raise BadTarget(f"request target {target!r} is neither a path nor an absolute URL")


_HEADER_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
}


def _environ_key(name: bytes) -> str | None:
    key = _HEADER_KEYS.get(name)
    if key is None and name not in _HEADER_KEYS:
        lowered = name.lower()
        if lowered in _HEADER_KEYS:
            key = _HEADER_KEYS[lowered]
        elif b"_" in name:
            # "X_Forwarded_For" would land on the same key as "X-Forwarded-For": drop it rather
            # than let a client spoof a header a proxy in front of us sets.
            key = None
        else:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_HEADER_KEYS) < 4096:
            _HEADER_KEYS[name] = key
    return key


def build_environ(
    request: Request,
    conn: ConnectionInfo,
    *,
    script_name: str = "",
    errors: IO[str] | None = None,
    multithread: bool = False,
    multiprocess: bool = False,
    file_wrapper: Any = None,
) -> dict[str, Any]:
    path, query, authority = split_target(request.target)
    if b"%" in path:
        path = unquote_to_bytes(path)
    path_info = path.decode("latin-1")
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    body = request.body
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": conn.server_name,
        "SERVER_PORT": conn.server_port,
        "SERVER_PROTOCOL": "HTTP/" + request.version,
        "REMOTE_ADDR": conn.remote_addr,
        "REMOTE_PORT": conn.remote_port,
        "RAW_URI": request.target.decode("latin-1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": conn.url_scheme,
        "wsgi.input": body if body is not None else io.BytesIO(_EMPTY),
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    if file_wrapper is not None:
        environ["wsgi.file_wrapper"] = file_wrapper
    for name, value in request.headers:
        key = _environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            if key in {"CONTENT_LENGTH", "CONTENT_TYPE"}:
                continue
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    if request.chunked:
        # The whole body is here already: give its real size to apps that ignore
        # wsgi.input_terminated (most frameworks read CONTENT_LENGTH bytes).
        environ["CONTENT_LENGTH"] = str(request.body_length)
    if authority is not None:
        environ["HTTP_HOST"] = authority.decode("latin-1")
    return environ
