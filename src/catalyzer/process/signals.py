"""Installing signal handlers that only enqueue work for the reactor thread."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from catalyzer.ops import trace


def install(
    reactor: Any,
    actions: Mapping[signal.Signals, Callable[[], object]],
    at_once: Mapping[signal.Signals, Callable[[], object]] | None = None,
) -> None:
    """Route each signal to its action, run by the reactor on its next turn (see
    :func:`take_over` for when to call it).

    ``at_once[signum]`` runs inside the handler itself, before the action is queued: for a
    blocking app running in the reactor thread, the next turn comes only once the app returns,
    too late for what the app's response should already know (that the process is stopping).
    It runs between two bytecodes of whatever the main thread is doing, so it may only set
    plain attributes."""
    immediate = at_once or {}
    for signum, action in actions.items():
        first = immediate.get(signum)

        def handler(
            _signum: int,
            _frame: object,
            action: Callable[[], object] = action,
            first: Callable[[], object] | None = first,
        ) -> None:
            if first is not None:
                first()
            if trace.ENABLED:
                reactor.callFromThread(trace.emit, "signal", signal=signal.Signals(_signum).name)
            reactor.callFromThread(action)

        signal.signal(signum, handler)


def take_over(
    reactor: Any,
    actions: Mapping[signal.Signals, Callable[[], object]],
    at_once: Mapping[signal.Signals, Callable[[], object]] | None = None,
) -> None:
    """:func:`install` now, and again once the reactor runs (starting, it puts in its own
    handlers). Call it before listening: a process whose log already says it listens may be
    signalled before its reactor's first turn, and the interpreter's default handlers would
    end it with a ``KeyboardInterrupt`` traceback or kill it outright; ours queue the action,
    which runs on that first turn."""
    install(reactor, actions, at_once)
    reactor.callWhenRunning(install, reactor, actions, at_once)
