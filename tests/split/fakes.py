"""Test doubles for split mode's shells: a ZeroMQ connection that records what is sent."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from catalyzer.split.frames import Kind, Message, decode
from catalyzer.split.zmqio import SendResult


class FakeConnection:
    """Stands in for :class:`catalyzer.split.zmqio.ZmqConnection`."""

    def __init__(self, routed: bool = False) -> None:
        self.routed = routed  # a ROUTER: the first frame of each message is the peer
        self.sent: list[list[bytes]] = []
        self.on_message: Callable[[list[bytes]], None] = lambda frames: None
        self.result = SendResult.SENT
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def send(self, frames: Sequence[bytes | memoryview]) -> SendResult:
        if self.result is SendResult.SENT:
            self.sent.append([bytes(f) for f in frames])
        return self.result

    def messages(self) -> list[Message]:
        return [decode(f[1:] if self.routed else f) for f in self.sent]

    def kinds(self) -> list[Kind]:
        return [m.kind for m in self.messages()]

    def take(self) -> list[Message]:
        """The messages sent since the last call."""
        out = self.messages()
        self.sent.clear()
        return out
