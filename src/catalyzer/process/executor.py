"""Carrying out a :class:`~catalyzer.process.supervision.Supervisor`'s commands: the one place
both the prefork master and the task dispatcher do it.

The host (the master, the dispatcher) says how to spawn, signal, log and halt, one function
each; :class:`Executor` hands each command to the matching function and keeps one
timer armed at the supervisor's next deadline (a respawn after back-off, a KILL after
die-timeout, an on-demand spawn), so the supervisor is asked to ``tick`` exactly when it has
something to do rather than on a poll.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import assert_never

from twisted.internet.interfaces import IDelayedCall

from catalyzer.process.reactors import TimeReactor
from catalyzer.process.supervision import Command, Halt, Kill, Log, Spawn, Supervisor, WorkerRecord

__all__ = ["Executor"]


class Executor:
    """Runs ``supervisor``'s commands; ``clock`` (an ``IReactorTime``) times its deadlines.

    ``spawn(worker)`` starts a process for the record (and tells the supervisor its pid, or that
    it failed); ``kill(pid, signum)`` signals a worker that may have exited meanwhile;
    ``log(level, text)`` says something at ``debug``, ``info``, ``warn`` or ``error``;
    ``halt(status, reason)`` gives up: nothing can be started, or every worker has exited after
    a stop. ``after_tick`` runs after each deadline's commands (the dispatcher hands out queued
    work then). ``in_app()`` names the pids inside the application at a tick (the master's
    scoreboards), so that a worker silent in the app is not taken for a frozen one.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        clock: TimeReactor,
        *,
        spawn: Callable[[WorkerRecord], object],
        kill: Callable[[int, int], object],
        log: Callable[[str, str], object],
        halt: Callable[[int, str], object],
        after_tick: Callable[[], object] | None = None,
        in_app: Callable[[], Container[int]] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.clock = clock
        self._spawn = spawn
        self._kill = kill
        self._log = log
        self._halt = halt
        self.after_tick = after_tick
        self._in_app = in_app
        self._timer: IDelayedCall | None = None  # at _timer_at
        self._timer_at: float | None = None

    def run(self, commands: Iterable[Command]) -> None:
        """Carry out ``commands`` in order, then re-arm the deadline timer (an event may have
        added, moved or removed a deadline)."""
        for command in commands:
            match command:
                case Spawn(worker):
                    self._spawn(worker)
                case Kill(pid, signum):
                    self._kill(pid, signum)
                case Log(level, text):
                    self._log(level, text)
                case Halt(status, reason):
                    self._halt(status, reason)
                case _:
                    assert_never(command)
        self.arm()

    def arm(self) -> None:
        """One timer, at the supervisor's next deadline; none if it has none."""
        deadline = self.supervisor.next_deadline()
        if self._timer is not None and self._timer.active():
            if deadline == self._timer_at:
                return
            self._timer.cancel()
        self._timer = None
        self._timer_at = deadline
        if deadline is None:
            return
        self._timer = self.clock.callLater(max(0.0, deadline - self._now()), self._fire)

    def cancel(self) -> None:
        """No more ticks (the host has stopped)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    @property
    def deadline(self) -> float | None:
        """When the timer fires (None: not armed)."""
        return self._timer_at if self._timer is not None else None

    def _fire(self) -> None:
        # The timer was set for _timer_at; "now" is never earlier than that, even by the rounding
        # of now + (deadline - now), or the supervisor would see nothing due and be re-armed at
        # the same instant over and over.
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        now = self._now()
        in_app = self._in_app() if self._in_app is not None else ()
        self.run(self.supervisor.tick(now if at is None else max(now, at), in_app))
        if self.after_tick is not None:
            self.after_tick()
        self.arm()

    def _now(self) -> float:
        now: float = self.clock.seconds()
        return now
