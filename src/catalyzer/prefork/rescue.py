"""A worker's keep-alive rescue: while the app holds the reactor thread (``threads 0``), a
watchdog thread gives the worker's waiting keep-alive connections to the master, which passes them
to an idle worker (decisions: :mod:`catalyzer.prefork.handoff`; descriptors:
:mod:`catalyzer.prefork.fdpass`).

Nothing is added to a request's path but one attribute read when it leaves the app. The thread
wakes every half hand-off delay and reads the scoreboard; only when one app call has lasted the
delay does it touch anything. The delay is ``handoff-after`` at most, shorter for a worker whose
recent calls are all short (:class:`~catalyzer.prefork.handoff.HandoffDelay`, fed every
:data:`SAMPLE_EVERY` seconds from the duration histogram the worker keeps in its scoreboard).

The race with the reactor thread, and why it is safe:

- *The gate.* The watchdog acts only while the reactor thread is inside the app call it saw
  (scoreboard entry unchanged). It takes the gate's lock, sets ``claimed``, then reads the
  scoreboard again; the reactor thread, leaving the app, clears the scoreboard and then reads
  ``claimed``, waiting on the lock if it is set. Both sides write then read (the GIL orders them),
  so either the watchdog sees the app left and does nothing, or the reactor thread sees the claim
  and waits until the watchdog is done: it cannot poll, read or write any connection meanwhile.
- *The connection the app is serving.* Inside an app call the reactor thread runs code for one
  connection only, the one whose request is in the app; a streamed response can finish inside the
  call and make that connection look idle. Its ``ended_at`` is then at or after the call's entry,
  and :func:`~catalyzer.prefork.handoff.movable` leaves it alone (``ended_at`` is written before
  ``response`` is cleared, so a thread that sees no response sees the time).
- *The reactor's own structures.* The watchdog removes the moved socket from the reactor
  (``removeReader``/``removeWriter``: a dict, a set and ``epoll_ctl``, each atomic under the GIL;
  the reactor thread inside the app touches only its own connection's entries). Events of the
  current poll batch for the moved descriptor find no selectable and are skipped; the descriptor
  stays open (its number cannot be reused) until the reactor thread closes it after the batch.
- *Closing.* The watchdog makes the transport inert at once
  (:func:`~catalyzer.server.twistedprivate.disown_transport`): a timer of that connection firing
  before the clean-up (the app call may itself be a timed call) can no longer send, shut down or
  reset it. The reactor thread then closes the socket with a bare ``close(2)``: no
  ``shutdown(2)`` and no ``SO_LINGER`` 0, which would end the connection for the worker that now
  serves it (:func:`~catalyzer.server.twistedprivate.close_disowned`), and tells the protocol.
- *Bytes.* Only a connection with nothing read of its next request moves, and only once a
  request is waiting in the kernel (``MSG_PEEK``): the new worker reads it whole. Pipelined bytes
  already read stay with the old worker, in order.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

from twisted.internet import error, interfaces, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

from catalyzer.ops import metrics
from catalyzer.prefork.balance import to_give
from catalyzer.prefork.fdpass import send_fd
from catalyzer.prefork.handoff import Candidate, HandoffDelay, due, movable
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server import twistedprivate
from catalyzer.server.channel import HTTPChannel, ServerState

__all__ = [
    "GatedScoreboard",
    "Watchdog",
    "adopt",
    "candidate",
    "give_away",
    "http_channels",
    "observe_calls",
    "rebalance",
]

log = Logger(namespace="catalyzer.prefork.rescue")

# How often the watchdog reads the worker's duration histogram: with HandoffDelay's window of 8,
# the delay follows the last two seconds of calls.
SAMPLE_EVERY: Final = 0.25
# A connection that ended a response this recently counts as active when a share is given away.
ACTIVE_WITHIN: Final = 1.0
_HISTOGRAM = slice(metrics.BUCKET, metrics.BUCKET + len(metrics.BUCKETS) + 1)


class GatedScoreboard(Scoreboard):
    """The worker's scoreboard, whose ``leave`` waits while the watchdog is moving
    connections (see the module's docstring)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.claimed = False
        self._gate = threading.Lock()

    def leave(self) -> None:
        super().leave()
        if self.claimed:
            with self._gate:
                pass

    def claim(self, entered: float) -> bool:
        """Hold the reactor thread at its next ``leave``, if it is still in the app call that
        began at ``entered``; True if so (then :meth:`release` it)."""
        self._gate.acquire()
        self.claimed = True
        if self.read()[0] != entered:
            self.release()
            return False
        return True

    def release(self) -> None:
        self.claimed = False
        self._gate.release()


class Watchdog:
    """Gives away the waiting keep-alive connections of a worker whose app call has lasted
    ``after`` seconds, over ``sock`` (the worker's end of its fd channel to the master)."""

    def __init__(
        self,
        reactor: Any,
        server: ServerState,
        scoreboard: GatedScoreboard,
        sock: socket.socket,
        after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.scoreboard = scoreboard
        self.sock = sock
        self.after = after
        self.clock = clock
        self.delay = HandoffDelay(after, metrics.BUCKETS)
        self.moved = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="catalyzer-handoff", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        sampled = 0.0
        # A look every half delay, so a call is caught between 1 and 1.5 delays: sleeping until
        # it is due exactly caught the calls of an app whose ordinary calls are as long as
        # handoff-after (10-50 ms at 0.05 s) ten times as often, each held by the master while
        # every worker was busy (bench/mixed.py --app steady, docs/prefork.md).
        while not self._stopping.wait(max(self.delay.current / 2, 0.005)):
            try:
                now = self.clock()
                if not sampled <= now < sampled + SAMPLE_EVERY:  # (the clock may step back)
                    sampled = now
                    self.sample()
                self.check()
            except Exception:
                log.failure("the hand-off watchdog")

    def sample(self) -> float:
        """Feed the worker's call durations so far to the delay; the delay from now on."""
        return observe_calls(self.delay, self.scoreboard)

    def check(self) -> int:
        """One look (the thread's loop body): how many connections were given away."""
        entered = self.scoreboard.read()[0]
        if not due(entered, self.clock(), self.delay.current):
            return 0
        if not self.scoreboard.claim(entered):
            return 0
        try:
            return self._give_away(entered)
        finally:
            self.scoreboard.release()

    def _give_away(self, entered: float) -> int:
        channels = http_channels(self.server)
        keys = movable([candidate(c) for c in channels.values()], entered)
        moved = len(
            give_away(self.reactor, self.sock, [channels[k] for k in keys], waiting_only=True)
        )
        self.moved += moved
        return moved


def observe_calls(delay: HandoffDelay, scoreboard: Scoreboard) -> float:
    """Feed the call durations the worker has counted in ``scoreboard`` so far to ``delay``;
    the delay from now on."""
    counts = metrics.read_counts(scoreboard.counters())
    return delay.observe(counts[_HISTOGRAM])


def http_channels(server: ServerState) -> dict[Hashable, HTTPChannel]:
    # HTTP connections only: a uwsgi connection carries one request, and a kept FastCGI one
    # would need its face's factory on the adopting side.
    return {id(c): c for c in list(server.channels) if isinstance(c, HTTPChannel)}


def give_away(
    reactor: Any, sock: socket.socket, channels: list[HTTPChannel], *, waiting_only: bool
) -> list[HTTPChannel]:
    """Pass each of ``channels`` (movable ones) to the master over ``sock``, in order, until
    the master stops keeping up; ``waiting_only``: only those with a request waiting in the
    kernel. The ones that went."""
    moved: list[HTTPChannel] = []
    for channel in channels:
        transport: Any = channel.transport
        if waiting_only and not _request_waiting(transport.socket):
            continue
        if not send_fd(sock, transport.fileno()):
            break  # the master is not keeping up: the rest stay here
        reactor.removeReader(transport)
        reactor.removeWriter(transport)
        # Inert from now on: a timer of this connection that fires before _forget runs
        # (the app call may be a timed call, with others due after it) cannot touch it.
        twistedprivate.disown_transport(transport)
        reactor.callFromThread(_forget, channel)
        moved.append(channel)
    return moved


def rebalance(
    reactor: Any, server: ServerState, sock: socket.socket, share: float, now: float
) -> int:
    """In the reactor thread, asked by the master (:mod:`catalyzer.prefork.balance`): give
    away ``share`` of this worker's active keep-alive connections (those that ended a response
    within the last :data:`ACTIVE_WITHIN` seconds), the most recently served first. How many
    went."""
    channels = list(http_channels(server).values())
    active = [c for c in channels if c.ended_at and now - c.ended_at <= ACTIVE_WITHIN]
    # No app call runs on this thread now (we are in the reactor): none is too recent to move.
    keys = set(movable([candidate(c) for c in active], math.inf))
    ready = sorted((c for c in active if id(c) in keys), key=lambda c: c.ended_at, reverse=True)
    count = to_give(share, len(active), len(ready))
    return len(give_away(reactor, sock, ready[:count], waiting_only=False))


def candidate(channel: HTTPChannel) -> Candidate:
    transport: Any = channel.transport
    plain = isinstance(transport, tcp.Server) and not interfaces.ISSLTransport.providedBy(transport)
    return Candidate(
        key=id(channel),
        idle=channel.between_requests,
        ended_at=channel.ended_at,
        write_empty=plain
        and not transport.disconnecting
        and twistedprivate.write_buffer_empty(transport),
        plain=plain,
    )


def _request_waiting(sock: socket.socket) -> bool:
    """Bytes of a request wait unread in the kernel (not an end of stream, not nothing)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _forget(channel: HTTPChannel) -> None:
    """In the reactor thread, once the app call is over: the connection now belongs to another
    worker."""
    twistedprivate.close_disowned(channel.transport)
    channel.connectionLost(Failure(error.ConnectionDone("handed to another worker")))


def adopt(reactor: Any, factory: Any, fd: int) -> None:
    """Serve a connection another worker handed over (``fd`` is ours and is closed here)."""
    try:
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
        reactor.adoptStreamConnection(fd, family, factory)
    except OSError as e:
        log.warn("a connection handed over could not be taken: {e}", e=e)
    finally:
        os.close(fd)
