"""A named, cancellable wait: one ``IDelayedCall`` at most, armed and cancelled by its owner."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import interfaces

__all__ = ["Timer", "started"]


class Timer:
    """Calls ``callback`` once ``delay`` seconds after :meth:`start`, unless cancelled first.

    ``armed`` is false again once the callback has been called, so the callback may re-arm it.
    ``pending`` (the delayed call, or None) is public so that a hot path can skip a call to
    :meth:`cancel` on a timer that is not armed."""

    __slots__ = ("_callback", "_clock", "pending")

    def __init__(self, clock: interfaces.IReactorTime, callback: Callable[[], object]) -> None:
        self._clock = clock
        self._callback = callback
        self.pending: interfaces.IDelayedCall | None = None

    @property
    def armed(self) -> bool:
        return self.pending is not None

    def start(self, delay: float) -> None:
        """Arm the timer unless it is armed already (an armed timer keeps its deadline)."""
        if self.pending is None:
            self.pending = self._clock.callLater(delay, self._fire)

    def cancel(self) -> None:
        call = self.pending
        if call is not None:
            self.pending = None
            if call.active():
                call.cancel()

    def retire(self) -> None:
        """Cancel for good: the owner is gone. Drops the callback, usually a bound method of the
        owner, which holds this timer: a cycle that only the garbage collector would free."""
        call = self.pending  # cancel(), inlined: every timer a connection made retires with it
        if call is not None:
            self.pending = None
            if call.active():
                call.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        self.pending = None
        self._callback()


def _nothing() -> None:
    pass


def started(
    timer: Timer | None,
    clock: interfaces.IReactorTime,
    callback: Callable[[], object],
    delay: float,
) -> Timer:
    """``timer``, or a new one for ``callback`` if it is None, armed for ``delay`` unless it was
    armed already: the timer to keep. A connection has several waits and most are never armed
    (a Connection: close request arms none): making each on first use spares the objects, and
    their retirement, for every connection."""
    if timer is None:
        timer = Timer(clock, callback)
    timer.start(delay)
    return timer
