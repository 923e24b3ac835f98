"""Installing signal handlers that only enqueue work for the reactor thread."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from catalyzer.ops import trace


def install(reactor: Any, actions: Mapping[signal.Signals, Callable[[], object]]) -> None:
    """Route each signal to its action, run by the reactor on its next turn. Call this once the
    reactor runs, so that these handlers replace the reactor's own defaults."""
    for signum, action in actions.items():

        def handler(_signum: int, _frame: object, action: Callable[[], object] = action) -> None:
            if trace.ENABLED:
                reactor.callFromThread(trace.emit, "signal", signal=signal.Signals(_signum).name)
            reactor.callFromThread(action)

        signal.signal(signum, handler)
