"""Checks on the app's response head, and response framing."""

from __future__ import annotations

from typing import Any

import pytest

from catalyzer.http.framing import ResponseFramer
from catalyzer.http.headers import AppResponseError, check_response_head

# -- response head and framing


def test_check_response_head_accepts_and_extracts() -> None:
    head = check_response_head(
        "201 Created", [("Content-Length", "3"), ("Connection", "close"), ("X", "caf\xe9")]
    )
    assert (head.code, head.content_length, head.close) == (201, 3, True)
    assert head.headers == (("Content-Length", "3"), ("X", "caf\xe9"))


def test_check_response_head_rejects_repeated_length() -> None:
    with pytest.raises(AppResponseError):
        check_response_head("200 OK", [("Content-Length", "3"), ("content-length", "3")])


def framer(status: str = "200 OK", headers: Any = (), **kw: Any) -> ResponseFramer:
    defaults: dict[str, Any] = {
        "method": "GET",
        "request_version": "1.1",
        "keep_alive": True,
        "date": b"Date: D\r\n",
    }
    defaults.update(kw)
    return ResponseFramer(check_response_head(status, list(headers)), **defaults)


def test_framer_length_overflow_and_underflow() -> None:
    f = framer(headers=[("Content-Length", "4")])
    assert f.body(b"abcdef") == b"abcd" and f.error and not f.keep_alive
    f = framer(headers=[("Content-Length", "4")])
    f.body(b"ab")
    f.end()
    assert f.error and "shorter" in f.error and not f.keep_alive


def test_framer_body_parts_keep_the_data_object_and_frame_like_body() -> None:
    data = b"x" * 100
    f = framer()
    parts = f.body_parts(data)
    assert parts == (b"64\r\n", data, b"\r\n") and parts[1] is data
    assert f.sent == 100
    assert f.body_parts(b"") == ()
    f = framer(headers=[("Content-Length", "150")])
    assert f.body_parts(data)[0] is data
    assert f.body_parts(data) == (b"x" * 50,) and f.error and f.sent == 150
    f = framer(method="HEAD")
    assert f.body_parts(data) == ()


def test_framer_modes() -> None:
    f = framer()
    assert b"Transfer-Encoding: chunked" in f.head and f.body(b"ab") == b"2\r\nab\r\n"
    assert f.end() == b"0\r\n\r\n" and f.keep_alive
    f = framer(request_version="1.0")
    assert b"Connection: close" in f.head and f.body(b"ab") == b"ab" and not f.keep_alive
    f = framer(request_version="1.0", known_length=2)
    assert b"Connection: keep-alive" in f.head and b"Content-Length: 2" in f.head
    f = framer("204 No Content", [("Content-Length", "0")])
    assert b"Content-Length" not in f.head and f.body(b"x") == b""
    f = framer(method="HEAD", headers=[("Content-Length", "9")])
    assert b"Content-Length: 9" in f.head and f.body(b"x") == b"" and f.end() == b""
    assert f.error is None


def test_backlog_added_only_where_it_applies() -> None:
    from catalyzer.server.endpointspec import with_backlog

    assert with_backlog("tcp:8080", 1024) == "tcp:8080:backlog=1024"
    assert with_backlog("unix:/run/a.sock", 7) == "unix:/run/a.sock:backlog=7"
    assert with_backlog("tcp:80:backlog=5", 1024) == "tcp:80:backlog=5"
    assert with_backlog("systemd:domain=INET:index=0", 1024) == "systemd:domain=INET:index=0"
