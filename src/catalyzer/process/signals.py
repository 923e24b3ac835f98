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
    """Route each signal to its action, run by the reactor on its next turn. Call this once the
    reactor runs, so that these handlers replace the reactor's own defaults.

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
