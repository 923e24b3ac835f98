"""The few private attributes of Twisted objects catalyzer reads, in one place.

Twisted offers no public way to ask a TCP transport whether its write buffer is empty, to get
the interface/port/backlog a parsed ``tcp:`` endpoint description holds, or to get the TLS
context factory out of a parsed ``ssl:`` endpoint. Each read lives here, behind a function with
a documented meaning, and ``tests/server/test_twistedprivate.py`` checks each one against the
installed Twisted, so an upgrade that renames one fails that test instead of a worker.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.logger import ILogObserver, Logger


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


def has_accept_log(port: Any) -> bool:
    """Whether ``port`` is a ``twisted.internet.tcp.Port`` (tcp, unix), whose ``doRead`` logs
    accept errors through its ``_logger``."""
    return isinstance(getattr(port, "_logger", None), Logger)


def route_accept_log(port: Any, observer: ILogObserver) -> ILogObserver:
    """Send the accept-related events of ``port`` (see :func:`has_accept_log`) to ``observer``
    instead of the global log; returns where they went before. Twisted's ``Port.doRead`` buffers
    its ``_logger``'s events during the accept loop and hands them to that logger's observer."""
    current: Logger = port._logger
    port._logger = Logger(namespace=current.namespace, source=port, observer=observer)
    return current.observer
