"""Test helpers: drive catalyzer's HTTP engine in memory, with no sockets and a fake clock.

from catalyzer.testing import InMemoryServer

server = InMemoryServer(my_wsgi_app, header_timeout=5)
conn = server.connect()
conn.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
assert conn.output().startswith(b"HTTP/1.1 200 ")
server.clock.advance(5)  # fire timers
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from catalyzer.server.channel import HTTPChannel, ServerState
from catalyzer.settings import BY_NAME, Config
from catalyzer.wsgi.types import WSGIApp

__all__ = ["InMemoryConnection", "InMemoryServer"]


class InMemoryConnection:
    """One client connection to an :class:`InMemoryServer`."""

    def __init__(self, server: ServerState, port: int) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
        )
        self.channel = HTTPChannel(server)
        Protocol.makeConnection(self.channel, self.transport)
        self._read = 0

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.transport.disconnecting or self.channel.disconnected:
                return
            self.channel.dataReceived(data[i : i + 1])

    def output(self) -> bytes:
        """Everything written to the client so far."""
        value: bytes = self.transport.value()
        return value

    def new_output(self) -> bytes:
        """What was written since the last call."""
        value: bytes = self.transport.value()
        new, self._read = value[self._read :], len(value)
        return new

    @property
    def closed(self) -> bool:
        """The server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting) or self.channel.disconnected

    def lose(self, reason: BaseException | None = None) -> None:
        """The client goes away."""
        if not self.channel.disconnected:
            self.channel.connectionLost(Failure(reason or ConnectionError("client gone")))

    def finish_close(self) -> None:
        """Complete a close the server asked for, as the reactor would once output is flushed."""
        if self.transport.disconnecting:
            self.lose()


class InMemoryServer:
    """An HTTP engine bound to nothing: connections are :class:`InMemoryConnection` objects.

    Settings are keyword arguments with underscores (``max_body=1024``).
    """

    def __init__(self, app: WSGIApp, clock: Clock | None = None, **settings: Any) -> None:
        self.clock = clock or Clock()
        values: dict[str, object] = {"app": "in.memory:app"}
        for key, value in settings.items():
            name = key.replace("_", "-")
            if name not in BY_NAME:
                raise TypeError(f"unknown setting {key!r}")
            values[name] = value
        self.config = Config.from_values(values)
        self.state = ServerState(app, self.config, self.clock)
        self._next_port = 40000

    def connect(self) -> InMemoryConnection:
        self._next_port += 1
        return InMemoryConnection(self.state, self._next_port)

    def request(self, raw: bytes) -> bytes:
        """Send ``raw`` on a fresh connection and return everything the server wrote."""
        conn = self.connect()
        conn.send(raw)
        return conn.output()
