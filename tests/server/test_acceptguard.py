"""A port's accept errors: one line per interval, accepting paused a moment after each."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from catalyzer.ops.floodlog import FloodLog
from catalyzer.server import twistedprivate
from catalyzer.server.acceptguard import ACCEPT_PAUSE, AcceptGuard


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class FakePort:
    """What the guard uses of a twisted.internet.tcp.Port."""

    def __init__(self) -> None:
        from twisted.logger import Logger

        self._logger = Logger(namespace="twisted.internet.tcp.Port")
        self.reading = True
        self.connected = True
        self.disconnecting = False

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    def refuse(self) -> None:
        """What Port.doRead logs for one connection refused at EMFILE (reserve available)."""
        self._logger.info("EMFILE encountered; releasing reserved file descriptor.")
        self._logger.info("EMFILE recovery: Closed socket from {address}", address="x")
        self._logger.info("Re-reserving EMFILE recovery file descriptor.")


def test_three_lines_per_refusal_become_one_per_interval(logged: list[str]) -> None:
    clock = Clock()
    port = FakePort()
    wanted = [True]
    guard = AcceptGuard(port, FloodLog(clock, interval=10.0), clock, lambda: wanted[0])
    for _ in range(100):
        port.refuse()
        assert not port.reading  # paused after the error
        clock.advance(ACCEPT_PAUSE)
        assert port.reading  # and accepting again
    assert guard.paused == 100
    twisted_lines = [line for line in logged if "EMFILE" in line]
    assert twisted_lines == ["EMFILE encountered; releasing reserved file descriptor."]
    clock.advance(10.0)
    assert logged[-1] == "299 more accept errors in the last 10s (one line per kind every 10s)"
    assert len(logged) == 2


def test_no_resume_when_the_server_no_longer_accepts() -> None:
    clock = Clock()
    port = FakePort()
    wanted = [True]
    AcceptGuard(port, FloodLog(clock), clock, lambda: wanted[0])
    port.refuse()
    wanted[0] = False  # max-connections reached, or stopping, meanwhile
    clock.advance(ACCEPT_PAUSE)
    assert not port.reading


def test_routes_a_real_ports_accept_log() -> None:
    port = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # never listens
    assert twistedprivate.has_accept_log(port)
    seen: list[dict[str, Any]] = []
    before = twistedprivate.route_accept_log(port, seen.append)
    assert before is globalLogPublisher
    port._logger.info("EMFILE encountered")
    assert [e["log_format"] for e in seen] == ["EMFILE encountered"]
    assert not twistedprivate.has_accept_log(object())
