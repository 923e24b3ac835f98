"""The pure layer: settings, app specs, environ, response head checks, framing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from catalyzer.appspec import AppSpecError, load_app, parse_app_spec
from catalyzer.environ import BadTarget, ConnectionInfo, build_environ, split_target
from catalyzer.framing import ResponseFramer
from catalyzer.headers import AppResponseError, check_response_head
from catalyzer.http11 import Request
from catalyzer.settings import BY_NAME, SETTINGS, Config, SettingError, parse_size, render_markdown

ROOT = Path(__file__).resolve().parent.parent


# -- settings


def test_settings_page_is_current() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == render_markdown(), "docs/settings.md is stale: run `make docs`"


def test_every_setting_has_help_section_and_valid_default() -> None:
    for s in SETTINGS:
        assert s.help and s.section
        if not s.repeatable and s.default != "":
            assert s.coerce(str(s.default)) == s.default


@pytest.mark.parametrize(
    ("text", "value"),
    [("65536", 65536), ("64K", 65536), ("64KiB", 65536), ("1m", 2**20), ("2G", 2 * 2**30)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("name", "raw", "fragment"),
    [
        ("max-body", "lots", "byte count"),
        ("max-body", "0", "1 byte or more"),
        ("threads", "-1", "0 or more"),
        ("header-timeout", "nan", "above 0"),
        ("header-timeout", "0", "above 0"),
        ("script-name", "app/", "start with '/'"),
        ("app", "nocolon", "module:callable"),
        ("max-headers", True, "expected"),
    ],
)
def test_bad_values_name_setting_value_and_rule(name: str, raw: object, fragment: str) -> None:
    with pytest.raises(SettingError) as e:
        BY_NAME[name].coerce(raw)
    assert name in str(e.value) and repr(raw) in str(e.value) and fragment in str(e.value)


def test_config_defaults_and_unknown_key() -> None:
    config = Config.from_values({"app": "a:b"})
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)
    with pytest.raises(SettingError, match="unknown setting 'no-such'"):
        Config.from_values({"app": "a:b", "no-such": 1})


# -- app specs


def test_parse_app_spec_forms() -> None:
    assert parse_app_spec("pkg.mod:app").attribute == ("app",)
    spec = parse_app_spec("pkg.mod:factory('x', n=2)")
    assert spec.attribute == ("factory",) and spec.call == (("x",), {"n": 2})
    assert parse_app_spec("m:obj.wsgi").attribute == ("obj", "wsgi")


@pytest.mark.parametrize(
    "text", ["nocolon", "m:", ":app", "1m:app", "m:f(x)", "m:f(**k)", "m:a+b", "m:f()()"]
)
def test_parse_app_spec_rejects(text: str) -> None:
    with pytest.raises(AppSpecError):
        parse_app_spec(text)


def test_load_app_errors_are_for_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_mod.py").write_text("def app(:\n")
    (tmp_path / "ok_mod.py").write_text(
        "def make(greeting='hi'):\n    def app(e, s):\n        return [greeting.encode()]\n"
        "    return app\nnot_callable = 3\ndef bad():\n    raise RuntimeError('factory broke')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppSpecError, match="no module named 'nope_mod'"):
        load_app("nope_mod:app")
    with pytest.raises(AppSpecError, match="SyntaxError"):
        load_app("broken_mod:app")
    with pytest.raises(AppSpecError, match="has no attribute 'missing'"):
        load_app("ok_mod:missing")
    with pytest.raises(AppSpecError, match="not callable"):
        load_app("ok_mod:not_callable")
    with pytest.raises(AppSpecError, match="factory broke"):
        load_app("ok_mod:bad()")
    app = load_app("ok_mod:make('yo')")
    assert app({}, lambda *a: None) == [b"yo"]
    sys.modules.pop("ok_mod", None)


# -- environ


INFO = ConnectionInfo("127.0.0.1", "8080", "10.1.2.3", "5555")


def make_request(target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    r = Request()
    r.target = target
    r.headers = headers or [(b"Host", b"example.com")]
    return r


def test_environ_paths_and_query() -> None:
    env = build_environ(make_request(b"/a%20b/%C3%A9?x=%20&y"), INFO)
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
    env = build_environ(make_request(b"/app/x"), INFO, script_name="/app")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")
    env = build_environ(make_request(b"/application"), INFO, script_name="/app")
    assert env["PATH_INFO"] == "/application"


def test_environ_absolute_form_overrides_host() -> None:
    env = build_environ(make_request(b"http://other.test:81/p?q=1"), INFO)
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
    env = build_environ(make_request(b"/", headers), INFO)
    assert env["HTTP_X_A"] == "1,2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in env


def test_split_target_rejects_garbage() -> None:
    with pytest.raises(BadTarget):
        split_target(b"example.com:443")
    assert split_target(b"/x?") == (b"/x", b"", None)


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
    from catalyzer.tap import with_backlog

    assert with_backlog("tcp:8080", 1024) == "tcp:8080:backlog=1024"
    assert with_backlog("unix:/run/a.sock", 7) == "unix:/run/a.sock:backlog=7"
    assert with_backlog("tcp:80:backlog=5", 1024) == "tcp:80:backlog=5"
    assert with_backlog("systemd:domain=INET:index=0", 1024) == "systemd:domain=INET:index=0"
