"""Rate-limited log lines on a Clock: the first line, then one summary per interval."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from catalyzer.ops.floodlog import FloodLog


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def logger(lines: list[str]) -> Iterator[Logger]:
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    yield Logger(namespace="test", observer=observe)


def test_one_line_then_a_count_per_interval(logger: Logger, lines: list[str]) -> None:
    clock = Clock()
    flood = FloodLog(clock, interval=10.0)
    for n in range(1000):
        flood.emit("bad requests", logger, LogLevel.info, "400 to {peer}", peer=n)
        clock.advance(0.001)
    assert lines == ["400 to 0"]
    clock.advance(10.0 - 1.0 - 0.001)
    assert lines == ["400 to 0"]  # 9.999s after the first one
    clock.advance(0.001)
    assert lines == [
        "400 to 0",
        "999 more bad requests in the last 10s (one line per kind every 10s)",
    ]
    assert clock.getDelayedCalls() == []  # nothing counted since: no timer
    flood.emit("bad requests", logger, LogLevel.info, "400 to {peer}", peer="again")
    assert lines[-1] == "400 to again"


def test_kinds_are_counted_apart(logger: Logger, lines: list[str]) -> None:
    clock = Clock()
    flood = FloodLog(clock, interval=5.0)
    for _ in range(3):
        flood.emit("timeouts", logger, LogLevel.info, "408")
        flood.emit("bad requests", logger, LogLevel.info, "400")
    clock.advance(5.0)
    assert sorted(lines) == sorted(
        [
            "408",
            "400",
            "2 more timeouts in the last 5s (one line per kind every 5s)",
            "2 more bad requests in the last 5s (one line per kind every 5s)",
        ]
    )


def test_cancel_leaves_no_timer(logger: Logger) -> None:
    clock = Clock()
    flood = FloodLog(clock)
    flood.emit("k", logger, LogLevel.info, "x")
    flood.emit("k", logger, LogLevel.info, "x")
    assert len(clock.getDelayedCalls()) == 1
    flood.cancel()
    assert clock.getDelayedCalls() == []
