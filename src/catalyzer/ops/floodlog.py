"""Log lines a client can trigger at will, at most one per kind per interval.

:class:`FloodLog` puts a :class:`~catalyzer.ops.ratelimit.RateLimiter` in front of
``twisted.logger``: the first event of a kind in an interval is logged as it is, the others are
counted, and when the interval ends one line says how many there were::

    400 to 127.0.0.1: malformed request line
    1532 more bad requests in the last 10s (one line per kind every 10s)

One timer, armed at the end of the earliest interval holding counted events, writes the
summaries; the clock is a parameter.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from catalyzer.ops.ratelimit import RateLimiter

__all__ = ["INTERVAL", "FloodLog"]

INTERVAL: Final = 10.0


class FloodLog:
    """Rate-limited logging on ``clock``. A kind (``"bad requests"``) names what is counted in
    the summary line."""

    def __init__(self, clock: IReactorTime, interval: float = INTERVAL) -> None:
        self.clock = clock
        self.limiter = RateLimiter(interval)
        self._where: dict[str, tuple[Logger, LogLevel]] = {}  # kind -> where its summary goes
        self._timer: IDelayedCall | None = None

    def admit(self, kind: str, logger: Logger, level: LogLevel) -> bool:
        """Whether to log this event of ``kind`` now (counted if not). A summary owed from an
        interval the timer has not reported yet is written first."""
        unreported = self.limiter.admit(kind, self.clock.seconds())
        self._where[kind] = (logger, level)
        if unreported is None:
            self._arm()
            return False
        if unreported:
            self._summary(kind, unreported)
        return True

    def emit(self, kind: str, logger: Logger, level: LogLevel, format: str, **fields: Any) -> None:
        """``logger.emit(level, format, **fields)``, unless ``kind`` was logged this interval."""
        if self.admit(kind, logger, level):
            logger.emit(level, format, **fields)

    def cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            return
        due = self.limiter.next_due()
        if due is not None:
            self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        due = self.limiter.next_due()
        for kind, count in self.limiter.due(now if due is None else max(now, due)):
            self._summary(kind, count)
        self._arm()

    def _summary(self, kind: str, count: int) -> None:
        logger, level = self._where[kind]
        logger.emit(
            level,
            "{count} more {kind} in the last {interval:g}s (one line per kind every {interval:g}s)",
            count=count,
            kind=kind,
            interval=self.limiter.interval,
        )
