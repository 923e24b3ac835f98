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
connecting in the same instant as a burst of attackers). When nothing can be chosen, the server
pauses accepting until a connection closes or, if some are only too young, until
:func:`eligible_at` says the first of them may go.

Pure: the channel describes itself as a :class:`Candidate`; :func:`choose` decides. The server
walks :func:`order` itself when it must look at a socket: a silent or idle connection whose
client has sent bytes the reactor has not read yet is skipped (the server peeks), since it is
about to make progress.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = ["MIN_AGE", "Candidate", "Standing", "choose", "eligible_at", "order"]

K = TypeVar("K")

# How long a new connection is left alone, whatever it has sent.
MIN_AGE: Final = 0.1


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


def order(
    candidates: Iterable[Candidate[K]], now: float, min_age: float = MIN_AGE
) -> list[Candidate[K]]:
    """Every candidate old enough to be shed, in the order they should go."""
    eligible = [c for c in candidates if now - c.since >= min_age]
    eligible.sort(key=lambda c: (c.standing.value, c.since))
    return eligible


def choose(
    candidates: Iterable[Candidate[K]], count: int, now: float, min_age: float = MIN_AGE
) -> list[K]:
    """Up to ``count`` connections to shed, in the order they should go."""
    if count <= 0:
        return []
    return [c.key for c in order(candidates, now, min_age)[:count]]


def eligible_at(
    candidates: Iterable[Candidate[K]], now: float, min_age: float = MIN_AGE
) -> float | None:
    """When the first candidate too young to be chosen now becomes eligible (None: none is)."""
    times = [c.since + min_age for c in candidates if now - c.since < min_age]
    return min(times) if times else None
