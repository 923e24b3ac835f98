"""The few private attributes of Twisted objects catalyzer reads, in one place.

Twisted offers no public way to ask a TCP transport whether its write buffer is empty, to get
the interface/port/backlog a parsed ``tcp:`` endpoint description holds, to get the TLS
context factory out of a parsed ``ssl:`` endpoint, to hook into its PROXY protocol wrapper
(only ``proxyEndpoint`` is public; the wrapper classes and their state are not), or to keep a
listening port to one ``accept()`` per wake-up. Each read lives here, behind a function with
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


def accept_one_per_wakeup(port: Any) -> None:
    """Make a listening ``twisted.internet.tcp.Port`` (or unix Port) accept at most one
    connection each time the reactor finds it readable.

    Its ``doRead`` accepts up to ``numberAccepts`` connections and then grows that number by 20
    whenever it took as many as allowed, so setting it to 1 once lasts one wake-up. A port
    without the attribute (not a stream listening port) is left alone."""
    if not hasattr(port, "numberAccepts"):
        return
    accept = port.doRead

    def do_read() -> Any:
        port.numberAccepts = 1
        return accept()

    port.numberAccepts = 1
    port.doRead = do_read


def disown_transport(transport: Any) -> None:
    """Make a connected ``tcp.Server`` inert: ``write``, ``loseConnection`` and
    ``abortConnection`` become no-ops, so nothing this process does later sends, shuts down or
    resets the connection another process now serves. The caller removes it from the reactor;
    its socket stays open until :func:`close_disowned`."""
    transport.connected = False
    transport.disconnecting = True
    transport.disconnected = True


def close_disowned(transport: Any) -> None:
    """Close a disowned transport's socket with a bare ``close(2)``: not the ``shutdown(2)`` of
    ``loseConnection`` nor the ``SO_LINGER`` 0 of ``abortConnection``, which would end the
    connection for every process holding it."""
    transport.socket.close()
