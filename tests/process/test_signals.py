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
        self.when_running: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.queued.append(f)

    def callWhenRunning(self, f: Callable[..., object], *args: object) -> None:
        self.when_running.append((f, args))


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


@pytest.mark.usefixtures("restore_usr2")
def test_take_over_handles_signals_before_the_reactor_runs_and_after_it_starts() -> None:
    reactor = QueueingReactor()
    seen: list[str] = []

    def action() -> None:
        seen.append("action")

    signals.take_over(reactor, {signal.SIGUSR2: action})
    # Signalled before the reactor's first turn: queued, not the interpreter's default.
    os.kill(os.getpid(), signal.SIGUSR2)
    assert reactor.queued == [action]
    # Starting, a reactor puts in its own handlers; ours go back in once it runs.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert reactor.queued == [action]
    for f, args in reactor.when_running:
        f(*args)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert reactor.queued == [action, action]
    assert seen == []
