"""At most one log line per kind of event per interval: the rest are counted, not written.

A client can make the server log at will (malformed requests, timeouts, connections it drops,
connections past the file-descriptor limit); at thousands of lines a second the log itself
becomes the outage. :class:`RateLimiter` is the decision, fed a key and the time: the first event
of a key in an interval passes, the following ones are counted, and once the interval is over
:meth:`RateLimiter.due` hands back each key's count, for one summary line. Pure: no clock, no I/O
(:class:`catalyzer.ops.floodlog.FloodLog` is the Twisted side).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass
class _Window:
    started: float
    suppressed: int = 0


class RateLimiter:
    """Per key: one event per ``interval`` seconds passes."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError("interval must be above 0")
        self.interval = interval
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, now: float) -> int | None:
        """None: count this event and say nothing. Otherwise log it, after a summary of the
        returned number of events of the previous interval not reported yet (usually 0:
        :meth:`due` reports them when the interval ends)."""
        window = self._windows.get(key)
        if window is not None and now < window.started + self.interval:
            window.suppressed += 1
            return None
        self._windows[key] = _Window(now)
        return window.suppressed if window is not None else 0

    def next_due(self) -> float | None:
        """When the earliest interval holding counted events ends (None: nothing counted)."""
        ends = [w.started + self.interval for w in self._windows.values() if w.suppressed]
        return min(ends) if ends else None

    def due(self, now: float) -> list[tuple[str, int]]:
        """``(key, count)`` for every interval over by ``now`` that counted events; those
        intervals are forgotten (as are the ones over with nothing counted)."""
        out: list[tuple[str, int]] = []
        for key, window in list(self._windows.items()):
            if now >= window.started + self.interval:
                del self._windows[key]
                if window.suppressed:
                    out.append((key, window.suppressed))
        return out
