"""Making room at ``max-connections``: the I/O shell around :mod:`catalyzer.server.shedding`.

Each connection accepted at the limit sheds the connection making least progress; when none can
go, accepting pauses and is looked at again when the first too-young connection may go, at the
latest every :data:`~catalyzer.server.shedding.RECHECK` seconds, and whenever a connection
closes (:class:`~catalyzer.server.channel.ServerState` asks :meth:`RoomMaker.open_count`).

Working out the order looks at every open connection, so it is worked out at most once per
:data:`~catalyzer.server.shedding.REBUILD` (a :class:`~catalyzer.server.shedding.ShedQueue`)
and consumed by each accept in that time, not recomputed for each: a burst accepted in one
wake-up, and a prefork worker accepting one connection per wake-up at the limit (1,000
connections each shedding one a millisecond made it quadratic: fast clients kept 11% of their
throughput). Nothing is missed by keeping it that long: a connection accepted since is younger
than ``MIN_AGE``, one busy then is idle for less than ``MIN_IDLE``, and a kept entry is used
only if its connection still stands where it stood, since the same time. Under a re-opening
attack, working it out again every ``RECHECK`` (each time accepting paused for a connection to
come of age) was the largest part of the server's cost per accept-and-shed cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from catalyzer.ops.floodlog import FloodLog
from catalyzer.server.shedding import REBUILD, RECHECK, Candidate, ShedQueue, Standing
from catalyzer.server.timer import Timer

if TYPE_CHECKING:
    from catalyzer.server.channel import Connection

__all__ = ["RoomMaker", "Sheddable", "log_shed"]

log = Logger(namespace="catalyzer.http")


class Sheddable(Protocol):
    """A connection that may be shed: an HTTP channel, or one held at the limit
    (:mod:`catalyzer.server.holding`)."""

    def shedding_candidate(self) -> Candidate[Sheddable] | None: ...

    def shed(self) -> None: ...

    def unread_bytes(self) -> bool: ...


def log_shed(flood: FloodLog, waiting: bool, peer: str) -> None:
    """The line (one per interval, with a count) for a connection shed to make room: one whose
    request had not all arrived (``waiting``), or an idle one."""
    flood.emit(
        "shed connections",
        log,
        LogLevel.info,
        "max-connections: closing {what} from {peer} to make room",
        what="a connection with an incomplete request" if waiting else "an idle connection",
        peer=peer,
    )


class RoomMaker:
    """Sheds connections from ``channels`` (the server's own set) beyond ``limit``.
    ``accepting()`` says whether the server accepts now, ``stopping()`` whether it is
    draining (then it never accepts again); ``set_accepting(on)`` starts or stops its listening
    ports."""

    def __init__(
        self,
        channels: set[Connection],
        limit: int,
        clock: IReactorTime,
        flood: FloodLog,
        *,
        accepting: Callable[[], bool],
        stopping: Callable[[], bool],
        set_accepting: Callable[[bool], None],
    ) -> None:
        self.channels = channels
        self.limit = limit
        self.clock = clock
        self.flood = flood
        self.accepting = accepting
        self.stopping = stopping
        self.set_accepting = set_accepting
        self.shed: set[object] = set()  # shed, not gone yet: no longer counted
        self._order: ShedQueue[Sheddable] | None = None  # the order being consumed
        self._timer = Timer(clock, self._check)

    def open_count(self) -> int:
        """Connections that count towards the limit (those being shed do not)."""
        return len(self.channels) - len(self.shed)

    def forget(self, channel: Connection) -> None:
        """``channel`` is gone."""
        self.shed.discard(channel)

    def make_room(self) -> None:
        """A connection came in at the limit: shed as many as are over it; if no further one
        could go for the next, stop accepting."""
        over = self.open_count() - self.limit
        while over > 0 and (victim := self._next_victim()) is not None:
            self.shed.add(victim)
            victim.shed()
            over -= 1
        if self._next_victim(consume=False) is not None:
            return  # room for the next one: it will shed this one
        if self.accepting():
            self.set_accepting(False)
            self.flood.emit(
                "max-connections pauses",
                log,
                LogLevel.warn,
                "{n} connections open (max-connections), none of them can be shed now: not "
                "accepting until one closes or can be",
                n=self.open_count(),
            )
        self._arm()

    def _candidates_now(self) -> list[Candidate[Sheddable]]:
        candidates = []
        for c in self.channels:
            if c not in self.shed:
                candidate = c.shedding_candidate()
                if candidate is not None:
                    candidates.append(candidate)
        return candidates

    def _next_victim(self, consume: bool = True) -> Sheddable | None:
        """The connection to shed next, least progress first, leaving out one whose client has
        sent bytes not read yet (it is about to make progress) and any that changed since the
        order was worked out."""
        now = self.clock.seconds()
        queue = self._order
        # Also when it ran out: the connections accepted since it was made are all that is left.
        if queue is None or now - queue.made >= REBUILD or (not queue and now > queue.made):
            queue = self._order = ShedQueue(self._candidates_now(), now)
        return queue.next(now, self._unchanged, consume)

    def _unchanged(self, candidate: Candidate[Sheddable]) -> bool:
        channel = candidate.key
        if channel in self.shed:
            return False
        current = channel.shedding_candidate()
        return not (
            current is None
            or current.standing is not candidate.standing
            or current.since != candidate.since
            or (candidate.standing is not Standing.HEADERS and channel.unread_bytes())
        )

    def _arm(self) -> None:
        """Accepting is paused: look again when the first connection too young to be shed may
        go, and at the latest after RECHECK (connections accepted in the same burst, or a
        keep-alive one gone idle, make room without any closing)."""
        if self._timer.armed:
            return
        if self._order is None:
            self._next_victim(consume=False)  # works out this turn's order
        assert self._order is not None
        now = self.clock.seconds()
        wake = self._order.eligible_at(now)
        self._timer.start(RECHECK if wake is None else min(RECHECK, max(0.0, wake - now)))

    def _check(self) -> None:
        if self.accepting() or self.stopping():
            return
        if self.open_count() < self.limit or self._next_victim(consume=False) is not None:
            self.set_accepting(True)  # the next connection in will make room for itself
        else:
            self._arm()
