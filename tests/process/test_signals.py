"""Signal handlers: the action waits for the reactor's next turn, ``at_once`` runs in the handler."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from catalyzer.process import signals


class QueueingReactor:
    """Records what a handler hands to the reactor thread, without running it."""

    def __init__(self) -> None:
        self.queued: list[Callable[..., object]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.queued.append(f)


@pytest.fixture
def restore_usr2() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.usefixtures("restore_usr2")
def test_action_is_queued_and_at_once_runs_inside_the_handler() -> None:
    reactor = QueueingReactor()
    seen: list[str] = []

    def action() -> None:
        seen.append("action")

    signals.install(
        reactor, {signal.SIGUSR2: action}, at_once={signal.SIGUSR2: lambda: seen.append("now")}
    )
    os.kill(os.getpid(), signal.SIGUSR2)  # Python runs the handler before the next bytecode
    assert seen == ["now"]
    assert reactor.queued == [action]


@pytest.mark.usefixtures("restore_usr2")
def test_without_at_once_nothing_runs_before_the_reactor_turn() -> None:
    reactor = QueueingReactor()
    seen: list[str] = []
    signals.install(reactor, {signal.SIGUSR2: lambda: seen.append("action")})
    os.kill(os.getpid(), signal.SIGUSR2)
    assert seen == []
    assert len(reactor.queued) == 1
    reactor.queued[0]()
    assert seen == ["action"]
