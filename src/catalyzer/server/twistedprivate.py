"""The few private attributes of Twisted objects catalyzer reads, in one place.

Twisted offers no public way to ask a TCP transport whether its write buffer is empty, to get
the interface/port/backlog a parsed ``tcp:`` endpoint description holds, to get the TLS
context factory out of a parsed ``ssl:`` endpoint, or to hook into its PROXY protocol wrapper
(only ``proxyEndpoint`` is public; the wrapper classes and their state are not). Each read lives here, behind a function with
a documented meaning, and ``tests/server/test_twistedprivate.py`` checks each one against the
installed Twisted, so an upgrade that renames one fails that test instead of a worker.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

__all__ = [
    "HAProxyProtocolWrapper",
    "HAProxyWrappingFactory",
    "TCPBind",
    "proxy_header_parsed",
    "ssl_context_factory",
    "tcp_bind",
    "write_buffer_empty",
]


def write_buffer_empty(transport: Any) -> bool:
    """True when a ``twisted.internet.abstract.FileDescriptor`` transport has nothing queued:
    bytes written now would be the next on the wire."""
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


class TCPBind(NamedTuple):
    """What a parsed ``tcp:``/``tcp6:`` server endpoint would bind."""

    interface: str
    port: int
    backlog: int


def tcp_bind(endpoint: Any) -> TCPBind:
    """The interface, port and backlog of a ``TCP4ServerEndpoint``/``TCP6ServerEndpoint``."""
    return TCPBind(str(endpoint._interface), int(endpoint._port), int(endpoint._backlog))


def ssl_context_factory(endpoint: Any) -> Any:
    """The TLS context factory an ``SSL4ServerEndpoint`` (an ``ssl:`` description) would use."""
    return endpoint._sslContextFactory


def proxy_header_parsed(wrapper: HAProxyProtocolWrapper) -> bool:
    """Whether a PROXY protocol wrapper has read a complete, valid header: its ``getPeer()`` and
    ``getHost()`` now say what the header said (or the real ones, for a ``LOCAL`` header)."""
    return wrapper._proxyInfo is not None
