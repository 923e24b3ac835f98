"""The uwsgi and FastCGI corpus: what a web server sends, built from the protocols' encoders or
written out byte by byte where the bytes themselves are the point.

Each :class:`Case` holds the wire bytes and the events a parser must yield, as text:
``request`` (a complete request), ``refused:STATUS``, ``malformed``, ``reply:TYPE[:STATUS]`` (a
FastCGI record the parser answers itself: its type and, for END_REQUEST, its protocol status) and
``abort``. ``requests`` describes the requests in order (method, target, body, and environ keys
as :func:`catalyzer.wsgi.environ.build_cgi_environ` makes them). ``limits`` overrides
:class:`~catalyzer.http.reader.Limits` fields. A case cut short yields nothing; ``more`` says what
it yields once more input follows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from catalyzer.http import fastcgi as f
from catalyzer.http.uwsgi import encode_vars


@dataclass(frozen=True)
class Case:
    name: str
    wire: bytes
    events: list[str]
    requests: list[dict[str, Any]] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    note: str = ""
    # For input cut short: the events once more input follows (it completes or breaks the case).
    more: list[str] | None = None


def _b(d: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode("latin-1"): v.encode("latin-1") for k, v in d.items()}


# What nginx's uwsgi_params / fastcgi_params send for GET /a%20b/c?x=1 (Host: example.test).
NGINX_UWSGI = {
    "QUERY_STRING": "x=1",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "REQUEST_URI": "/a%20b/c?x=1",
    "PATH_INFO": "/a b/c",
    "DOCUMENT_ROOT": "/usr/share/nginx/html",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "https",
    "HTTPS": "on",
    "REMOTE_ADDR": "203.0.113.7",
    "REMOTE_PORT": "51234",
    "SERVER_PORT": "443",
    "SERVER_NAME": "example.test",
    "HTTP_HOST": "example.test",
    "HTTP_USER_AGENT": "curl/8",
    "HTTP_X_FORWARDED_FOR": "198.51.100.1",
}
NGINX_FASTCGI = {
    **{k: v for k, v in NGINX_UWSGI.items() if k != "PATH_INFO"},
    "SCRIPT_NAME": "/a b/c",
    "DOCUMENT_URI": "/a b/c",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_USER": "",
    "SERVER_ADDR": "192.0.2.1",
    "REDIRECT_STATUS": "200",
}
NGINX_ENVIRON = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/a b/c",
    "SCRIPT_NAME": "",
    "QUERY_STRING": "x=1",
    "RAW_URI": "/a%20b/c?x=1",
    "REMOTE_ADDR": "203.0.113.7",
    "REMOTE_PORT": "51234",
    "SERVER_NAME": "example.test",
    "SERVER_PORT": "443",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "example.test",
    "HTTP_X_FORWARDED_FOR": "198.51.100.1",
    "wsgi.url_scheme": "https",
}
NGINX_ABSENT = ["CONTENT_LENGTH", "CONTENT_TYPE"]


# -- uwsgi


def uw(variables: dict[str, str], body: bytes = b"") -> bytes:
    return encode_vars(_b(variables)) + body


def post(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/upload",
        "PATH_INFO": "/upload",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/octet-stream",
        **extra,
    }


GET = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "PATH_INFO": "/"}
BODY = bytes(range(256)) * 40  # 10 KiB, every byte value


def _raw_uwsgi(block: bytes, modifier1: int = 0) -> bytes:
    return struct.pack("<BHB", modifier1, len(block), 0) + block


UWSGI_VALID = [
    Case(
        "nginx-get",
        uw(NGINX_UWSGI),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/a%20b/c?x=1",
                "environ": NGINX_ENVIRON,
                "absent": NGINX_ABSENT,
            }
        ],
        note="everything nginx's default uwsgi_params send",
    ),
    Case(
        "minimal",
        uw(GET),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/",
                "environ": {"SERVER_PROTOCOL": "HTTP/1.0", "wsgi.url_scheme": "http"},
            }
        ],
    ),
    Case(
        "post-body",
        uw(post(BODY), BODY),
        ["request"],
        [
            {
                "method": "POST",
                "target": "/upload",
                "body": BODY,
                "environ": {
                    "CONTENT_LENGTH": str(len(BODY)),
                    "CONTENT_TYPE": "application/octet-stream",
                },
            }
        ],
    ),
    Case(
        "post-spooled",
        uw(post(BODY), BODY),
        ["request"],
        [{"method": "POST", "target": "/upload", "body": BODY}],
        limits={"body_spool_threshold": 100},
        note="a body past the spool threshold goes to a temporary file",
    ),
    Case(
        "no-request-uri",
        uw({"REQUEST_METHOD": "get", "PATH_INFO": "/p", "QUERY_STRING": "q=2"}),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/p?q=2",
                "environ": {"PATH_INFO": "/p", "QUERY_STRING": "q=2"},
            }
        ],
        note="a lower-case method is upper-cased; the target is rebuilt from PATH_INFO",
    ),
    Case(
        "latin1-and-empty-values",
        uw({**GET, "HTTP_X_NAME": "caf\xe9", "HTTP_X_EMPTY": ""}),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/",
                "environ": {"HTTP_X_NAME": "caf\xe9", "HTTP_X_EMPTY": ""},
            }
        ],
    ),
    Case(
        "http-scheme-from-https-off",
        uw({**GET, "HTTPS": "off"}),
        ["request"],
        [{"method": "GET", "target": "/", "environ": {"wsgi.url_scheme": "http"}}],
    ),
    Case(
        "script-name-sent",
        uw({**GET, "SCRIPT_NAME": "/app", "PATH_INFO": "/x"}),
        ["request"],
        [{"method": "GET", "target": "/", "environ": {"SCRIPT_NAME": "/app", "PATH_INFO": "/x"}}],
    ),
    Case(
        "vars-at-limit",
        uw({**GET, "HTTP_X": "v" * 59}),
        ["request"],
        [{"method": "GET", "target": "/"}],
        limits={"max_request_line": 20, "max_header_bytes": 100},
        note="a variable block of exactly max-request-line + max-header-bytes bytes",
    ),
    Case(
        "content-length-zero",
        uw({**GET, "CONTENT_LENGTH": "0"}),
        ["request"],
        [{"method": "GET", "target": "/", "environ": {"CONTENT_LENGTH": "0"}}],
    ),
]

UWSGI_INVALID = [
    Case("modifier1-not-wsgi", _raw_uwsgi(encode_vars(_b(GET))[4:], modifier1=5), ["malformed"]),
    Case("empty-packet", b"\x00\x00\x00\x00", ["malformed"]),
    Case("key-size-cut", _raw_uwsgi(b"\x0e\x00REQUEST_METHOD\x03\x00GET\x05"), ["malformed"]),
    Case("value-overflows-block", _raw_uwsgi(b"\x0e\x00REQUEST_METHOD\x09\x00GET"), ["malformed"]),
    Case("empty-key", _raw_uwsgi(b"\x00\x00\x03\x00GET"), ["malformed"]),
    Case("no-method", uw({"REQUEST_URI": "/"}), ["refused:400"]),
    Case("method-not-a-token", uw({**GET, "REQUEST_METHOD": "G T"}), ["refused:400"]),
    Case("content-length-negative", uw({**GET, "CONTENT_LENGTH": "-1"}), ["refused:400"]),
    Case("content-length-hex", uw({**GET, "CONTENT_LENGTH": "0x10"}), ["refused:400"]),
    Case("content-length-huge", uw({**GET, "CONTENT_LENGTH": "9" * 30}), ["refused:400"]),
    Case("body-too-large", uw(post(BODY), BODY), ["refused:413"], limits={"max_body": 1000}),
    Case(
        "vars-too-large",
        uw({**GET, "HTTP_X": "v" * 60}),
        ["refused:431"],
        limits={"max_request_line": 20, "max_header_bytes": 100},
    ),
    Case(
        "too-many-http-vars",
        uw({**GET, **{f"HTTP_X_{i}": "1" for i in range(4)}}),
        ["refused:431"],
        limits={"max_headers": 3},
    ),
    Case("cut-in-header", uw(GET)[:3], [], more=["malformed"]),
    Case("cut-in-vars", uw(GET)[:20], [], more=["malformed"]),
    Case(
        "cut-in-body",
        uw(post(BODY), BODY)[:-1],
        [],
        more=["request"],
        note="the body is length-delimited: what follows completes it",
    ),
]


# -- FastCGI


def begin(request_id: int = 1, keep: bool = True, role: int = f.RESPONDER) -> bytes:
    return f.record(
        f.BEGIN_REQUEST, request_id, struct.pack("!HB5x", role, f.KEEP_CONN if keep else 0)
    )


def params(variables: dict[str, str], request_id: int = 1, pieces: int = 1) -> bytes:
    data = f.encode_pairs(_b(variables))
    step = max(1, -(-len(data) // pieces))
    records = [
        f.record(f.PARAMS, request_id, data[i : i + step]) for i in range(0, len(data), step)
    ]
    return b"".join(records) + f.record(f.PARAMS, request_id)


def stdin(body: bytes = b"", request_id: int = 1, size: int = 4000) -> bytes:
    records = [f.record(f.STDIN, request_id, body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(records) + f.record(f.STDIN, request_id)


def fcgi(
    variables: dict[str, str], body: bytes = b"", request_id: int = 1, keep: bool = True
) -> bytes:
    return begin(request_id, keep) + params(variables, request_id, 3) + stdin(body, request_id)


GET_VALUES = f.record(
    f.GET_VALUES,
    0,
    f.encode_pairs({b"FCGI_MAX_CONNS": b"", b"FCGI_MPXS_CONNS": b"", b"FCGI_X": b""}),
)
ABORT = f.record(f.ABORT_REQUEST, 1)
FASTCGI_GET = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/", "DOCUMENT_URI": "/"}

FASTCGI_VALID = [
    Case(
        "nginx-get",
        fcgi(NGINX_FASTCGI),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/a%20b/c?x=1",
                "environ": NGINX_ENVIRON,
                "absent": NGINX_ABSENT,
            }
        ],
        note="nginx's default fastcgi_params: SCRIPT_NAME is the whole path and is not kept",
    ),
    Case(
        "post-body",
        fcgi(post(BODY), BODY),
        ["request"],
        [
            {
                "method": "POST",
                "target": "/upload",
                "body": BODY,
                "environ": {"CONTENT_LENGTH": str(len(BODY))},
            }
        ],
    ),
    Case(
        "stdin-shorter-than-content-length",
        fcgi(post(BODY), BODY[:1000]),
        ["request"],
        [{"method": "POST", "target": "/upload", "body": BODY[:1000]}],
        note="the body is what stdin brought: none of the declared size's room is left over",
    ),
    Case(
        "stdin-longer-than-content-length",
        fcgi(post(BODY[:1000]), BODY),
        ["request"],
        [{"method": "POST", "target": "/upload", "body": BODY}],
        note="the body is what stdin brought, past the declared size too",
    ),
    Case(
        "post-spooled-unknown-length",
        begin() + params({"REQUEST_METHOD": "PUT", "REQUEST_URI": "/u"}) + stdin(BODY, size=65535),
        ["request"],
        [
            {
                "method": "PUT",
                "target": "/u",
                "body": BODY,
                "environ": {"CONTENT_LENGTH": str(len(BODY))},
            }
        ],
        limits={"body_spool_threshold": 100},
        note="no CONTENT_LENGTH: the body's size is what stdin brought",
    ),
    Case(
        "split-path",
        fcgi({**FASTCGI_GET, "SCRIPT_NAME": "/app.py", "PATH_INFO": "/x"}),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/",
                "environ": {"SCRIPT_NAME": "/app.py", "PATH_INFO": "/x"},
            }
        ],
        note="fastcgi_split_path_info: both sent, both kept",
    ),
    Case(
        "no-document-uri",
        fcgi({"REQUEST_METHOD": "GET", "REQUEST_URI": "/a%2Fb?q"}),
        ["request"],
        [
            {
                "method": "GET",
                "target": "/a%2Fb?q",
                "environ": {"PATH_INFO": "/a/b", "QUERY_STRING": "q"},
            }
        ],
    ),
    Case(
        "long-pair-lengths",
        fcgi({**FASTCGI_GET, "HTTP_X_LONG": "y" * 300}),
        ["request"],
        [{"method": "GET", "target": "/", "environ": {"HTTP_X_LONG": "y" * 300}}],
        note="a value over 127 bytes has a 4-byte length",
    ),
    Case("get-values", GET_VALUES, ["reply:10"]),
    Case("unknown-management-type", f.record(42, 0, b"x"), ["reply:11"]),
    Case(
        "unknown-type",
        f.record(42, 1, b"x") + fcgi(FASTCGI_GET),
        ["reply:11", "request"],
        [{"method": "GET", "target": "/"}],
    ),
    Case(
        "data-ignored",
        begin() + params(FASTCGI_GET) + f.record(f.DATA, 1, b"zz") + stdin(),
        ["request"],
        [{"method": "GET", "target": "/"}],
    ),
    Case(
        "unknown-role",
        begin(role=2) + fcgi(FASTCGI_GET),
        ["reply:3:3", "request"],
        [{"method": "GET", "target": "/"}],
    ),
    Case(
        "second-request-refused",
        fcgi(FASTCGI_GET) + begin(2) + params(FASTCGI_GET, 2) + stdin(b"", 2),
        ["request", "reply:3:1"],
        [{"method": "GET", "target": "/"}],
        note="FCGI_MPXS_CONNS=0: a request begun while one is served gets FCGI_CANT_MPX_CONN",
    ),
    Case(
        "interleaved-request-refused",
        begin(1)
        + begin(2)
        + params(FASTCGI_GET, 2)
        + params(FASTCGI_GET, 1)
        + stdin(b"x", 2)
        + stdin(),
        ["reply:3:1", "request"],
        [{"method": "GET", "target": "/"}],
    ),
    Case("abort-while-arriving", begin() + params(FASTCGI_GET) + ABORT, ["reply:3:0"]),
    Case(
        "abort-after-handover",
        fcgi(FASTCGI_GET) + ABORT,
        ["request", "abort"],
        [{"method": "GET", "target": "/"}],
    ),
    Case(
        "hand-padded",
        bytes.fromhex("01010001000800000001010000000000")
        + b"\x01\x04\x00\x01\x00\x13\x05\x00"
        + b"\x0e\x03REQUEST_METHODGET"
        + bytes(5)
        + b"\x01\x04\x00\x01\x00\x00\x00\x00"
        + b"\x01\x05\x00\x01\x00\x00\x00\x00",
        ["request"],
        [{"method": "GET", "target": "/", "environ": {"PATH_INFO": "/"}}],
        note="records written out by hand, with padding",
    ),
]

FASTCGI_INVALID = [
    Case("version-2", b"\x02" + begin()[1:], ["malformed"]),
    Case("short-begin", f.record(f.BEGIN_REQUEST, 1, b"\x00\x01\x01"), ["malformed"]),
    Case("stdout-from-server", f.record(f.STDOUT, 1, b"x"), ["malformed"]),
    Case("stdin-before-params-end", begin() + f.record(f.STDIN, 1, b"x"), ["malformed"]),
    Case(
        "broken-pair",
        begin() + f.record(f.PARAMS, 1, b"\x0e\x05REQUEST_METHOD") + f.record(f.PARAMS, 1),
        ["malformed"],
    ),
    Case("begin-twice", begin() + begin(), ["malformed"]),
    Case(
        "params-after-end",
        begin() + params(FASTCGI_GET) + f.record(f.PARAMS, 1, b"\x01\x01ab"),
        ["malformed"],
    ),
    Case("no-method", fcgi({"REQUEST_URI": "/"}), ["refused:400"]),
    Case(
        "declared-body-too-large",
        fcgi(post(BODY), BODY),
        ["refused:413"],
        limits={"max_body": 1000},
    ),
    Case(
        "streamed-body-too-large",
        fcgi({"REQUEST_METHOD": "POST", "REQUEST_URI": "/"}, BODY),
        ["refused:413"],
        limits={"max_body": 1000},
    ),
    Case(
        "params-too-large",
        fcgi({**FASTCGI_GET, "HTTP_X": "v" * 200}),
        ["refused:431"],
        limits={"max_request_line": 20, "max_header_bytes": 100},
    ),
    Case(
        "too-many-http-params",
        fcgi({**FASTCGI_GET, **{f"HTTP_X_{i}": "1" for i in range(4)}}),
        ["refused:431"],
        limits={"max_headers": 3},
    ),
    Case("cut-in-record-header", begin()[:5], [], more=["malformed"]),
    Case("cut-in-params", (begin() + params(FASTCGI_GET))[:-3], [], more=["malformed"]),
    Case("cut-in-stdin", fcgi(post(BODY), BODY)[:-8], [], more=["reply:10"]),
]
