"""Connections accepted at ``max-connections``, held as bare sockets until their head is in.

Under a slowloris attack that re-opens every connection it loses, each connection accepted at the
limit sheds one (:mod:`catalyzer.server.roommaker`), and the attacker opens another at once: the
server runs an accept-and-shed cycle for every connection that comes of age, some 1,200 a second
per process at max-connections 1000. With a whole channel per connection (transport, parser,
timers, a reset's delayed ``connectionLost``) a cycle cost about 100 us of CPU, which fast clients
paid for with 15 to 20% of their throughput. A connection accepted at the limit whose request
head has not fully arrived is therefore held as a bare socket in an edge-triggered ``epoll`` of
its own, registered with the reactor as one descriptor: nothing is read from it (each wake-up
peeks at what has arrived), so once its head is complete (or too long, or not HTTP) it becomes an
ordinary connection that reads its request from the kernel itself, whole and in order. Shedding a
held connection is one ``close(2)`` (the unread head makes it a reset, as aborting a channel
does); the attacker's header line a second per connection is one peek.

A held connection counts towards the limit and stands in the shedding order as a connection
with an incomplete head (or a silent one, if nothing has arrived), oldest first; its header
timeout runs from its accept, as a channel's does, and ends it with a 408.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from catalyzer.http.framing import simple_response
from catalyzer.server.roommaker import log_shed
from catalyzer.server.shedding import Candidate, Standing
from catalyzer.server.timer import Timer
from catalyzer.server.transportsink import bytes_waiting

if TYPE_CHECKING:
    from catalyzer.server.channel import ServerState
    from catalyzer.server.roommaker import Sheddable
    from catalyzer.wsgi.environ import ConnectionInfo
    from catalyzer.wsgi.sink import Responder

__all__ = ["HeadWatch", "HeldConnection"]

log = Logger(namespace="catalyzer.http")

_WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_GONE = select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
# How often held connections are looked at for their header timeout.
_SWEEP = 1.0
_TIMEOUT_BODY = b"408 Request Timeout\n"
_NOTHING_YET = -1  # a peek that found nothing (0 is the end of the stream)


def head_complete(data: bytes | bytearray, size: int) -> bool:
    """Whether the first ``size`` bytes of ``data`` (what has arrived) are ready for the request
    reader: a whole head, or something the reader will refuse at once (not an HTTP method's
    first letter)."""
    if size <= 0:
        return False
    if not 65 <= data[0] <= 90:  # methods are upper-case tokens: anything else is the reader's 400
        return True
    return data.find(b"\r\n\r\n", 0, size) >= 0 or data.find(b"\n\n", 0, size) >= 0


class HeldConnection:
    """A connection in the server's count while held: a :class:`Connection` with no request yet."""

    __slots__ = ("_watch", "address", "fd", "opened", "port", "sock", "standing")

    info: ConnectionInfo | None = None
    requests = 0
    response: Responder | None = None
    receiving = True

    def __init__(
        self, watch: HeadWatch, sock: socket.socket, address: Any, port: Any, opened: float
    ) -> None:
        self._watch = watch
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.port = port
        self.opened = opened
        self.standing = Standing.SILENT

    def shedding_candidate(self) -> Candidate[Sheddable]:
        return Candidate(self, self.standing, self.opened)

    def unread_bytes(self) -> bool:
        return bytes_waiting(self.sock)

    def shed(self) -> None:
        peer = self.address[0] if isinstance(self.address, tuple) else "?"
        log_shed(self._watch.server.flood, True, peer)
        self._watch.close(self)

    def drain(self) -> None:
        self._watch.close(self)

    def abort(self, why: str) -> None:
        self._watch.close(self)


class HeadWatch:
    """The held connections of one process, and the reactor descriptor that watches them (an
    ``IReadDescriptor``: the epoll's own file descriptor, readable when a held socket is)."""

    def __init__(self, server: ServerState, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.held: dict[int, HeldConnection] = {}
        self._order: deque[HeldConnection] = deque()  # by accept time, for the header timeout
        self._poll = select.epoll()
        limits = server.limits
        self._buffer = bytearray(limits.max_request_line + limits.max_header_bytes + 4)
        self._sweep = Timer(server.clock, self._timeouts)

    # -- what the accept loop calls

    def hold(self, sock: socket.socket, address: Any, port: Any) -> bool:
        """Keep ``sock`` (just accepted at the limit) until its head is in; False if it is in
        already (or ready for the reader), so the caller serves it at once."""
        arrived = self._peek(sock)
        if arrived is None or arrived == 0:
            return False  # broken or ended already: the ordinary path meets that and closes
        if arrived > 0 and (head_complete(self._buffer, arrived) or arrived == len(self._buffer)):
            return False
        held = HeldConnection(self, sock, address, port, self.server.clock.seconds())
        if arrived > 0:
            held.standing = Standing.HEADERS
        self._poll.register(held.fd, _WATCH)
        if not self.held:
            self.reactor.addReader(self)
            self._sweep.start(_SWEEP)
        self.held[held.fd] = held
        self._order.append(held)
        self.server.connection_made(held)
        return True

    # -- IReadDescriptor

    def fileno(self) -> int:
        return self._poll.fileno()

    def logPrefix(self) -> str:
        return "HeadWatch"

    def doRead(self) -> None:
        for fd, events in self._poll.poll(0):
            held = self.held.get(fd)
            if held is None:
                continue
            arrived = self._peek(held.sock)
            if arrived is None or arrived == 0:
                self.close(held)  # the client left (or reset)
            elif arrived == _NOTHING_YET:
                if events & _GONE:
                    self.close(held)
            elif head_complete(self._buffer, arrived) or arrived == len(self._buffer):
                self._promote(held)
            elif events & _GONE:
                self.close(held)  # it finished sending without finishing its head
            else:
                held.standing = Standing.HEADERS

    def connectionLost(self, reason: object) -> None:
        for held in list(self.held.values()):
            self.close(held)

    # -- ending a hold

    def close(self, held: HeldConnection) -> None:
        """Close a held connection: with its head unread, the kernel resets it."""
        if self.held.pop(held.fd, None) is None:
            return
        held.sock.close()  # closing the descriptor also takes it out of the epoll
        self._released()
        self.server.connection_lost(held)

    def _promote(self, held: HeldConnection) -> None:
        """Its head is in: an ordinary connection from here on, which reads it itself."""
        del self.held[held.fd]
        self._poll.unregister(held.fd)
        self._released()
        self.server.connection_lost(held)
        try:
            held.port._catalyzer_light(held.sock, held.address)
        except Exception:
            # As the accept loop does; raised out of doRead it would end every held connection.
            log.failure("unhandled error accepting a connection")

    def _released(self) -> None:
        if not self.held:
            self.reactor.removeReader(self)
            self._order.clear()
            self._sweep.cancel()

    def _timeouts(self) -> None:
        """Answer 408 and close each held connection older than the header timeout."""
        deadline = self.server.clock.seconds() - self.server.config.header_timeout
        order = self._order
        expired = 0
        while order and order[0].opened <= deadline:
            held = order.popleft()
            if self.held.get(held.fd) is held:
                expired += 1
                with contextlib.suppress(OSError):  # best effort: gone, or not reading
                    held.sock.send(self._timeout_response(), socket.MSG_DONTWAIT)
                self.server.metrics.observe(408, 0.0, len(_TIMEOUT_BODY))
                self.close(held)
        if expired:
            self.server.flood.emit(
                "timeouts",
                log,
                LogLevel.info,
                "408 to {n} connections held at max-connections: request headers not received "
                "in time",
                n=expired,
            )
        if self.held:
            self._sweep.start(_SWEEP)

    def _timeout_response(self) -> bytes:
        return simple_response(408, "Request Timeout", self.server.date(), _TIMEOUT_BODY)

    def _peek(self, sock: socket.socket) -> int | None:
        """How many bytes have arrived (0: the end of the stream, ``_NOTHING_YET``: none), or
        None if the socket is broken."""
        try:
            return sock.recv_into(self._buffer, len(self._buffer), _PEEK)
        except BlockingIOError:
            return _NOTHING_YET
        except OSError:
            return None
