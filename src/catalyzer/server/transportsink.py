"""The part of :class:`~catalyzer.wsgi.sink.ResponseSink` every connection that writes a response
to its own transport as it is shares: the HTTP face and the uwsgi face (FastCGI wraps its output
in records: :class:`catalyzer.server.gateway.FastCGIStdout`)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.protocol import Protocol

from catalyzer.server import twistedprivate

__all__ = ["TransportSink", "bytes_waiting", "send_now"]


class TransportSink(Protocol):
    """Writes, back-pressure and ``sendfile`` straight onto the transport; ``_socket`` is the
    plain TCP socket under it (None for TLS and others), set by the subclass."""

    _socket: socket.socket | None = None

    def write(self, data: bytes) -> None:
        send_now(self.transport, self._socket, data)

    def write_sequence(self, data: list[bytes]) -> None:
        self.transport.writeSequence(data)  # type: ignore[union-attr]

    def register_producer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]

    def unregister_producer(self) -> None:
        self.transport.unregisterProducer()  # type: ignore[union-attr]

    def start_writing(self) -> None:
        transport: Any = self.transport
        transport.startWriting()

    def abort_connection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def sendfile_socket(self) -> socket.socket | None:
        return self._socket

    def close_now(self) -> bool:
        """Close the connection at once if nothing is queued on a plain TCP connection (see
        :func:`~catalyzer.server.twistedprivate.close_flushed`): True if it is closed and its
        ``connectionLost`` has run; otherwise nothing is done."""
        return self._socket is not None and twistedprivate.close_flushed(self.transport)

    def unread_bytes(self) -> bool:
        """Whether the peer has sent bytes the reactor has not read yet (plain TCP only: a peek
        at the socket; a TLS connection says no)."""
        sock = self._socket
        return sock is not None and bytes_waiting(sock)

    def resume_when_writable(self) -> None:
        twistedprivate.resume_producer_when_drained(self.transport)

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        sock = self._socket
        transport: Any = self.transport
        if (
            sock is None
            or transport.disconnecting
            or not twistedprivate.write_buffer_empty(transport)
        ):
            return None
        try:
            return sock.sendmsg(pieces)
        except BlockingIOError:
            return 0


def send_now(transport: Any, sock: socket.socket | None, data: bytes) -> None:
    """Send ``data`` now if the transport has nothing queued, else queue it.

    Twisted's ``write`` always queues and sends on the next reactor turn: for a small
    response that is an epoll registration, a wake-up and a deregistration per request.
    When the transport's buffer is empty, sending straight away keeps the order and saves
    all that; whatever the socket does not take goes through ``transport.write`` as usual.
    ``sock`` is the plain TCP socket under ``transport`` (None for TLS and others: queued).
    """
    if (
        sock is not None
        and twistedprivate.write_buffer_empty(transport)
        and not transport.disconnecting
    ):
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # let the transport meet the error and report it its own way
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def bytes_waiting(sock: socket.socket) -> bool:
    """Whether the peer has sent bytes not read yet: a peek, which reads nothing."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the connection is broken
        return False
