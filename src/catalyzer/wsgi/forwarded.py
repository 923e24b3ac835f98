"""Which proxies to believe, and what they say about the client (pure: no Twisted, no I/O).

:func:`apply_forwarded` rewrites a PEP 3333 environ, whatever face built it (HTTP, a PROXY-protocol
listener, uwsgi, FastCGI), judging the peer named by its ``REMOTE_ADDR``:

- From a peer not in ``forwarded-allow-ips``, the proxy headers (``Forwarded``,
  ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port``/``-Prefix``) are removed from the environ,
  so an application reading them directly cannot be fooled either (as waitress's
  ``clear_untrusted_proxy_headers``).
- From a trusted peer they are believed. The client is found by walking the chain of addresses
  from the right (the hop nearest to us) past every trusted proxy: the first untrusted address is
  the client; if every hop is trusted, the leftmost one is.
- ``X-Forwarded-For``/``-Proto``/``-Host``, when any of them is present, win over ``Forwarded``
  (RFC 7239), which is then removed: nginx, HAProxy's ``option forwardfor`` and the cloud load
  balancers set those, and nginx passes a client's own ``Forwarded`` through untouched. Without
  them, ``Forwarded`` is believed: the element naming the client gives its address, port, scheme
  and host together. ``X-Forwarded-Port`` and ``-Prefix``, which ``Forwarded`` has no
  equivalent for, apply in both cases.
- A list in ``X-Forwarded-Proto``/``-Host``/``-Port``/``-Prefix`` counts by its rightmost value:
  the one our nearest proxy set.
- A malformed header is ignored and removed (one debug note through ``note``), never an error
  response. The environ keeps only the proxy headers that were believed.

A peer connected over a Unix socket has an empty ``REMOTE_ADDR``; it is trusted when the list
names ``unix``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes

__all__ = [
    "DEFAULT_ALLOW",
    "PROXY_KEYS",
    "Malformed",
    "Node",
    "TrustedProxies",
    "apply_forwarded",
    "parse_forwarded",
    "parse_node",
]

DEFAULT_ALLOW: Final = "127.0.0.1,::1,unix"

# The environ keys of every header this module judges.
PROXY_KEYS: Final = (
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_PREFIX",
)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Malformed(ValueError):
    """A proxy header that does not parse: it is ignored."""


def _address(text: str) -> _IPAddress | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        return addr.ipv4_mapped
    return addr


class TrustedProxies:
    """The peers whose proxy headers are believed: addresses, networks, ``unix``, or ``*``."""

    def __init__(
        self,
        networks: tuple[_Network, ...] = (),
        *,
        unix: bool = False,
        everyone: bool = False,
    ) -> None:
        self.networks = networks
        self.unix = unix
        self.everyone = everyone
        # REMOTE_ADDR strings already judged: a process sees few distinct proxies. Bounded, since
        # through a trusted chain the walk also judges client addresses.
        self._seen: dict[str, bool] = {}

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """``"127.0.0.1,::1,10.0.0.0/8,unix"`` or ``"*"``; raises ``ValueError`` naming the bad
        entry."""
        networks: list[_Network] = []
        unix = everyone = False
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                everyone = True
            elif entry.lower() == "unix":
                unix = True
            else:
                try:
                    network = ipaddress.ip_network(entry.strip("[]"), strict=False)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is not an address, a network (CIDR), 'unix' or '*'"
                    ) from None
                networks.append(network)
        return cls(tuple(networks), unix=unix, everyone=everyone)

    def trusts(self, remote_addr: str) -> bool:
        """Whether a peer with this ``REMOTE_ADDR`` (``""`` for a Unix socket) is believed."""
        if self.everyone:
            return True
        known = self._seen.get(remote_addr)
        if known is not None:
            return known
        if remote_addr == "":
            verdict = self.unix
        else:
            addr = _address(remote_addr)
            verdict = addr is not None and any(addr in n for n in self.networks)
        if len(self._seen) < 1024:
            self._seen[remote_addr] = verdict
        return verdict


@dataclass(frozen=True)
class Node:
    """One hop of a chain: an address (or ``unknown``, or an obfuscated ``_identifier``) and
    maybe a port."""

    name: str
    port: str = ""


_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def _ipv4(text: str) -> bool:
    # inet_pton: strict (no "1.2.3", no leading zeros) and ten times faster than ipaddress.
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


def _ipv6(text: str) -> str | None:
    """The canonical form of an IPv6 address (as a socket reports it), None if not one."""
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        return None


def parse_node(text: str) -> Node:
    """An RFC 7239 node (``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]:80``, ``unknown``,
    ``_hidden:_port``), also as found in ``X-Forwarded-For`` (a bare IPv6 address)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        name = _ipv6(host) if sep else None
        if name is None:
            raise Malformed(f"bad IPv6 node {text!r}")
        if rest and not rest.startswith(":"):
            raise Malformed(f"bad node {text!r}")
        port = rest[1:]
        if rest and not port:
            raise Malformed(f"empty port in {text!r}")
    elif text.count(":") > 1:  # a bare IPv6 address (X-Forwarded-For), no port possible
        name = _ipv6(text)
        if name is None:
            raise Malformed(f"bad address {text!r}")
        return Node(name)
    else:
        name, colon, port = text.partition(":")
        if not _ipv4(name):
            if name.lower() == "unknown":
                name = "unknown"
            elif not _OBFUSCATED.match(name):
                raise Malformed(f"bad node {text!r}")
        if colon and not port:
            raise Malformed(f"empty port in {text!r}")
    if port and not (_PORT.match(port) or _OBFUSCATED.match(port)):
        raise Malformed(f"bad port in {text!r}")
    if port and port.isdigit() and int(port) > 65535:
        raise Malformed(f"port out of range in {text!r}")
    return Node(name, port)


# RFC 7230 tchar, plus the ":[]" found unquoted in the wild (for=192.0.2.1:80).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]+")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*)"')
_ESCAPE = re.compile(r"\\(.)")
_PARAMS = frozenset(("for", "by", "proto", "host"))


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """The elements of a ``Forwarded`` field value, leftmost (the original client's) first, each
    a dict of its lower-cased parameter names (``for``, ``by``, ``proto``, ``host``; others are
    dropped). Empty list elements are skipped, as RFC 9110 5.6.1 asks."""
    elements: list[dict[str, str]] = []
    pos, end = 0, len(value)
    while True:
        element: dict[str, str] = {}
        while True:
            pos = _skip_ows(value, pos)
            if pos < end and value[pos] not in ",;":
                pos = _pair(value, pos, element)
                pos = _skip_ows(value, pos)
            if pos < end and value[pos] == ";":
                pos += 1
                continue
            break
        if element:
            elements.append(element)
        if pos == end:
            break
        if value[pos] != ",":
            raise Malformed(f"unexpected {value[pos : pos + 20]!r}")
        pos += 1
    if not elements:
        raise Malformed("no element")
    return elements


def _skip_ows(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def _pair(value: str, pos: int, element: dict[str, str]) -> int:
    """Parse ``name=value`` at ``pos`` into ``element``; the position after it."""
    m = _TOKEN.match(value, pos)
    if m is None or value[m.end() : m.end() + 1] != "=":
        raise Malformed(f"expected name=value at {value[pos : pos + 20]!r}")
    name = m.group().lower()
    pos = m.end() + 1
    q = _QUOTED.match(value, pos)
    if q is not None:
        text = _ESCAPE.sub(r"\1", q.group(1))
        pos = q.end()
    else:
        m = _TOKEN.match(value, pos)
        if m is None:
            raise Malformed(f"bad value for {name!r}")
        text = m.group()
        pos = m.end()
    if name in element:
        raise Malformed(f"{name!r} twice in one element")
    if name in _PARAMS:
        element[name] = text
    return pos


_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=%-]+)(?::[0-9]{1,5})?\Z")


def _split_host(host: str) -> tuple[str, str]:
    """``(name, port)`` of a validated Host value."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:]
    name, _, port = host.partition(":")
    return name, port


def _check_host(host: str) -> str:
    if not _HOST.match(host):
        raise Malformed(f"bad host {host!r}")
    name, _ = _split_host(host)
    if name.startswith("[") and _ipv6(name[1:-1]) is None:
        raise Malformed(f"bad host {host!r}")
    return host


def _check_proto(proto: str) -> str:
    lowered = proto.strip().lower()
    if lowered not in ("http", "https"):
        raise Malformed(f"bad proto {proto!r}")
    return lowered


def _rightmost(value: str) -> str:
    return value.rpartition(",")[2].strip()


def _client_index(nodes: list[Node], trusted: TrustedProxies) -> int:
    """The client's index in a chain: the rightmost hop that is not a trusted proxy."""
    for i in range(len(nodes) - 1, 0, -1):
        if not trusted.trusts(nodes[i].name):
            return i
    return 0


@dataclass
class _Verdict:
    """What the believed headers say (None: nothing)."""

    node: Node | None = None
    proto: str | None = None
    host: str | None = None
    port: str | None = None
    prefix: str | None = None


def _from_forwarded(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    elements = parse_forwarded(value)
    nodes = [parse_node(e.get("for", "unknown")) for e in elements]
    client = _client_index(nodes, trusted)
    element = elements[client]
    proto = _check_proto(element["proto"]) if "proto" in element else None
    host = _check_host(element["host"]) if "host" in element else None
    # All or nothing: a bad part makes the whole header ignored.
    verdict.node, verdict.proto, verdict.host = nodes[client], proto, host


def _xff(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    nodes = [parse_node(part) for part in value.split(",")]
    verdict.node = nodes[_client_index(nodes, trusted)]


def _xfproto(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    verdict.proto = _check_proto(_rightmost(value))


def _xfhost(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    verdict.host = _check_host(_rightmost(value))


def _xfport(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    text = _rightmost(value)
    if not _PORT.match(text) or not 0 < int(text) <= 65535:
        raise Malformed(f"bad X-Forwarded-Port {value!r}")
    verdict.port = text


def _xfprefix(value: str, trusted: TrustedProxies, verdict: _Verdict) -> None:
    text = _rightmost(value).rstrip("/")
    if (text and not text.startswith("/")) or any(c in text for c in "?#\\") or "//" in text:
        raise Malformed(f"bad X-Forwarded-Prefix {value!r}")
    decoded = unquote_to_bytes(text).decode("latin-1")
    if any(part in (".", "..") for part in decoded.split("/")):
        raise Malformed(f"bad X-Forwarded-Prefix {value!r}")
    verdict.prefix = decoded


_Step = Callable[[str, "TrustedProxies", _Verdict], None]
_PORT_AND_PREFIX: tuple[tuple[str, _Step], ...] = (
    ("HTTP_X_FORWARDED_PORT", _xfport),
    ("HTTP_X_FORWARDED_PREFIX", _xfprefix),
)
# X-Forwarded-* win: the proxies people run set them, and nginx passes a client's own Forwarded
# header through untouched.
_X_FORWARDED: tuple[tuple[str, _Step], ...] = (
    ("HTTP_X_FORWARDED_FOR", _xff),
    ("HTTP_X_FORWARDED_PROTO", _xfproto),
    ("HTTP_X_FORWARDED_HOST", _xfhost),
    *_PORT_AND_PREFIX,
)
_FORWARDED: tuple[tuple[str, _Step], ...] = (("HTTP_FORWARDED", _from_forwarded), *_PORT_AND_PREFIX)
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}


def apply_forwarded(
    environ: dict[str, Any],
    trusted: TrustedProxies,
    note: Callable[[str], None] | None = None,
) -> None:
    """Believe or remove the proxy headers in ``environ``, judging its ``REMOTE_ADDR``."""
    if environ.keys().isdisjoint(PROXY_KEYS):
        return  # the common case, every request on a direct connection: nothing to judge
    if not trusted.trusts(environ.get("REMOTE_ADDR", "")):
        for key in PROXY_KEYS:
            environ.pop(key, None)
        return
    if (
        "HTTP_X_FORWARDED_FOR" in environ
        or "HTTP_X_FORWARDED_PROTO" in environ
        or "HTTP_X_FORWARDED_HOST" in environ
    ):
        steps = _X_FORWARDED
        environ.pop("HTTP_FORWARDED", None)  # not believed, so not shown to the app
    else:
        steps = _FORWARDED
    verdict = _Verdict()
    for key, step in steps:
        value = environ.get(key)
        if value is None:
            continue
        try:
            step(value, trusted, verdict)
        except Malformed as e:
            del environ[key]  # the app sees only the proxy headers that were believed
            if note is not None:
                name = "-".join(w.capitalize() for w in key[5:].split("_"))
                note(f"ignoring {name}: {e}")
    _rewrite(environ, verdict)


def _rewrite(environ: dict[str, Any], verdict: _Verdict) -> None:
    node = verdict.node
    if node is not None:
        environ["REMOTE_ADDR"] = node.name
        environ["REMOTE_PORT"] = node.port if node.port.isdigit() else ""
    scheme = environ.get("wsgi.url_scheme", "http")
    if verdict.proto is not None:
        scheme = environ["wsgi.url_scheme"] = verdict.proto
        if scheme == "https":
            environ["HTTPS"] = "on"
        else:
            environ.pop("HTTPS", None)
    default = _DEFAULT_PORTS.get(scheme, "80")
    port = verdict.port
    if verdict.host is not None:
        name, host_port = _split_host(verdict.host)
        environ["HTTP_HOST"] = verdict.host
        environ["SERVER_NAME"] = name
    elif verdict.proto is not None or port is not None:
        host_port = _split_host(environ["HTTP_HOST"])[1] if environ.get("HTTP_HOST") else ""
    else:
        return _apply_prefix(environ, verdict)
    if port is not None and not host_port and port != default and environ.get("HTTP_HOST"):
        # The URL the client used names this port: rebuilt URLs must too.
        environ["HTTP_HOST"] += ":" + port
    environ["SERVER_PORT"] = host_port or port or default
    _apply_prefix(environ, verdict)


def _apply_prefix(environ: dict[str, Any], verdict: _Verdict) -> None:
    if verdict.prefix:
        environ["SCRIPT_NAME"] = verdict.prefix + environ.get("SCRIPT_NAME", "")
