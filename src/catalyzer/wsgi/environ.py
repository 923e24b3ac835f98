"""Building the PEP 3333 ``environ`` for a request (pure: no Twisted, no sockets)."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import IO, Any, Final
from urllib.parse import unquote_to_bytes

import httptools

from catalyzer.http.cgi import CGIRequest
from catalyzer.http.reader import Request

__all__ = [
    "ConnectionInfo",
    "base_environ",
    "build_cgi_environ",
    "build_environ",
    "split_target",
]

_EMPTY: Final = b""
# ``bytes in bytes`` first tries the needle as an integer and raises and clears a TypeError
# (about 2k instructions); an integer needle is a plain memchr.
_PERCENT: Final = ord("%")


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
            # Any: httptools' stubs type host, port, path and query as never None, which they
            # are when absent; compiled (mypyc), this module would check the stubs' types.
            url: Any = httptools.parse_url(target)
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


def base_environ(
    conn: ConnectionInfo,
    *,
    script_name: str = "",
    errors: IO[str] | None = None,
    multithread: bool = False,
    multiprocess: bool = False,
    file_wrapper: Any = None,
) -> dict[str, Any]:
    """The entries of ``environ`` that are the same for every request on one connection: a
    connection builds them once and each request starts from a copy (one C-level dict copy
    instead of a dozen lookups per request)."""
    base: dict[str, Any] = {
        "SCRIPT_NAME": script_name,
        "SERVER_NAME": conn.server_name,
        "SERVER_PORT": conn.server_port,
        "REMOTE_ADDR": conn.remote_addr,
        "REMOTE_PORT": conn.remote_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": conn.url_scheme,
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    if file_wrapper is not None:
        base["wsgi.file_wrapper"] = file_wrapper
    return base


def build_environ(request: Request, base: dict[str, Any]) -> dict[str, Any]:
    """The environ of ``request``, starting from ``base``: :func:`base_environ` for its
    connection."""
    script_name = base["SCRIPT_NAME"]
    path, query, authority = split_target(request.target)
    if _PERCENT in path:
        path = unquote_to_bytes(path)
    path_info = path.decode("latin-1")
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    body = request.body
    environ = base.copy()
    environ["REQUEST_METHOD"] = request.method
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
    environ["RAW_URI"] = request.target.decode("latin-1")
    environ["wsgi.input"] = body if body is not None else io.BytesIO(_EMPTY)
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


# Variables a gateway sends whose value the environ computes itself or must not carry twice.
_CGI_SKIP: Final = frozenset((b"HTTP_CONTENT_LENGTH", b"HTTP_CONTENT_TYPE"))
# Variable names seen, decoded once (bounded: names are the web server's and the client's).
_CGI_NAMES: dict[bytes, str] = {}


def build_cgi_environ(request: CGIRequest, base: dict[str, Any]) -> dict[str, Any]:
    """The environ of a request that came as CGI variables (uwsgi, FastCGI).

    Every variable is passed on as sent (latin-1 text), except:

    - ``PATH_INFO``: the ``PATH_INFO`` variable if sent (nginx's ``uwsgi_params``: ``$document_uri``);
      else ``DOCUMENT_URI`` (nginx's ``fastcgi_params``); else the percent-decoded path of
      ``REQUEST_URI``. ``SCRIPT_NAME`` is kept only when ``PATH_INFO`` was sent too (a split the web
      server made, e.g. with ``fastcgi_split_path_info``): nginx's default ``fastcgi_params`` send
      ``SCRIPT_NAME $fastcgi_script_name``, which without a split is the whole path. Without a sent
      ``SCRIPT_NAME``, ``--script-name`` is taken off ``PATH_INFO`` as on the HTTP face.
    - ``wsgi.url_scheme``: ``REQUEST_SCHEME`` if http or https, else https when ``HTTPS`` is
      ``on``/``1``, else the connection's own scheme.
    - missing ``SERVER_NAME``/``SERVER_PORT``/``REMOTE_ADDR``/``REMOTE_PORT`` come from the socket
      (``base``: :func:`base_environ` for the connection, as on the HTTP face, which also gives the
      ``wsgi.*`` entries; a variable named ``wsgi.*`` is dropped);
      an empty ``CONTENT_LENGTH``/``CONTENT_TYPE`` is left out; ``CONTENT_LENGTH`` is the body's
      real size when there is one.

    The web server in front is trusted with ``REMOTE_ADDR`` and the scheme: that is what these
    protocols are for, so their sockets must be reachable by the web server only. ``HTTP_*``
    variables (``HTTP_X_FORWARDED_FOR`` ...) are the client's headers and are no more trusted here
    than on the HTTP face.
    """
    variables = request.variables
    req = request.request
    environ: dict[str, Any] = {}
    script_name: str = base["SCRIPT_NAME"]
    names = _CGI_NAMES
    for key, value in variables.items():
        name = names.get(key)
        if name is None:
            if key in _CGI_SKIP or key.startswith(b"wsgi."):
                continue
            name = key.decode("latin-1")
            if len(names) < 4096:
                names[key] = name
        environ[name] = value.decode("latin-1")
    target = req.target
    path_part, _, query = target.partition(b"?")
    path_info = environ.get("PATH_INFO")
    if path_info is None:
        environ.pop("SCRIPT_NAME", None)
        document_uri = environ.get("DOCUMENT_URI")
        if document_uri is not None:
            path_info = document_uri
        else:
            if _PERCENT in path_part:
                path_part = unquote_to_bytes(path_part)
            path_info = path_part.decode("latin-1")
    if not environ.get("SCRIPT_NAME"):
        environ["SCRIPT_NAME"] = script_name
        if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
            path_info = path_info[len(script_name) :]
    environ["PATH_INFO"] = path_info
    environ["REQUEST_METHOD"] = req.method
    environ.setdefault("QUERY_STRING", query.decode("latin-1"))
    environ.setdefault("SERVER_PROTOCOL", "HTTP/1.0")
    if not environ.get("SERVER_NAME"):
        environ["SERVER_NAME"] = base["SERVER_NAME"]
    if not environ.get("SERVER_PORT"):
        environ["SERVER_PORT"] = base["SERVER_PORT"]
    if not environ.get("REMOTE_ADDR"):
        environ["REMOTE_ADDR"] = base["REMOTE_ADDR"]
        environ["REMOTE_PORT"] = base["REMOTE_PORT"]
    environ.setdefault("REMOTE_PORT", "")
    environ["RAW_URI"] = target.decode("latin-1")
    for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        if name in environ and not environ[name]:
            del environ[name]
    body = req.body
    if body is not None:
        environ["CONTENT_LENGTH"] = str(req.body_length)
    scheme = environ.get("REQUEST_SCHEME", "").lower()
    if scheme not in ("http", "https"):
        scheme = (
            "https" if environ.get("HTTPS", "").lower() in ("on", "1") else base["wsgi.url_scheme"]
        )
    result = base.copy()
    result.update(environ)
    result["wsgi.url_scheme"] = scheme
    result["wsgi.input"] = body if body is not None else io.BytesIO(_EMPTY)
    return result
