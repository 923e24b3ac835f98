"""The prefork master's listening sockets, as its workers inherit them.

The master binds every ``--listen`` endpoint itself and never accepts; each worker gets the
sockets as file descriptors. By default an endpoint is ONE socket shared by every worker, and each
worker accepts one connection per wake-up: a worker busy in the app does not accept, so new
connections go to the workers that are free (the kernel's accept queue is the fair queue). With
``--reuse-port`` a TCP endpoint (tcp, tcp6, ssl) gets one ``SO_REUSEPORT`` socket per worker slot
instead: the kernel spreads connections evenly by hash, busy or not (see docs/prefork.md).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import endpoints, protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger

from catalyzer.server import twistedprivate
from catalyzer.server.listening import listen_now
from catalyzer.server.proxyheader import inner_endpoint

__all__ = ["Listener", "listen"]

log = Logger(namespace="catalyzer.prefork.listeners")

_TCP_ENDPOINTS = (
    endpoints.TCP4ServerEndpoint,
    endpoints.TCP6ServerEndpoint,
    endpoints.SSL4ServerEndpoint,
)


class _NoAccept(protocol.Factory):
    """The master's ports never accept: workers do."""

    noisy = False

    def buildProtocol(self, addr: object) -> None:
        return None


class Listener:
    """One ``--listen`` endpoint as the workers see it.

    The master holds the sockets, so a worker's replacement (crash, recycling, reload) adopts the
    same socket as its predecessor and serves what queued there meanwhile.
    """

    def __init__(self, description: str, family: str, address: Any) -> None:
        self.description = description
        self.family = family  # as catalyzer.prefork.control.FAMILIES names it
        self.address = address
        self.shared: Any = None  # the Twisted port of a shared socket
        self.slots: dict[int, socket.socket] = {}
        self._bind: tuple[int, tuple[Any, ...], int] | None = None

    @classmethod
    def reuseport(cls, description: str, endpoint: Any, slots: int) -> Listener:
        """``slots`` sockets bound to a TCP endpoint's address (its port, if 0, chosen once)."""
        bind = twistedprivate.tcp_bind(endpoint)
        v6 = isinstance(endpoint, endpoints.TCP6ServerEndpoint) or ":" in bind.interface
        family = socket.AF_INET6 if v6 else socket.AF_INET
        host = bind.interface or ("::" if v6 else "")
        first = _reuseport_socket(family, (host, bind.port), bind.backlog)
        bound = first.getsockname()
        address = (IPv6Address if v6 else IPv4Address)("TCP", bound[0], bound[1])
        listener = cls(description, "INET6" if v6 else "INET", address)
        listener._bind = (family, bound, bind.backlog)
        listener.slots[0] = first
        for slot in range(1, slots):
            listener.slots[slot] = listener._new_socket()
        return listener

    def _new_socket(self) -> socket.socket:
        assert self._bind is not None
        family, address, backlog = self._bind
        return _reuseport_socket(family, address, backlog)

    def fd_for(self, slot: int) -> int:
        """The descriptor worker ``slot`` inherits (a new socket for a slot added since)."""
        if self.shared is not None:
            fd: int = self.shared.fileno()
            return fd
        sock = self.slots.get(slot)
        if sock is None:
            try:
                sock = self.slots[slot] = self._new_socket()
            except OSError as e:  # e.g. a privileged port after dropping privileges
                log.warn(
                    "{d}: no socket of its own for worker {slot} ({e}): sharing slot 0's",
                    d=self.description,
                    slot=slot,
                    e=e,
                )
                sock = self.slots[min(self.slots)]
        return sock.fileno()

    def release(self, slot: int) -> None:
        """The slot is gone (scaled down): connections the kernel queued there are refused."""
        sock = self.slots.pop(slot, None) if slot != 0 else None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self.shared is not None:
            self.shared.stopListening()
        for sock in self.slots.values():
            sock.close()
        self.slots = {}


def listen(description: str, endpoint: Any, slots: int, reuse_port: bool = False) -> Listener:
    """Bind ``endpoint`` for ``slots`` workers; raises the bind's error (see
    :func:`catalyzer.server.listening.listen_all`, which turns it into one line)."""
    # A PROXY protocol listener's socket is its inner endpoint's; each worker wraps it.
    endpoint = inner_endpoint(endpoint)
    if reuse_port and type(endpoint) in _TCP_ENDPOINTS:
        return Listener.reuseport(description, endpoint, slots)
    port = listen_now(endpoint, _NoAccept())
    port.stopReading()  # type: ignore[attr-defined]  # the master never accepts
    try:
        family = _family(port)
    except ValueError:
        port.stopListening()
        raise
    listener = Listener(description, family, port.getHost())
    listener.shared = port
    return listener


def _reuseport_socket(family: int, address: tuple[Any, ...], backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _family(port: Any) -> str:
    host = port.getHost()
    if isinstance(host, IPv6Address):
        return "INET6"
    if isinstance(host, IPv4Address):
        return "INET"
    if isinstance(host, UNIXAddress):
        return "UNIX"
    raise ValueError(f"cannot pass a {type(host).__name__} listener to workers")
