"""The Supervisor fed random sequences of events through a small model of the executor.

The model plays the master's part: it carries out ``Spawn`` (later: the process gets a pid, may
fail to start), ``Kill`` (the process exits later) and ``Halt`` (nothing happens after it), and it
plays the workers' part: they become ready, crash with any status, reach max-requests, hang. The
operator sends HUP, TTIN, TTOU and TERM, and time passes. After every step the table is checked
against the invariants below; ``settle`` (a step of its own, and the end of every run) lets the
system run with no new trouble until nothing is left to do, and checks where it must end: exactly
``procs`` ready workers of the newest generation, one per slot, and nothing else running; or, after
TERM, a halt with every process gone.
"""

from __future__ import annotations

import itertools
import signal
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from catalyzer.process.supervision import (
    BOOT_FAILURE,
    READY,
    STARTING,
    STOPPING,
    Command,
    Halt,
    Kill,
    Log,
    Spawn,
    Supervisor,
    WorkerRecord,
)

# How a process may end: (exit status, signal).
ENDINGS = [
    (0, None),
    (1, None),
    (BOOT_FAILURE, None),
    (None, signal.SIGKILL),
    (None, signal.SIGTERM),
]
DIE_TIMEOUT = 3.0


@dataclass
class Process:
    """A real process, as the executor sees it."""

    pid: int
    record: WorkerRecord
    booted: bool = False
    signals: list[int] = field(default_factory=list)


class SupervisionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sup = Supervisor(1, die_timeout=DIE_TIMEOUT)
        self.now = 0.0
        self.pids = itertools.count(100)
        self.pending: list[WorkerRecord] = []  # Spawn commands not carried out yet
        self.processes: dict[int, Process] = {}  # spawned and not yet reported exited
        self.seen: set[int] = set()  # worker ids ever spawned
        self.halt: Halt | None = None
        self.term = False

    @initialize(procs=st.integers(1, 3))
    def start(self, procs: int) -> None:
        self.sup = Supervisor(
            procs, die_timeout=DIE_TIMEOUT, backoff_base=0.5, backoff_max=4.0, stable_after=10.0
        )
        self.carry_out(self.sup.start(self.now))

    # -- the executor

    def carry_out(self, commands: list[Command], gone: int | None = None) -> None:
        """Check and carry out what the supervisor decided (``gone``: the pid whose exit was
        just reported)."""
        assert self.halt is None, f"commands after {self.halt}: {commands}"
        for command in commands:
            if isinstance(command, Spawn):
                record = command.worker
                assert record.id not in self.seen, f"spawned twice: {record}"
                assert record.state == STARTING and record.pid is None, record
                self.seen.add(record.id)
                self.pending.append(record)
            elif isinstance(command, Kill):
                assert command.pid != gone, f"{command} for the process that just exited"
                assert command.pid in self.processes, f"{command} for no live process"
                self.processes[command.pid].signals.append(command.signum)
            elif isinstance(command, Halt):
                self.halt = command
            else:
                assert isinstance(command, Log), command
        if self.halt is not None:
            assert self.halt.status in (0, 1, BOOT_FAILURE), self.halt
            if self.halt.status == BOOT_FAILURE:
                assert not self.sup.booted, "a boot failure halt after a worker was ready"
            else:
                assert self.sup.stopping, "halted without a stop"
            # The master kills whatever is left and exits.
            self.processes.clear()
            self.pending.clear()

    def live_pids(self) -> list[int]:
        return sorted(self.processes)

    def pick(self, index: int, pids: list[int]) -> int:
        return pids[index % len(pids)]

    # -- rules: the executor's reports

    @precondition(lambda self: self.halt is None and self.pending)
    @rule(index=st.integers(0, 5))
    def spawned(self, index: int) -> None:
        record = self.pending.pop(index % len(self.pending))
        pid = next(self.pids)
        self.sup.spawned(record, pid)
        self.processes[pid] = Process(pid, record)

    @precondition(lambda self: self.halt is None and self.pending)
    @rule()
    def spawn_failed(self) -> None:
        record = self.pending.pop(0)
        self.carry_out(self.sup.spawn_failed(record, "Permission denied", self.now))

    # -- rules: the workers

    @precondition(lambda self: self.halt is None and self.processes)
    @rule(index=st.integers(0, 10))
    def ready(self, index: int) -> None:
        process = self.processes[self.pick(index, self.live_pids())]
        if process.booted:
            return
        process.booted = True
        self.carry_out(self.sup.ready(process.pid, self.now))

    @precondition(lambda self: self.halt is None and self.processes)
    @rule(index=st.integers(0, 10), ending=st.sampled_from(ENDINGS))
    def exited(self, index: int, ending: tuple[int | None, int | None]) -> None:
        pid = self.pick(index, self.live_pids())
        self.report_exit(pid, *ending)

    def report_exit(self, pid: int, status: int | None, signum: int | None) -> None:
        del self.processes[pid]
        self.carry_out(self.sup.exited(pid, status, signum, self.now, "Traceback"), gone=pid)

    @precondition(lambda self: self.halt is None and self.processes)
    @rule(index=st.integers(0, 10))
    def max_requests(self, index: int) -> None:
        pid = self.pick(index, self.live_pids())
        self.carry_out(self.sup.retire(pid, "max-requests", self.now))

    @precondition(lambda self: self.halt is None and self.processes)
    @rule(index=st.integers(0, 10))
    def hung(self, index: int) -> None:
        worker = self.sup.by_pid(self.pick(index, self.live_pids()))
        if worker is not None and worker.pid is not None and worker.state == READY:
            self.carry_out(self.sup.hung(worker.pid, self.now))

    # -- rules: the operator and the clock

    @precondition(lambda self: self.halt is None)
    @rule()
    def hup(self) -> None:
        self.carry_out(self.sup.reload(self.now))

    @precondition(lambda self: self.halt is None)
    @rule(delta=st.sampled_from([1, -1]))
    def ttin_ttou(self, delta: int) -> None:
        self.carry_out(self.sup.scale(delta, self.now))

    @precondition(lambda self: self.halt is None)
    @rule(graceful=st.booleans())
    def term(self, graceful: bool) -> None:
        self.term = True
        self.carry_out(self.sup.stop(self.now, graceful=graceful))

    @precondition(lambda self: self.halt is None)
    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 3.0, 12.0]))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.carry_out(self.sup.tick(self.now))

    @rule()
    def settle(self) -> None:
        """No more trouble: spawns succeed, workers boot, signalled ones exit, time passes until
        the supervisor has nothing left to do. Then the table must be what it promised."""
        for _ in range(500):
            if self.halt is not None:
                break
            signalled = [p for p in self.processes.values() if p.signals]
            starting = [p for p in self.processes.values() if not p.booted]
            if self.pending:
                self.spawned(0)
            elif signalled:
                process = signalled[0]
                last = process.signals[-1]
                if last == signal.SIGKILL:
                    self.report_exit(process.pid, None, signal.SIGKILL)
                else:
                    self.report_exit(process.pid, 0, None)
            elif starting:
                starting[0].booted = True
                self.carry_out(self.sup.ready(starting[0].pid, self.now))
            elif (deadline := self.sup.next_deadline()) is not None:
                self.now = max(self.now, deadline)
                self.carry_out(self.sup.tick(self.now))
            else:
                break
        else:
            raise AssertionError(f"did not settle: {self.sup.live()}")
        if self.term:
            assert self.halt is not None, f"TERM did not end in a halt: {self.sup.live()}"
        if self.halt is not None:
            assert not self.processes
            return
        procs = self.sup.procs
        workers = self.sup.live()
        assert not self.sup.reloading, workers
        assert [(w.slot, w.generation, w.state) for w in workers] == [
            (slot, self.sup.generation, READY) for slot in range(procs)
        ], workers
        assert {w.pid for w in workers} == set(self.processes), (workers, self.processes)

    # -- invariants

    @invariant()
    def table_matches_processes(self) -> None:
        if self.halt is not None:
            return
        table = {w.pid: w for w in self.sup.workers.values() if w.pid is not None}
        # Every process running is known to the supervisor (none leaked), and the other way round.
        assert set(table) == set(self.processes), (table, self.processes)
        unspawned = {w.id for w in self.sup.workers.values() if w.pid is None}
        assert unspawned == {r.id for r in self.pending}, (unspawned, self.pending)
        # A process that was signalled stays stopping (it is leaving).
        for pid, process in self.processes.items():
            if process.signals:
                assert table[pid].state == STOPPING, table[pid]

    @invariant()
    def never_more_than_wanted(self) -> None:
        if self.halt is not None or self.sup.stopping:
            return
        sup = self.sup
        serving = [w for w in sup.workers.values() if w.state != STOPPING]
        newest = [w for w in serving if w.generation == sup.generation]
        older = [w for w in serving if w.generation != sup.generation]
        # Newest generation: one per slot, plus the one replacement of the worker recycling.
        assert len(newest) <= sup.procs + 1, sup.live()
        for slot in range(sup.procs):
            assert sum(1 for w in newest if w.slot == slot) <= 2, sup.live()
        assert all(w.slot < sup.procs for w in serving), sup.live()
        if sup.reloading:
            # The generation being replaced keeps serving, one per slot: no recycling meanwhile.
            assert all(w.generation == sup.generation - 1 for w in older), sup.live()
            for slot in range(sup.procs):
                assert sum(1 for w in older if w.slot == slot) <= 1, sup.live()
        else:
            assert not older, sup.live()

    def teardown(self) -> None:
        self.settle()


SupervisionMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_supervision = SupervisionMachine.TestCase
