"""Connections' file descriptors between the master and its workers (``SCM_RIGHTS``).

Each worker has a ``SOCK_SEQPACKET`` socketpair with the master, next to its AMP control channel:
one message carries one descriptor, so a message boundary is never in doubt and no stream
framing is needed. Both ends are non-blocking: a full socket is a failed send the caller decides
about, never a stall. The decisions are in :mod:`catalyzer.prefork.handoff`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import error, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FdReader", "pair", "receive_fds", "send_fd"]

log = Logger(namespace="catalyzer.prefork.fdpass")

_TAG = b"c"  # a message must carry at least one byte for its descriptor to travel


def pair() -> tuple[socket.socket, socket.socket]:
    """(master's end, worker's end), both non-blocking."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left.setblocking(False)
    right.setblocking(False)
    return left, right


def send_fd(sock: socket.socket, fd: int) -> bool:
    """Send a duplicate of ``fd``; False if the socket cannot take it now (full, or the peer
    is gone). The caller still owns ``fd``."""
    try:
        socket.send_fds(sock, [_TAG], [fd], socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def receive_fds(sock: socket.socket) -> tuple[list[int], bool]:
    """Every descriptor waiting on ``sock`` (now owned by the caller), and whether the peer has
    closed its end."""
    fds: list[int] = []
    while True:
        try:
            data, received, flags, _ = socket.recv_fds(sock, 16, 1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return fds, False
        except OSError:
            return fds, True
        if flags & socket.MSG_CTRUNC:
            # Out of descriptors here (EMFILE): the kernel closed the one sent, and with it our
            # share of the connection. The sender closed its own, so the client sees a close.
            log.warn("a connection handed over was lost: no file descriptor left to receive it")
        fds.extend(received)
        if not data and not received:
            return fds, True


@implementer(interfaces.IReadDescriptor)
class FdReader:
    """Calls ``on_fd(fd)`` in the reactor thread for each descriptor arriving on ``sock``, and
    ``on_closed()`` once when the peer has closed its end. ``on_fd`` owns the descriptor."""

    def __init__(
        self,
        reactor: Any,
        sock: socket.socket,
        on_fd: Callable[[int], object],
        on_closed: Callable[[], object] = lambda: None,
    ) -> None:
        self.reactor = reactor
        self.sock = sock
        self.on_fd = on_fd
        self.on_closed = on_closed
        self._closed = False

    def start(self) -> None:
        self.reactor.addReader(self)

    def stop(self) -> None:
        """Stop reading and close our end (descriptors still queued are closed by the kernel)."""
        if not self._closed:
            self._closed = True
            self.reactor.removeReader(self)
            self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "fdpass"

    def doRead(self) -> Failure | None:
        fds, closed = receive_fds(self.sock)
        for fd in fds:
            try:
                self.on_fd(fd)
            except Exception:  # on_fd closes what it could not take; this is a bug
                log.failure("taking a connection handed over")
        if closed:
            # The reactor wants an exception instance here (it wraps it), whatever the stub says.
            return error.ConnectionDone()  # type: ignore[return-value]
        return None

    def connectionLost(self, reason: object) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()
            self.on_closed()
