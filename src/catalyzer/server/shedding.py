"""Which connections to close to make room at ``max-connections``: the ones making least progress.

Stopping accepting at the limit hands the server to whoever holds the connections: a slowloris
client opening hundreds of connections and sending a header byte now and then (re-opening each
one that is closed) keeps real clients waiting in the listen backlog. Instead, once the limit is
reached, every new connection costs the connection that is furthest from being answered:

1. one whose request headers have begun and are incomplete, oldest first;
2. then an idle keep-alive connection, idle longest first;
3. then one that has sent nothing yet, oldest first. It is a slowloris too (connect and wait),
   but also what a client's new connection looks like until the server has read its request:
   under load a worker's reactor may take a while to get to it, so these go last.

A connection whose request is complete (its body arriving, its response being made or sent) is
never chosen, nor one younger than ``min_age`` (it has had no time to send its request: a client
connecting in the same instant as a burst of attackers), nor a keep-alive connection idle for
less than ``min_idle`` (its client is between two requests). When nothing can be chosen, the server
pauses accepting until a connection closes or, if some are only too young, until
:func:`eligible_at` says the first of them may go.

Pure: the channel describes itself as a :class:`Candidate`; :func:`order` (and :func:`choose`)
define the order, and :class:`ShedQueue` gives the same order one connection at a time, cheaply,
for the server to walk: it must look at a socket as it goes (a silent or idle connection whose
client has sent bytes the reactor has not read yet is skipped: the server peeks, since it is
about to make progress).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = [
    "MIN_AGE",
    "MIN_IDLE",
    "REBUILD",
    "RECHECK",
    "Candidate",
    "ShedQueue",
    "Standing",
    "choose",
    "eligible_at",
    "order",
]

K = TypeVar("K")

# How long a new connection is left alone, whatever it has sent. This also bounds the churn an
# attacker that re-opens every closed connection can cause: at most max-connections / MIN_AGE
# accept-and-shed cycles a second. At 0.1 s a single process spent nearly all its time on them
# (1,500 re-opening slowloris connections at max-connections 1000: 8,500 cycles/s, fast clients
# kept 5% of their throughput); at 1 s, about 1,200 cycles/s.
MIN_AGE: Final = 1.0
# How long a keep-alive connection must have been idle to be shed: a client in the middle of a
# series of requests is idle for an instant between a response and its next request.
MIN_IDLE: Final = 1.0
# While accepting is paused at the limit, how often the server looks for a connection to shed.
RECHECK: Final = 0.1
# How long a ShedQueue may be used before it is worked out again. A connection that is not in
# it (accepted since, or busy then and idle since) cannot be eligible before made + MIN_AGE or
# made + MIN_IDLE, so using it this long misses none.
REBUILD: Final = min(MIN_AGE, MIN_IDLE)


class Standing(enum.Enum):
    """Which connections go first (lowest value first)."""

    HEADERS = 1  # a request's header section has begun and is not complete
    IDLE = 2  # keep-alive, between requests
    SILENT = 3  # nothing received yet on this connection


@dataclass(frozen=True)
class Candidate(Generic[K]):
    """A connection that may be shed: ``since`` is when it started waiting in that standing
    (opened, or its last response ended)."""

    key: K
    standing: Standing
    since: float


def _wait(candidate: Candidate[K], min_age: float, min_idle: float) -> float:
    return min_idle if candidate.standing is Standing.IDLE else min_age


def order(
    candidates: Iterable[Candidate[K]],
    now: float,
    min_age: float = MIN_AGE,
    min_idle: float = MIN_IDLE,
) -> list[Candidate[K]]:
    """Every candidate old enough to be shed, in the order they should go."""
    eligible = [c for c in candidates if now - c.since >= _wait(c, min_age, min_idle)]
    eligible.sort(key=lambda c: (c.standing.value, c.since))
    return eligible


def choose(
    candidates: Iterable[Candidate[K]],
    count: int,
    now: float,
    min_age: float = MIN_AGE,
    min_idle: float = MIN_IDLE,
) -> list[K]:
    """Up to ``count`` connections to shed, in the order they should go."""
    if count <= 0:
        return []
    return [c.key for c in order(candidates, now, min_age, min_idle)[:count]]


def eligible_at(
    candidates: Iterable[Candidate[K]],
    now: float,
    min_age: float = MIN_AGE,
    min_idle: float = MIN_IDLE,
) -> float | None:
    """When the first candidate too young to be chosen now becomes eligible (None: none is)."""
    waits = [(c, _wait(c, min_age, min_idle)) for c in candidates]
    times = [c.since + wait for c, wait in waits if now - c.since < wait]
    return min(times) if times else None


class ShedQueue(Generic[K]):
    """The candidates worked out at ``made``, in the order they should go, each one taken only
    once it is old enough: one queue per standing, oldest first.

    Working out the order looks at every open connection; an attacker re-opening every closed
    connection makes the server shed one for each it accepts (some 1,300 a second per process
    at max-connections 1000), and working the order out again at each look made the scans the
    largest part of that churn. Kept for :data:`REBUILD`, the queue is worked out once a second
    and each accept costs a look at the heads: within one standing the oldest is the first to
    be old enough, so a head too young means the whole standing is.

    ``usable(candidate)`` says whether the connection still stands where it stood (and is not
    about to make progress); one that does not is dropped from the queue for good."""

    def __init__(
        self,
        candidates: Iterable[Candidate[K]],
        made: float,
        min_age: float = MIN_AGE,
        min_idle: float = MIN_IDLE,
    ) -> None:
        self.made = made
        self.min_age = min_age
        self.min_idle = min_idle
        groups: dict[Standing, list[Candidate[K]]] = {s: [] for s in Standing}
        for c in candidates:
            groups[c.standing].append(c)
        self._queues = [
            deque(sorted(groups[s], key=lambda c: c.since))
            for s in sorted(Standing, key=lambda s: s.value)
        ]

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def __bool__(self) -> bool:
        # Asked at every accept at the limit: cheaper than the length.
        return any(self._queues)

    def next(
        self, now: float, usable: Callable[[Candidate[K]], bool], consume: bool = True
    ) -> K | None:
        """The connection to shed next (taken out of the queue unless ``consume`` is false), or
        None if none may go now."""
        for queue in self._queues:
            while queue:
                head = queue[0]
                # Age first: a connection only ever waits longer in a standing from a later
                # ``since``, so a head too young is young whatever it does now, and ``usable``
                # (a peek at its socket) is spared for every busy connection at the limit.
                if now - head.since < _wait(head, self.min_age, self.min_idle):
                    break  # the rest of this standing is younger still
                if not usable(head):
                    queue.popleft()
                    continue
                if consume:
                    queue.popleft()
                return head.key
        return None

    def eligible_at(self, now: float) -> float | None:
        """When the first head too young to go now becomes eligible (None: none is)."""
        times = [
            q[0].since + _wait(q[0], self.min_age, self.min_idle)
            for q in self._queues
            if q and now - q[0].since < _wait(q[0], self.min_age, self.min_idle)
        ]
        return min(times) if times else None
