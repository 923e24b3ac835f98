"""PROXY protocol listeners: ``--listen haproxy:tcp:8080``.

Twisted's own wrapper (``twisted.protocols.haproxy``) reads the header, version 1 or 2, and makes
the transport's ``getPeer()``/``getHost()`` say what it said; the HTTP channel reads its
connection's addresses once the header is in (its first ``dataReceived``). Ours adds what a
server facing a load balancer needs around it:

- a connection that does not start with a valid header is closed with a log line, at most one a
  second per listener (:class:`RejectionLog`): a port scanner or a client that bypassed the proxy
  should neither go unnoticed nor flood the log;
- the first bytes are gathered until there are enough to tell a header from anything else
  (Twisted decides on the first read alone, and closes a connection whose first segment is
  short);
- a half-close reaches the HTTP channel, as on a plain listener;
- ``PROXY UNKNOWN\r\n``, a valid v1 header Twisted refuses, is accepted (the real peer stays).

The header is waited for under the HTTP channel's ``header-timeout``, which runs from the
connection's start.

Single process: :class:`ProxiedEndpoint` wraps the parsed inner endpoint. Prefork: the master binds
the inner endpoint (:func:`inner_endpoint`) and each worker wraps the factory of the port it
adopts (``catalyzer.prefork.worker``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from catalyzer.server import twistedprivate

__all__ = [
    "PREFIX",
    "ProxiedEndpoint",
    "ProxyHeaderFactory",
    "RejectionLog",
    "inner_endpoint",
    "split_proxied",
]

log = Logger(namespace="catalyzer.proxy")

PREFIX = "haproxy:"
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_SIGNATURE = b"PROXY "
_V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
# Enough bytes to tell a v2 header (16 fixed bytes) from a v1 line; a v1 line may be shorter
# ("PROXY UNKNOWN\r\n"), so its end decides too (the v2 signature holds newlines of its own).
_DECIDE = 16


def split_proxied(description: str) -> tuple[bool, str]:
    """``(True, "tcp:8080")`` for ``"haproxy:tcp:8080"``; ``(False, description)`` otherwise."""
    if description[: len(PREFIX)].lower() == PREFIX:
        return True, description[len(PREFIX) :]
    return False, description


class RejectionLog:
    """One log line per connection closed for want of a PROXY header, at most one per
    ``interval`` seconds; the ones in between are counted into the next line."""

    def __init__(self, clock: interfaces.IReactorTime, interval: float = 1.0) -> None:
        self.clock = clock
        self.interval = interval
        self.rejected = 0
        self._last: float | None = None
        self._unreported = 0

    def reject(self, peer: str, why: str) -> None:
        self.rejected += 1
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            self._unreported += 1
            return
        more = f"; {self._unreported} more since the last report" if self._unreported else ""
        log.info(
            "closed connection from {peer} without a valid PROXY header ({why}){more}",
            peer=peer,
            why=why,
            more=more,
        )
        self._last = now
        self._unreported = 0


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    return str(host) if host else "a Unix socket"


def _could_start_header(head: bytes) -> bool:
    return _V2_SIGNATURE.startswith(head[:12]) or _V1_SIGNATURE.startswith(head[:6])


@implementer(interfaces.IHalfCloseableProtocol)
class ProxyHeaderProtocol(twistedprivate.HAProxyProtocolWrapper):
    """Twisted's PROXY wrapper, with the rejections logged, short first reads gathered and
    half-closes passed on."""

    factory: ProxyHeaderFactory

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: interfaces.IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._head: bytes | None = b""  # the first bytes, until there are enough to decide
        self._feeding = False
        self._rejected = False

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return  # what arrives before the close takes effect
        if self._head is not None:
            head = self._head + data
            if not _could_start_header(head):
                self._reject("not a PROXY header")
                return
            if len(head) < _DECIDE and not (head.startswith(_V1_SIGNATURE) and b"\n" in head):
                self._head = head
                return
            self._head = None
            if head.startswith(_V1_UNKNOWN):
                # Valid v1 (HAProxy's health checks send it), which Twisted's parser refuses
                # without something after UNKNOWN.
                head = b"PROXY UNKNOWN \r\n" + head[len(_V1_UNKNOWN) :]
            data = head
        self._feeding = True
        try:
            super().dataReceived(data)
        finally:
            self._feeding = False

    def loseConnection(self) -> None:
        if self._feeding and not twistedprivate.proxy_header_parsed(self):
            # Twisted's wrapper closes this way, and only this way, on a bad header.
            self._reject("malformed PROXY header")
            return
        super().loseConnection()  # type: ignore[no-untyped-call]

    def _reject(self, why: str) -> None:
        if self._rejected:
            return
        self._rejected = True
        assert self.transport is not None
        self.factory.rejections.reject(_peer(self.transport), why)
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        wrapped = self.wrappedProtocol
        if interfaces.IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        wrapped = self.wrappedProtocol
        if interfaces.IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()


class ProxyHeaderFactory(twistedprivate.HAProxyWrappingFactory):
    """Wraps each connection of ``wrappedFactory`` in a :class:`ProxyHeaderProtocol`."""

    protocol = ProxyHeaderProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, wrappedFactory: interfaces.IProtocolFactory, rejections: RejectionLog):
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.rejections = rejections


@implementer(interfaces.IStreamServerEndpoint)
class ProxiedEndpoint:
    """``inner``, with every connection starting with a PROXY header."""

    def __init__(self, inner: interfaces.IStreamServerEndpoint, clock: Any) -> None:
        self.inner = inner
        self.rejections = RejectionLog(clock)

    def listen(
        self, protocolFactory: interfaces.IProtocolFactory
    ) -> Deferred[interfaces.IListeningPort]:
        return self.inner.listen(ProxyHeaderFactory(protocolFactory, self.rejections))


def inner_endpoint(endpoint: Any) -> Any:
    """The endpoint to bind: a :class:`ProxiedEndpoint`'s inner one, or ``endpoint`` itself."""
    return endpoint.inner if isinstance(endpoint, ProxiedEndpoint) else endpoint
