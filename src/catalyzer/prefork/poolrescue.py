"""A ``--threads`` worker's keep-alive rescue: while every app thread is stuck in a long call,
the worker stops accepting, stops reading its idle keep-alive connections (a request arriving on
one stays in the kernel) and gives those with a request waiting to the master, which passes them
to a worker with a free thread. The ``threads 0`` rescue is :mod:`catalyzer.prefork.rescue`'s
watchdog thread; here the reactor is free, so all of it runs in the reactor thread.

Nothing is added to a request's path but a clock read in the pool thread
(:attr:`~catalyzer.wsgi.threads.AppThreads.since`) and, when a call is queued behind busy
threads, a look at how long they have been busy. The check runs only while every thread is busy:
every half hand-off delay (:class:`~catalyzer.prefork.handoff.HandoffDelay`, as for the
watchdog) it asks :func:`~catalyzer.prefork.handoff.pool_stuck` whether every thread has been
in its call that long. Once one thread is free again, reading and accepting resume.

What cannot move stays: a request already read (queued for the pool before the threads were
found stuck, at most a delay and a half after they were) waits for a thread, as it would without
the rescue; so does a connection with bytes of its next request read.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from catalyzer.ops import metrics
from catalyzer.prefork.handoff import HandoffDelay, movable, pool_stuck
from catalyzer.prefork.rescue import (
    SAMPLE_EVERY,
    candidate,
    give_away,
    http_channels,
    observe_calls,
)
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server.channel import HTTPChannel, ServerState
from catalyzer.wsgi.threads import AppThreads

__all__ = ["PoolRescue"]

log = Logger(namespace="catalyzer.prefork.poolrescue")

# The shortest wait between two checks, whatever the delay.
_MIN_LOOK = 0.005


class PoolRescue:
    """Watches ``threads`` (the worker's app pool) and, while every thread is stuck, holds the
    worker's idle connections and gives away those with a request waiting over ``sock`` (the
    worker's end of its fd channel to the master). ``scoreboard`` tells the master which workers
    are stuck, so that it passes connections to the others. Durations are measured on the
    pool's clock (:attr:`AppThreads.clock`); ``wall`` is the scoreboard's."""

    def __init__(
        self,
        reactor: Any,
        server: ServerState,
        threads: AppThreads,
        scoreboard: Scoreboard,
        sock: socket.socket,
        after: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.threads = threads
        self.scoreboard = scoreboard
        self.sock = sock
        self.wall = wall
        self.delay = HandoffDelay(after, metrics.BUCKETS)
        self.moved = 0
        self._held: list[HTTPChannel] = []
        self._look: IDelayedCall | None = None
        self._sampled = -math.inf
        self._stopped = False

    @property
    def stuck(self) -> bool:
        """The worker holds its idle connections and does not accept (the server's state)."""
        return self.server.pool_stuck

    def start(self) -> None:
        self.threads.on_saturated = self._saturated

    def stop(self) -> None:
        """No more checks; held connections are read again. (A worker keeps its rescue to its
        end, as the watchdog: a connection waiting behind slow calls while it drains is better
        answered by another worker.)"""
        self._stopped = True
        self.threads.on_saturated = None
        if self._look is not None and self._look.active():
            self._look.cancel()
        self._look = None
        if self.stuck:
            self._release()

    def _saturated(self) -> None:
        # A request was just queued behind busy threads. If they are stuck already, hold the
        # idle connections now, in this reactor turn, before their requests are read too.
        threads = self.threads
        if pool_stuck(threads.since, threads.clock(), self.delay.current):
            if not self.stuck:
                self.check()
        else:
            self._arm()

    def _arm(self) -> None:
        if self._look is None and not self._stopped:
            wait = max(self.delay.current / 2, _MIN_LOOK)
            self._look = self.reactor.callLater(wait, self.check)

    def check(self) -> None:
        """One look (armed while every thread is busy)."""
        if self._look is not None and self._look.active():
            self._look.cancel()
        self._look = None
        try:
            self._check()
        except Exception:
            log.failure("the thread pool's hand-off check")

    def _check(self) -> None:
        now = self.threads.clock()
        if not self._sampled <= now < self._sampled + SAMPLE_EVERY:
            self._sampled = now
            observe_calls(self.delay, self.scoreboard)
        since = self.threads.since
        if pool_stuck(since, now, self.delay.current):
            if not self.stuck:
                self._hold()
            self._give_away()
            self._arm()
        elif self.stuck:
            self._release()
        elif 0.0 not in since:  # every thread busy, not for long yet: look again
            self._arm()

    def _hold(self) -> None:
        # The idle connections are held by the _give_away that always follows.
        self.scoreboard.set_stuck(self.wall())
        self.server.set_pool_stuck(True)

    def _hold_idle(self) -> None:
        """Stop reading every plain connection idle between requests not held yet (TLS and
        PROXY-protocol connections keep their state in this process: they neither move nor
        wait here)."""
        held = {id(c) for c in self._held}
        for channel in http_channels(self.server).values():
            if id(channel) not in held and channel.between_requests and candidate(channel).plain:
                channel.transport.stopReading()  # type: ignore[union-attr]
                self._held.append(channel)

    def _give_away(self) -> None:
        # At every look, not only the first: connections that became idle since (a response
        # streamed to its end by a thread that then took a long call) are held from now on too.
        self._hold_idle()
        # The reactor thread runs no app code: no connection is too recent to move.
        keys = set(movable([candidate(c) for c in self._held], math.inf))
        ready = [c for c in self._held if id(c) in keys]
        gone = give_away(self.reactor, self.sock, ready, waiting_only=True)
        if gone:
            self.moved += len(gone)
            moved = {id(c) for c in gone}
            self._held = [c for c in self._held if id(c) not in moved]

    def _release(self) -> None:
        self.scoreboard.set_stuck(0.0)
        self.server.set_pool_stuck(False)
        held, self._held = self._held, []
        for channel in held:
            if channel.between_requests:
                channel.transport.startReading()  # type: ignore[union-attr]
