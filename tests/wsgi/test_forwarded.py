"""Whose proxy headers are believed, and what they make of the environ."""

from __future__ import annotations

from typing import Any

import pytest

from catalyzer.wsgi.forwarded import (
    DEFAULT_ALLOW,
    PROXY_KEYS,
    Malformed,
    Node,
    TrustedProxies,
    apply_forwarded,
    parse_forwarded,
    parse_node,
)

# -- the allow list


@pytest.mark.parametrize(
    ("allow", "addr", "trusted"),
    [
        (DEFAULT_ALLOW, "127.0.0.1", True),
        (DEFAULT_ALLOW, "::1", True),
        (DEFAULT_ALLOW, "", True),  # a Unix socket
        (DEFAULT_ALLOW, "127.0.0.2", False),  # loopback, but not listed
        (DEFAULT_ALLOW, "::ffff:127.0.0.1", True),  # IPv4 seen through a dual-stack socket
        (DEFAULT_ALLOW, "10.0.0.1", False),
        (DEFAULT_ALLOW, "unknown", False),
        (DEFAULT_ALLOW, "_hidden", False),
        ("127.0.0.1", "", False),  # Unix sockets only when 'unix' is listed
        ("10.0.0.0/8, 192.168.1.1", "10.200.3.4", True),
        ("10.0.0.0/8, 192.168.1.1", "192.168.1.2", False),
        ("2001:db8::/32", "2001:db8:cafe::17", True),
        ("[2001:db8::1]", "2001:db8::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("10.0.0.1/8", "10.9.9.9", True),  # host bits set: the network it names
        ("*", "203.0.113.9", True),
        ("*", "", True),
        ("", "127.0.0.1", False),  # nobody
    ],
)
def test_trusts(allow: str, addr: str, trusted: bool) -> None:
    proxies = TrustedProxies.parse(allow)
    assert proxies.trusts(addr) is trusted
    assert proxies.trusts(addr) is trusted  # and again, from what it remembers


@pytest.mark.parametrize("allow", ["localhost", "10.0.0.0/33", "1.2.3", "127.0.0.1,nope"])
def test_bad_allow_list_names_the_entry(allow: str) -> None:
    with pytest.raises(ValueError, match="is not an address, a network"):
        TrustedProxies.parse(allow)


# -- nodes


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("192.0.2.60", Node("192.0.2.60")),
        ("192.0.2.60:4711", Node("192.0.2.60", "4711")),
        (" 192.0.2.60 ", Node("192.0.2.60")),
        ("[2001:db8:cafe::17]", Node("2001:db8:cafe::17")),
        ("[2001:db8:cafe::17]:4711", Node("2001:db8:cafe::17", "4711")),
        ("[2001:DB8:0:0::17]", Node("2001:db8::17")),  # normalised, as a socket reports it
        ("2001:db8:cafe::17", Node("2001:db8:cafe::17")),  # bare, as in X-Forwarded-For
        ("unknown", Node("unknown")),
        ("UNKNOWN", Node("unknown")),
        ("_hidden", Node("_hidden")),
        ("_SEVKISEK", Node("_SEVKISEK")),
        ("_hidden:_port", Node("_hidden", "_port")),
        ("192.0.2.60:_x", Node("192.0.2.60", "_x")),
    ],
)
def test_parse_node(text: str, node: Node) -> None:
    assert parse_node(text) == node


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com",  # a name is not a node
        "1.2.3",
        "1.2.3.4:",
        "1.2.3.4:99999",
        "1.2.3.4:80x",
        "[1.2.3.4]",  # brackets are for IPv6
        "[2001:db8::1",
        "[2001:db8::1]80",
        "[2001:db8::1]:",
        "2001:db8::zz",
        "_",
        "_bad/char",
        "1.2.3.4 5.6.7.8",
    ],
)
def test_parse_node_malformed(text: str) -> None:
    with pytest.raises(Malformed):
        parse_node(text)


# -- Forwarded (RFC 7239 section 4 and 7 examples, quoting, case)


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ('for="_gazonk"', [{"for": "_gazonk"}]),
        ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
        (
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}],
        ),
        ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
        ("for=192.0.2.43,for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
        ('for="1.2.3.4";host="a\\"b"', [{"for": "1.2.3.4", "host": 'a"b'}]),  # quoted-pair
        ("for=1.2.3.4 ; proto=https", [{"for": "1.2.3.4", "proto": "https"}]),
        ("for=1.2.3.4;;proto=https;", [{"for": "1.2.3.4", "proto": "https"}]),
        ("for=1.2.3.4, , for=5.6.7.8", [{"for": "1.2.3.4"}, {"for": "5.6.7.8"}]),
        ("for=1.2.3.4;ext=whatever", [{"for": "1.2.3.4"}]),  # unknown parameters dropped
        ("for=1.2.3.4:80", [{"for": "1.2.3.4:80"}]),  # unquoted port: seen in the wild
    ],
)
def test_parse_forwarded(value: str, elements: list[dict[str, str]]) -> None:
    assert parse_forwarded(value) == elements


@pytest.mark.parametrize(
    "value",
    [
        "",
        " , ",
        "for",
        "for=",
        "for=1.2.3.4;for=5.6.7.8",  # a parameter twice in one element
        'for="1.2.3.4',  # unterminated quote
        "for=1.2.3.4 proto=http",  # missing ';'
        "for=a b",
        "=1.2.3.4",
    ],
)
def test_parse_forwarded_malformed(value: str) -> None:
    with pytest.raises(Malformed):
        parse_forwarded(value)


# -- the environ


def environ(peer: str = "127.0.0.1", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REMOTE_ADDR": peer,
        "REMOTE_PORT": "40000",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SCRIPT_NAME": "",
        "HTTP_HOST": "backend:8080",
        "wsgi.url_scheme": "http",
    }
    env.update(headers)
    return env


PROXIES = TrustedProxies.parse("127.0.0.1,::1,10.0.0.0/8")


def applied(
    env: dict[str, Any], proxies: TrustedProxies = PROXIES
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    apply_forwarded(env, proxies, notes.append)
    return env, notes


def view(env: dict[str, Any]) -> tuple[str, str, str, str, str, str, str]:
    return (
        env["REMOTE_ADDR"],
        env["REMOTE_PORT"],
        env["wsgi.url_scheme"],
        env["HTTP_HOST"],
        env["SERVER_NAME"],
        env["SERVER_PORT"],
        env["SCRIPT_NAME"],
    )


UNCHANGED = ("127.0.0.1", "40000", "http", "backend:8080", "127.0.0.1", "8080", "")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # nginx's usual set
        (
            {
                "HTTP_X_FORWARDED_FOR": "203.0.113.7",
                "HTTP_X_FORWARDED_PROTO": "https",
                "HTTP_X_FORWARDED_HOST": "example.com",
            },
            ("203.0.113.7", "", "https", "example.com", "example.com", "443", ""),
        ),
        # a chain: the rightmost untrusted hop is the client, whatever it claims to its left
        (
            {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7, 10.1.1.1"},
            ("203.0.113.7", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # every hop trusted: the leftmost is the client
        (
            {"HTTP_X_FORWARDED_FOR": "10.0.0.5, 10.1.1.1"},
            ("10.0.0.5", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # IPv6 with brackets and a port, and bare
        (
            {"HTTP_X_FORWARDED_FOR": "[2001:db8::7]:5555"},
            ("2001:db8::7", "5555", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        (
            {"HTTP_X_FORWARDED_FOR": "2001:db8::7, ::1"},
            ("2001:db8::7", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # Forwarded: the client's element gives address, port, scheme and host together
        (
            {
                "HTTP_FORWARDED": 'for="[2001:db8:cafe::17]:4711";proto=https;host=shop.example, '
                "for=10.0.0.2;proto=http;host=internal"
            },
            ("2001:db8:cafe::17", "4711", "https", "shop.example", "shop.example", "443", ""),
        ),
        # X-Forwarded-* win over Forwarded when both are there (nginx passes Forwarded through)
        (
            {
                "HTTP_FORWARDED": "for=198.51.100.1;proto=https;host=fwd.example",
                "HTTP_X_FORWARDED_FOR": "192.0.2.99",
            },
            ("192.0.2.99", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        (
            {"HTTP_FORWARDED": "for=198.51.100.1", "HTTP_X_FORWARDED_PROTO": "https"},
            ("127.0.0.1", "40000", "https", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # X-Forwarded-Port and -Prefix have no Forwarded equivalent and apply with it
        (
            {
                "HTTP_FORWARDED": "for=198.51.100.1;proto=https;host=example.com",
                "HTTP_X_FORWARDED_PORT": "8443",
                "HTTP_X_FORWARDED_PREFIX": "/shop/",
            },
            (
                "198.51.100.1",
                "",
                "https",
                "example.com:8443",
                "example.com",
                "8443",
                "/shop",
            ),
        ),
        # a Forwarded with one bad part is ignored whole
        ({"HTTP_FORWARDED": "for=192.0.2.1;proto=gopher"}, UNCHANGED),
        ({"HTTP_FORWARDED": "for=nonsense"}, UNCHANGED),
        # obfuscated and unknown clients: named as the proxy names them, no port
        (
            {"HTTP_FORWARDED": 'for="_hidden:_p"'},
            ("_hidden", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        (
            {"HTTP_FORWARDED": "for=unknown, for=10.0.0.3"},
            ("unknown", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # an element without for= is an unknown hop
        (
            {"HTTP_FORWARDED": "proto=https"},
            ("unknown", "", "https", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # an obfuscated hop stops the walk (it is not a trusted address)
        (
            {"HTTP_X_FORWARDED_FOR": "203.0.113.7, _proxy2, 10.0.0.1"},
            ("_proxy2", "", "http", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        # host with a port, IPv6 host
        (
            {"HTTP_X_FORWARDED_HOST": "example.com:8443", "HTTP_X_FORWARDED_PROTO": "https"},
            ("127.0.0.1", "40000", "https", "example.com:8443", "example.com", "8443", ""),
        ),
        (
            {"HTTP_X_FORWARDED_HOST": "[2001:db8::1]:81"},
            ("127.0.0.1", "40000", "http", "[2001:db8::1]:81", "[2001:db8::1]", "81", ""),
        ),
        # proto alone: SERVER_PORT follows the Host header, or the scheme's default
        (
            {"HTTP_X_FORWARDED_PROTO": "HTTPS"},
            ("127.0.0.1", "40000", "https", "backend:8080", "127.0.0.1", "8080", ""),
        ),
        (
            {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_HOST": "example.com"},
            ("127.0.0.1", "40000", "https", "example.com", "127.0.0.1", "443", ""),
        ),
        # port alone, added to a Host without one
        (
            {"HTTP_X_FORWARDED_PORT": "8000", "HTTP_HOST": "example.com"},
            ("127.0.0.1", "40000", "http", "example.com:8000", "127.0.0.1", "8000", ""),
        ),
        # lists in -Proto/-Host: the rightmost value, set by the nearest proxy
        (
            {"HTTP_X_FORWARDED_PROTO": "https, http", "HTTP_X_FORWARDED_HOST": "a.test, b.test"},
            ("127.0.0.1", "40000", "http", "b.test", "b.test", "80", ""),
        ),
        # the prefix goes in front of --script-name's, percent-decoded
        (
            {"HTTP_X_FORWARDED_PREFIX": "/a%20b", "SCRIPT_NAME": "/app"},
            ("127.0.0.1", "40000", "http", "backend:8080", "127.0.0.1", "8080", "/a b/app"),
        ),
        # malformed values: that header ignored, the others still believed
        ({"HTTP_X_FORWARDED_FOR": "1.2.3.4, evil.example"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_FOR": "1.2.3.4,,5.6.7.8"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_FOR": ""}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PROTO": "gopher"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_HOST": "evil.example/path"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_HOST": "a b"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_HOST": "[nothex]"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PORT": "99999"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PORT": "0"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PORT": "80a"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PREFIX": "shop"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PREFIX": "/a/../admin"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PREFIX": "/a?x=1"}, UNCHANGED),
        ({"HTTP_X_FORWARDED_PREFIX": "//evil.example"}, UNCHANGED),
        (
            {"HTTP_X_FORWARDED_FOR": "not-an-ip", "HTTP_X_FORWARDED_PROTO": "https"},
            ("127.0.0.1", "40000", "https", "backend:8080", "127.0.0.1", "8080", ""),
        ),
    ],
)
def test_trusted_peer(headers: dict[str, str], expected: tuple[str, ...]) -> None:
    env, notes = applied(environ(**headers))
    assert view(env) == expected
    if expected == UNCHANGED:
        # the one bad header: a note, and removed so that the app does not read it either
        assert len(notes) == 1 and notes[0].startswith("ignoring ")
        assert not [key for key in PROXY_KEYS if key in env]
    else:
        # a trusted proxy's believed headers stay for the app to read; Forwarded only if it won
        believed = set(headers) & set(PROXY_KEYS)
        if believed & {"HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST"}:
            believed.discard("HTTP_FORWARDED")
        if notes:
            assert notes == ["ignoring X-Forwarded-For: bad node 'not-an-ip'"]
            believed.discard("HTTP_X_FORWARDED_FOR")
        assert {k for k in PROXY_KEYS if k in env} == believed


def test_root_prefix_is_no_prefix() -> None:
    env, notes = applied(environ(HTTP_X_FORWARDED_PREFIX="/", SCRIPT_NAME="/app"))
    assert (env["SCRIPT_NAME"], notes) == ("/app", [])


def test_https_sets_https_on_and_http_clears_it() -> None:
    env, _ = applied(environ(HTTP_X_FORWARDED_PROTO="https"))
    assert env["HTTPS"] == "on"
    env, _ = applied(
        environ(HTTP_X_FORWARDED_PROTO="http", HTTPS="on", **{"wsgi.url_scheme": "https"})
    )
    assert "HTTPS" not in env and env["wsgi.url_scheme"] == "http"


SPOOFS = [
    {"HTTP_X_FORWARDED_FOR": "127.0.0.1"},
    {"HTTP_X_FORWARDED_PROTO": "https"},
    {"HTTP_X_FORWARDED_HOST": "admin.internal"},
    {"HTTP_X_FORWARDED_PORT": "443"},
    {"HTTP_X_FORWARDED_PREFIX": "/admin"},
    {"HTTP_FORWARDED": "for=127.0.0.1;proto=https;host=admin.internal"},
    dict.fromkeys(PROXY_KEYS, "127.0.0.1"),
]


@pytest.mark.parametrize("headers", SPOOFS)
@pytest.mark.parametrize("peer", ["203.0.113.66", "127.0.0.2", "2001:db8::66", "::ffff:10.0.0.1"])
def test_untrusted_peer_cannot_spoof(headers: dict[str, str], peer: str) -> None:
    proxies = TrustedProxies.parse("127.0.0.1,::1,10.0.0.5")
    env, notes = applied(environ(peer, **headers), proxies)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (peer, "40000")
    assert view(env)[2:] == UNCHANGED[2:]
    assert "HTTPS" not in env
    assert not [key for key in PROXY_KEYS if key in env]  # removed: the app cannot read them
    assert notes == []


def test_unix_socket_peer() -> None:
    env, _ = applied(environ("", HTTP_X_FORWARDED_FOR="203.0.113.7"), TrustedProxies.parse("unix"))
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    env, _ = applied(environ("", HTTP_X_FORWARDED_FOR="203.0.113.7"), TrustedProxies.parse("::1"))
    assert env["REMOTE_ADDR"] == "" and "HTTP_X_FORWARDED_FOR" not in env


def test_everyone_trusted() -> None:
    env, _ = applied(
        environ("203.0.113.66", HTTP_X_FORWARDED_FOR="1.2.3.4"), TrustedProxies.parse("*")
    )
    assert env["REMOTE_ADDR"] == "1.2.3.4"


def test_no_proxy_headers_leaves_environ_alone() -> None:
    env = environ("203.0.113.66")
    before = dict(env)
    applied(env)
    assert env == before


def test_remembered_verdicts_are_bounded() -> None:
    proxies = TrustedProxies.parse("10.0.0.0/8")
    for n in range(2000):
        proxies.trusts(f"10.0.{n // 256}.{n % 256}")
    assert len(proxies._seen) == 1024
    assert proxies.trusts("10.0.9.9") and not proxies.trusts("11.0.0.1")
