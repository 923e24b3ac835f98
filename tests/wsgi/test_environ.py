"""The PEP 3333 environ built from a parsed request."""

from __future__ import annotations

import pytest

from catalyzer.http.reader import Request
from catalyzer.wsgi.environ import (
    BadTarget,
    ConnectionInfo,
    base_environ,
    build_environ,
    split_target,
)

# -- environ


INFO = ConnectionInfo("127.0.0.1", "8080", "10.1.2.3", "5555")


def make_request(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    r = Request()
    r.target = target
    r.headers = headers or [(b"Host", b"example.com")]
    return r


def test_environ_paths_and_query() -> None:
    env = build_environ(make_request(b"/a%20b/%C3%A9?x=%20&y"), base_environ(INFO))
    assert env["PATH_INFO"] == "/a b/\xc3\xa9"  # bytes decoded as latin-1, per PEP 3333
    assert env["QUERY_STRING"] == "x=%20&y"  # raw
    assert env["RAW_URI"] == "/a%20b/%C3%A9?x=%20&y"
    assert env["HTTP_HOST"] == "example.com"
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["SERVER_PORT"]) == (
        "10.1.2.3",
        "5555",
        "8080",
    )


def test_environ_script_name() -> None:
    env = build_environ(make_request(b"/app/x"), base_environ(INFO, script_name="/app"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")
    env = build_environ(make_request(b"/application"), base_environ(INFO, script_name="/app"))
    assert env["PATH_INFO"] == "/application"


def test_environ_absolute_form_overrides_host() -> None:
    env = build_environ(make_request(b"http://other.test:81/p?q=1"), base_environ(INFO))
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_HOST"]) == (
        "/p",
        "q=1",
        "other.test:81",
    )


def test_environ_headers_joined_underscores_dropped() -> None:
    headers = [
        (b"Host", b"h"),
        (b"X-A", b"1"),
        (b"x-a", b"2"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"X_Forwarded_For", b"spoof"),
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"3"),
    ]
    env = build_environ(make_request(b"/", headers), base_environ(INFO))
    assert env["HTTP_X_A"] == "1,2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in env


def test_split_target_rejects_garbage() -> None:
    with pytest.raises(BadTarget):
        split_target(b"example.com:443")
    assert split_target(b"/x?") == (b"/x", b"", None)
