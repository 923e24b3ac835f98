"""Keep-alive hand-off decisions: which connections a worker stuck in the app gives away, and
which worker the master passes each one to. Pure: plain values in, plain values out.

A worker running its app in the reactor thread (``threads 0``) cannot read its other
connections while one request is in the app. Once that request has been there ``handoff-after``
seconds, the worker's watchdog thread (:mod:`catalyzer.prefork.rescue`) gives every connection
that is idle between requests and has a request waiting unread in the kernel to the master, which
passes it to a worker that is not in the app. No byte moves in user space: only connections with
nothing read and nothing queued move, so nothing can be lost or reordered.

``handoff-after`` is the longest wait: :class:`HandoffDelay` shortens it, down to
:data:`FLOOR`, for a worker whose recent calls are all much shorter (see its docstring).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from typing import Final, NamedTuple

__all__ = [
    "FLOOR",
    "Candidate",
    "Drop",
    "HandoffDelay",
    "HandoffRouter",
    "Send",
    "WorkerView",
    "due",
    "movable",
    "pool_stuck",
]


class Candidate(NamedTuple):
    """One connection of a worker as the watchdog sees it while the app holds the reactor."""

    key: Hashable
    idle: bool  # OPEN, no response, nothing parsed or queued, reading not paused
    ended_at: float  # when its last response ended (0.0: none yet)
    write_empty: bool  # nothing queued for the client
    plain: bool  # a plain stream socket (TLS keeps state in user space: it cannot move)


def due(entered: float, now: float, after: float) -> bool:
    """Whether a worker in the app since ``entered`` (0.0: not in the app) should give its
    waiting connections away (``after`` 0: never)."""
    return after > 0 and entered > 0 and now - entered >= after


def pool_stuck(since: Sequence[float], now: float, after: float) -> bool:
    """Whether a worker whose app threads began their current calls at ``since`` (0.0: a
    thread waiting for a call) can start nothing for a while: every thread has been in its
    call ``after`` seconds at least (``after`` 0: never). The ``--threads`` counterpart of
    :func:`due`."""
    return after > 0 and bool(since) and 0.0 not in since and now - max(since) >= after


def movable(candidates: Iterable[Candidate], entered: float) -> list[Hashable]:
    """The keys of the connections that may move while the app call that began at ``entered``
    is running.

    A connection whose last response ended at or after ``entered`` is the one the app call is
    for (a streamed response that finished inside this call): the reactor thread is still
    running its code, so it stays. Every other connection was idle before the call began and
    the reactor thread cannot touch it until the call returns."""
    return [
        c.key for c in candidates if c.idle and c.write_empty and c.plain and c.ended_at < entered
    ]


# The shortest hand-off delay. Below it the watchdog would wake more often than every 5 ms for
# every worker, and the mixed-load tail it buys is already inside the 50 ms goal at 0.01 s
# (docs/prefork.md, "Measured").
FLOOR: Final = 0.01


class HandoffDelay:
    """How long one app call lasts before its worker's waiting connections move: ``after`` (the
    ``handoff-after`` setting) at most, shorter for a worker whose recent calls are all short.

    A call that outlasts the delay makes connections move, and a connection that moves while
    every worker is in the app waits in the master (:class:`HandoffRouter`): a delay shorter
    than the app's ordinary calls makes connections wander for nothing. So the delay is
    ``margin`` times the ``quantile`` of this worker's recent call durations (the upper bound
    of the histogram bucket it falls in), kept between :data:`FLOOR` and ``after``: an app
    whose calls take under a millisecond (a slow endpoint now and then does not move the
    quantile) gets the floor, one whose ordinary calls take 10 to 50 ms keeps ``after``.

    Fed the worker's cumulative duration histogram (the ``BUCKET`` counters of
    :mod:`catalyzer.ops.metrics`, which the worker keeps anyway: nothing is added to a
    request's path) every sampling period; the last ``window`` periods count. With fewer than
    ``enough`` calls in them (a quiet worker, or one in a long call) it knows too little and
    says ``after``."""

    def __init__(
        self,
        after: float,
        bounds: Sequence[float],
        floor: float = FLOOR,
        margin: float = 2.0,
        quantile: float = 0.99,
        window: int = 8,
        enough: int = 100,
    ) -> None:
        self.after = after
        self.floor = min(floor, after)
        self.margin = margin
        self.quantile = quantile
        self.enough = enough
        self._bounds = (*bounds, math.inf)
        self._last: list[int] | None = None
        self._periods: deque[list[int]] = deque(maxlen=window)
        self.current = after

    def observe(self, buckets: Sequence[int]) -> float:
        """One sample of the cumulative per-bucket call counts (``len(bounds) + 1`` of them,
        the last for longer calls); returns the delay from now on."""
        if len(buckets) != len(self._bounds):
            raise ValueError(f"{len(self._bounds)} buckets expected, not {len(buckets)}")
        counts = list(buckets)
        if self._last is not None:
            # A counter that went down (a new vector) starts over from this sample.
            self._periods.append([max(b - a, 0) for a, b in zip(self._last, counts, strict=True)])
        self._last = counts
        self.current = self._delay()
        return self.current

    def _delay(self) -> float:
        totals = [sum(column) for column in zip(*self._periods, strict=True)]
        calls = sum(totals)
        if calls < self.enough:
            return self.after
        rank = self.quantile * calls
        seen = 0
        for bound, count in zip(self._bounds, totals, strict=True):
            seen += count
            if seen >= rank:
                return min(self.after, max(self.floor, self.margin * bound))
        return self.after


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """A worker as the master sees it when routing: its record id, whether it serves, and
    whether its scoreboard says it is in the app."""

    id: int
    ready: bool
    in_app: bool


class Send(NamedTuple):
    """Pass the connection ``token`` to worker ``worker`` (it came from ``source`` at
    ``since``)."""

    token: int
    worker: int
    source: int
    since: float


class Drop(NamedTuple):
    """Close the connection ``token``: no worker is left to take it."""

    token: int
    reason: str


@dataclasses.dataclass
class _Held:
    source: int
    since: float
    prefer: int | None = None


class HandoffRouter:
    """The master's side: connections given away by busy workers wait here until a worker that
    is not in the app takes them, in arrival order: the worker named when it arrived if that one
    is idle (a connection given away for balance, :mod:`catalyzer.prefork.balance`), otherwise
    spread round-robin over the idle workers other than the one it came from.

    A connection held ``hold_limit`` seconds (every worker busy all along) goes back to the
    worker it came from, which answers it once its app call is over, as it would have without
    the hand-off; if that worker is gone, to any ready worker; with none, it is dropped."""

    def __init__(self, hold_limit: float) -> None:
        self.hold_limit = hold_limit
        self._held: dict[int, _Held] = {}
        self._turn = 0

    @property
    def holding(self) -> int:
        return len(self._held)

    def received(self, token: int, source: int, now: float, prefer: int | None = None) -> None:
        """A worker gave the connection ``token`` away (for worker ``prefer``, if named)."""
        self._held[token] = _Held(source, now, prefer)

    def undelivered(self, send: Send, now: float) -> Drop | None:
        """Carrying out ``send`` failed (the worker's socket was full, or it is gone): hold the
        connection again, still counted from when it first arrived, unless it has waited twice
        ``hold_limit`` already."""
        if now - send.since >= 2 * self.hold_limit:
            return Drop(send.token, "no worker took it in time")
        self._held[send.token] = _Held(send.source, send.since)
        return None

    def route(self, workers: Sequence[WorkerView], now: float) -> list[Send | Drop]:
        """What to do with every held connection now; the ones not named stay held."""
        ready = [w for w in workers if w.ready]
        idle = [w for w in ready if not w.in_app]
        commands: list[Send | Drop] = []
        for token, held in list(self._held.items()):
            target: int | None = None
            others = [w for w in idle if w.id != held.source] or idle
            if held.prefer is not None and any(w.id == held.prefer for w in idle):
                target = held.prefer
            elif others:
                target = others[self._turn % len(others)].id
                self._turn += 1
            elif now - held.since >= self.hold_limit:
                if any(w.id == held.source for w in ready):
                    target = held.source
                elif ready:
                    target = ready[0].id
                else:
                    del self._held[token]
                    commands.append(Drop(token, "no worker is left to take it"))
                    continue
            if target is not None:
                del self._held[token]
                commands.append(Send(token, target, held.source, held.since))
        return commands

    def forget_all(self) -> list[int]:
        """Stopping: every held token, to be closed."""
        tokens = list(self._held)
        self._held.clear()
        return tokens
