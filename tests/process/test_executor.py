"""The Executor: each command to its host operation, one timer at the supervisor's deadline."""

from __future__ import annotations

import itertools
import signal
from typing import Any

import pytest
from twisted.internet.task import Clock

from catalyzer.process.executor import Executor
from catalyzer.process.supervision import Halt, Kill, Log, Spawn, Supervisor, WorkerRecord


class Host:
    """Records each operation; gives every spawned worker a pid, as the master does."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.done: list[tuple[object, ...]] = []
        self.pids = itertools.count(100)

    def spawn(self, worker: WorkerRecord) -> None:
        self.done.append(("spawn", worker.slot))
        self.supervisor.spawned(worker, next(self.pids))

    def kill(self, pid: int, signum: int) -> None:
        self.done.append(("kill", pid, signum))

    def log(self, level: str, text: str) -> None:
        self.done.append(("log", level, text))

    def halt(self, status: int, reason: str) -> None:
        self.done.append(("halt", status, reason))


def make(**kw: float) -> tuple[Supervisor, Host, Clock, Executor]:
    supervisor = Supervisor(2, die_timeout=kw.pop("die_timeout", 5.0), **kw)
    host = Host(supervisor)
    clock = Clock()
    return supervisor, host, clock, executor_for(supervisor, host, clock)


def executor_for(supervisor: Supervisor, host: Host, clock: Clock, **kw: Any) -> Executor:
    return Executor(
        supervisor,
        clock,
        spawn=host.spawn,
        kill=host.kill,
        log=host.log,
        halt=host.halt,
        **kw,
    )


def test_each_command_goes_to_its_operation_in_order() -> None:
    _, host, _, executor = make()
    worker = WorkerRecord(1, 3, 1, 0.0)
    executor.run([Log("info", "hello"), Spawn(worker), Kill(7, signal.SIGTERM), Halt(3, "why")])
    assert host.done == [
        ("log", "info", "hello"),
        ("spawn", 3),
        ("kill", 7, signal.SIGTERM),
        ("halt", 3, "why"),
    ]


def test_no_deadline_no_timer() -> None:
    supervisor, host, clock, executor = make()
    executor.run(supervisor.start(clock.seconds()))
    assert host.done == [("spawn", 0), ("spawn", 1)]
    assert executor.deadline is None
    assert clock.getDelayedCalls() == []


def test_die_timeout_kill_fires_exactly_at_the_deadline() -> None:
    supervisor, host, clock, executor = make(die_timeout=5.0, kill_grace=1.0)
    executor.run(supervisor.start(clock.seconds()))
    for pid in (100, 101):
        executor.run(supervisor.ready(pid, clock.seconds()))
    clock.advance(2)
    host.done.clear()
    executor.run(supervisor.stop(clock.seconds()))
    assert host.done == [("kill", 100, signal.SIGTERM), ("kill", 101, signal.SIGTERM)]
    assert executor.deadline == 8.0
    assert len(clock.getDelayedCalls()) == 1
    executor.run(supervisor.exited(100, 0, None, clock.seconds()))  # the deadline stays
    assert len(clock.getDelayedCalls()) == 1
    host.done.clear()
    clock.advance(5.999)
    assert host.done == []
    clock.advance(0.001)
    assert ("kill", 101, signal.SIGKILL) in host.done
    assert executor.deadline is None


def test_backed_off_respawn_then_rearm_and_after_tick() -> None:
    supervisor, host, clock, _ = make(backoff_base=0.5, stable_after=10)
    ticks: list[float] = []
    executor = executor_for(
        supervisor, host, clock, after_tick=lambda: ticks.append(clock.seconds())
    )
    executor.run(supervisor.start(clock.seconds()))
    executor.run(supervisor.ready(100, clock.seconds()))
    executor.run(supervisor.exited(100, 1, None, 0.1))  # first crash: at once, pid 102
    executor.run(supervisor.exited(102, 1, None, 0.2))  # second: in 0.5 s
    assert executor.deadline == pytest.approx(0.7)
    host.done.clear()
    clock.advance(0.6)
    assert not any(d[0] == "spawn" for d in host.done)
    clock.advance(0.1)
    assert ("spawn", 0) in host.done
    assert ticks == [pytest.approx(0.7)]


def test_an_event_that_removes_the_deadline_cancels_the_timer() -> None:
    supervisor, _, clock, executor = make(backoff_base=0.5, stable_after=10)
    executor.run(supervisor.start(clock.seconds()))
    executor.run(supervisor.ready(100, clock.seconds()))
    executor.run(supervisor.exited(100, 1, None, 0.1))
    executor.run(supervisor.exited(102, 1, None, 0.2))
    assert len(clock.getDelayedCalls()) == 1
    executor.run(supervisor.stop(clock.seconds(), graceful=False))  # drops the pending respawn
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(1.0)  # only the quick stop's own deadline is left
    executor.cancel()
    assert clock.getDelayedCalls() == []
