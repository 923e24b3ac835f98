"""Keep-alive balance between prefork workers: which worker gives away part of its busy
keep-alive connections, and to whom. Pure: plain values in, plain values out.

New connections are spread by the shared accept queue, one per wake-up, to whichever worker is
waiting for one at that moment. A keep-alive connection then stays where it landed for its whole
life, so connections that arrive together can all land on one worker: a benchmark's or a proxy's
pool opened in one burst, or, under a connection-exhaustion attack, the one worker that was
accepting at that moment while the other waited for an attacker's connection to come of age
(docs/operations.md). That worker then serves them all on one core while the others idle.

The master samples every worker's request count each ``balance-every`` seconds. When the busiest
worker serves at least ``ratio`` times the rate of the least busy one, and enough requests a
second for the difference to matter, in ``persist`` samples in a row (one short period's rates
swing by 2x on a machine whose cores are shared: a lone sample moves connections for nothing), it
asks the busiest to give away the share of its active keep-alive connections that brings it down
to the mean rate, and routes them to the least busy worker. The worker moves only connections
between requests with nothing read and nothing queued (as :mod:`catalyzer.prefork.handoff`
does), never its last one, so nothing is lost or reordered and a lone busy client is never
bounced between workers. After a move the balancer waits ``settle`` periods before judging
again: the rates of the period of the move mix both placements.

A quiet master has no timer: sampling starts when a worker's heartbeat (every second) shows it
serving ``min_rate`` requests a second, and stops when no worker does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = ["Balancer", "Give", "WorkerLoad", "to_give"]

# Below this many requests a second, the busiest worker's share of one core is small: moving
# connections would cost more than it saves.
MIN_RATE: Final = 200.0


class WorkerLoad(NamedTuple):
    """One worker as the master samples it: its record id, whether it serves (ready and can take
    connections), whether its scoreboard says it is in the app, and its requests so far."""

    id: int
    ready: bool
    in_app: bool
    requests: int


class Give(NamedTuple):
    """Ask worker ``worker`` to give away ``share`` (0..1) of its active keep-alive connections,
    to be passed to worker ``to``."""

    worker: int
    share: float
    to: int


@dataclasses.dataclass
class Balancer:
    """The master's side (see the module's docstring). ``period`` is the time between two
    :meth:`observe` calls, in seconds."""

    period: float
    ratio: float = 2.0
    min_rate: float = MIN_RATE
    settle: int = 2
    persist: int = 2
    _seen: int = 0
    _last: dict[int, int] = dataclasses.field(default_factory=dict)
    _heard: dict[int, tuple[int, float]] = dataclasses.field(default_factory=dict)
    _quiet: int = 0
    asked: int = 0
    sampling: bool = False

    def heard(self, worker: int, requests: int, now: float) -> bool:
        """A worker's heartbeat (its requests so far, at ``now``) while not sampling: True when
        its rate since its previous heartbeat is worth sampling for; sampling has then begun."""
        before = self._heard.get(worker)
        self._heard[worker] = (requests, now)
        if self.sampling or before is None or now <= before[1]:
            return False
        if (requests - before[0]) / (now - before[1]) < self.min_rate:
            return False
        self.sampling = True
        self._last = {}
        self._quiet = 0
        self._seen = 0
        return True

    def observe(self, workers: Sequence[WorkerLoad]) -> Give | None:
        """One sample while sampling (the first after :meth:`heard` only records); the request
        to make now, if any. ``sampling`` is False afterwards when no worker is busy."""
        rates: dict[int, float] = {}
        for w in workers:
            before = self._last.get(w.id)
            # A new worker, or one whose counters went down (a new vector), starts from here.
            if before is not None and w.requests >= before and w.ready and not w.in_app:
                rates[w.id] = (w.requests - before) / self.period
        self._last = {w.id: w.requests for w in workers}
        if rates and max(rates.values()) < self.min_rate:
            self.sampling = False
            return None
        if self._quiet > 0:
            self._quiet -= 1
            return None
        if len(rates) < 2:
            self._seen = 0
            return None
        busiest = max(rates, key=lambda i: rates[i])
        least = min(rates, key=lambda i: rates[i])
        top, bottom = rates[busiest], rates[least]
        if top < self.min_rate or top < self.ratio * bottom:
            self._seen = 0
            return None
        self._seen += 1
        if self._seen < self.persist:
            return None
        mean = sum(rates.values()) / len(rates)
        self._seen = 0
        self._quiet = self.settle
        self.asked += 1
        return Give(busiest, (top - mean) / top, least)


def to_give(share: float, active: int, movable: int) -> int:
    """How many connections a worker asked to give ``share`` of its ``active`` ones gives, when
    ``movable`` of them can move now: rounded down, and never its last active one."""
    wanted = min(int(share * active), active - 1)
    return max(0, min(wanted, movable))
