"""The process manager's decisions, without processes: events in, commands out.

:class:`Supervisor` keeps the table of workers and decides when to spawn, signal, replace, back
off and halt. The Twisted service in :mod:`catalyzer.prefork.master` only carries the commands out and
reports what happened, so every decision here is testable with plain calls and a number for "now".

The task dispatcher (:mod:`catalyzer.dispatch`) uses the same object: ``initial`` workers start
with :meth:`Supervisor.start` and the rest of the ``procs`` slots are filled on demand by
:meth:`Supervisor.grow`, at most one per ``spawn_delay`` seconds.

Worker states::

    starting --ready--> ready --retire/reload/stop--> stopping --exit--> (gone)
        \\--exit before ready: a boot failure (halts the master if nothing ever booted)

Convergence. Events only ever *spawn* for one slot at a time (a respawn after an exit, a recycled
worker's replacement, a reload, TTIN, on-demand growth); every event then ends in
:meth:`Supervisor._converge`, which compares the table with what is wanted and stops whatever is
surplus. Per slot below ``procs`` and per *serving* generation (the newest one, plus the one being
replaced while a reload is under way) one worker is wanted, two for the slot whose worker is being
recycled (it and its replacement). A worker of any other generation, in a slot at or above
``procs``, older than a ready worker of its slot and generation, or beyond what is wanted, is
stopped. Recycling (one worker at a time) is paused during a reload: the new generation replaces
those workers anyway; it resumes if the reload fails. So once events stop, the table settles at
one ready worker of the newest generation per slot.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "Halt",
    "Kill",
    "Log",
    "Spawn",
    "Supervisor",
    "WorkerRecord",
]

STARTING: Final = "starting"
READY: Final = "ready"
STOPPING: Final = "stopping"

# The exit status a worker uses when the application cannot be loaded.
BOOT_FAILURE: Final = 3
# A stopping worker enforces die-timeout itself (cutting its connections and exiting 1); the
# master kills it only if it is still there this much later.
KILL_GRACE: Final = 1.0


@dataclass
class WorkerRecord:
    id: int
    slot: int
    generation: int
    spawned_at: float
    pid: int | None = None
    state: str = STARTING
    ready_at: float | None = None
    stop_reason: str = ""
    stop_detail: str = ""  # the figure behind stop_reason, for the log (an RSS)
    stop_deadline: float | None = None
    stats: dict[str, object] = field(default_factory=dict)
    # Stopped before the executor reported its pid: the signal to send once it has one.
    pending_signal: int | None = None
    # The last sign of life of a ready worker: its Ready, a heartbeat, or being seen in the app.
    heard_at: float | None = None


@dataclass(frozen=True)
class Spawn:
    worker: WorkerRecord


@dataclass(frozen=True)
class Kill:
    pid: int
    signum: int


@dataclass(frozen=True)
class Log:
    level: str
    text: str


@dataclass(frozen=True)
class Halt:
    status: int
    reason: str


Command = Spawn | Kill | Log | Halt


class Supervisor:
    """Decides what the master does. Times are seconds on the caller's clock."""

    def __init__(
        self,
        procs: int,
        *,
        die_timeout: float,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 10.0,
        initial: int | None = None,
        spawn_delay: float = 0.0,
        noun: str = "worker",
        kill_grace: float = KILL_GRACE,
        liveness: float = 0.0,
    ) -> None:
        self.procs = procs
        # A ready worker not heard from for this long, and not in the app, is frozen (0: off).
        self.liveness = liveness
        self.noun = noun  # how log lines and reasons name a worker ("child" for the dispatcher)
        self.kill_grace = kill_grace  # after die_timeout, before KILL (see KILL_GRACE)
        self.initial = procs if initial is None else min(initial, procs)
        self.spawn_delay = spawn_delay
        self.die_timeout = die_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.workers: dict[int, WorkerRecord] = {}
        self.generation = 1
        self.booted = False
        self.stopping = False
        self.exit_status = 0
        self.restarts: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._failures: dict[int, int] = {}  # slot -> consecutive crashes
        self._delayed: list[tuple[float, int, int]] = []  # (when, slot, generation)
        self._retire_queue: list[int] = []  # worker ids waiting to be recycled, one at a time
        self._reload_from: int | None = None  # the generation being replaced by a reload
        self._last_growth: float | None = None  # when grow() last spawned
        self._growth_wanted = False  # grow() was refused for spawn_delay: next_deadline says when

    # -- queries

    def by_pid(self, pid: int) -> WorkerRecord | None:
        for w in self.workers.values():
            if w.pid == pid:
                return w
        return None

    def live(self) -> list[WorkerRecord]:
        return sorted(self.workers.values(), key=lambda w: (w.generation, w.slot, w.id))

    @property
    def reloading(self) -> bool:
        """A new generation is starting and the old one still serves."""
        return self._reload_from is not None

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        times = [t for t, _, _ in self._delayed]
        times += [w.stop_deadline for w in self.workers.values() if w.stop_deadline is not None]
        # A worker stopped before it had a pid: its signal is overdue.
        times += [
            w.spawned_at
            for w in self.workers.values()
            if w.pending_signal is not None and w.pid is not None
        ]
        if self._growth_wanted and self._last_growth is not None:
            times.append(self._last_growth + self.spawn_delay)
        if self.liveness and not self.stopping:
            times += [
                w.heard_at + self.liveness
                for w in self.workers.values()
                if w.state == READY and w.heard_at is not None
            ]
        return min(times) if times else None

    def free_slots(self) -> list[int]:
        """Slots below ``procs`` with no worker and no respawn pending."""
        taken = {w.slot for w in self.workers.values()} | {slot for _, slot, _ in self._delayed}
        return [slot for slot in range(self.procs) if slot not in taken]

    # -- events

    def start(self, now: float) -> list[Command]:
        return [self._spawn(slot, self.generation, now) for slot in range(self.initial)]

    def grow(self, now: float) -> list[Command]:
        """One worker more in the lowest free slot (work is waiting and every worker is busy).

        At most one worker is added this way per ``spawn_delay`` seconds: a refused call makes
        :meth:`next_deadline` return the moment another call would succeed."""
        free = self.free_slots()
        if self.stopping or self._reload_from is not None or not free:
            self._growth_wanted = False
            return []
        if self._last_growth is not None and now < self._last_growth + self.spawn_delay:
            self._growth_wanted = True
            return []
        self._growth_wanted = False
        self._last_growth = now
        return [
            Log("debug", f"starting {self.noun} {free[0]} on demand"),
            self._spawn(free[0], self.generation, now),
        ]

    def spawned(self, worker: WorkerRecord, pid: int) -> None:
        worker.pid = pid

    def spawn_failed(self, worker: WorkerRecord, error: str, now: float) -> list[Command]:
        """The process could not even be started (no permission to run Python, say)."""
        self.workers.pop(worker.id, None)
        text = f"cannot start {self.noun} {worker.slot}: {error}"
        if not self.booted:
            return [Halt(BOOT_FAILURE, text)]
        if self.stopping:
            if self.workers:
                return [Log("error", text)]
            return [Log("error", text), Halt(self.exit_status, f"all {self.noun}s have exited")]
        self._count("spawn-failure")
        if worker.state == STOPPING:
            return [Log("error", text), *self._converge(now)]  # it was no longer wanted anyway
        delay = self.backoff_max
        self._delayed.append((now + delay, worker.slot, worker.generation))
        return [Log("error", f"{text}; trying again in {delay:g}s"), *self._converge(now)]

    def ready(self, pid: int, now: float) -> list[Command]:
        worker = self.by_pid(pid)
        if worker is None:
            return []
        if worker.state == STOPPING:
            return self._converge(now)  # stopped before it had a pid: its signal goes now
        if worker.state != STARTING:
            return []
        worker.state = READY
        worker.ready_at = now
        worker.heard_at = now
        self.booted = True
        out: list[Command] = [Log("info", f"{self.noun} {worker.slot} (pid {pid}) ready")]
        if self.stopping:
            return out + self._stop_worker(worker, signal.SIGTERM, "shutting down", now)
        # A reload may be complete, a recycled worker's replacement ready: _converge decides.
        return out + self._converge(now)

    def exited(
        self, pid: int, status: int | None, signum: int | None, now: float, output: str = ""
    ) -> list[Command]:
        """A worker process ended. ``output`` is its last words (stderr tail) for boot failures."""
        worker = self.by_pid(pid)
        if worker is None:
            return []
        del self.workers[worker.id]
        how = f"exit status {status}" if signum is None else f"signal {signum}"
        out: list[Command] = []
        expected = worker.state == STOPPING
        if expected:
            out.append(
                Log(
                    "info",
                    f"{self.noun} {worker.slot} (pid {pid}) exited ({how}) after "
                    f"{worker.stop_reason or 'stop'}",
                )
            )
        if self.stopping:
            # A worker that had to cut requests exits 1. One that was never ready had none in
            # flight, whatever its status: it may die of the TERM itself, or fail its boot
            # because the listening sockets closed under it. (Our own KILL is counted in tick.)
            if status not in (0, None) and worker.ready_at is not None:
                self.exit_status = 1
            if not self.workers:
                reason = f"all {self.noun}s have exited"
                if self.exit_status:
                    reason += "; requests in flight had to be cut"
                out.append(Halt(self.exit_status, reason))
            return out
        if worker.state == STARTING:
            detail = f": {output.strip()}" if output.strip() else ""
            if not self.booted:
                return [
                    Halt(
                        BOOT_FAILURE,
                        f"{self.noun} {worker.slot} failed to boot ({how}){detail}",
                    )
                ]
            if self._reload_from is not None and worker.generation == self.generation:
                return out + self._reload_failed(worker, how, detail, now)
            self._count("boot-failure")
            out.append(Log("error", f"{self.noun} {worker.slot} failed to boot ({how}){detail}"))
        elif not expected:
            self._count("crashed")
            out.append(
                Log("error", f"{self.noun} {worker.slot} (pid {pid}) died unexpectedly ({how})")
            )
        # Its slot may need a worker again: of its own generation while a reload is under way
        # (the old generation keeps serving until the new one is ready), else of the newest.
        generation = (
            worker.generation if worker.generation == self._reload_from else self.generation
        )
        if self._members(worker.slot, generation) >= self._wanted(worker.slot, generation):
            return out + self._converge(now)  # served already (a replacement, a reload, TTOU)
        if expected:
            out.append(self._spawn(worker.slot, generation, now))
            return out + self._converge(now)
        # Unexpected death: respawn, backing off if this slot keeps crashing.
        lived = now - (worker.ready_at if worker.ready_at is not None else worker.spawned_at)
        failures = 0 if lived >= self.stable_after else self._failures.get(worker.slot, 0) + 1
        self._failures[worker.slot] = failures
        delay = (
            0.0 if failures <= 1 else min(self.backoff_max, self.backoff_base * 2 ** (failures - 2))
        )
        if delay:
            out.append(
                Log("warn", f"{self.noun} {worker.slot} keeps dying: respawning in {delay:g}s")
            )
            self._delayed.append((now + delay, worker.slot, generation))
        else:
            out.append(self._spawn(worker.slot, generation, now))
        return out + self._converge(now)

    def heartbeat(self, pid: int, now: float) -> None:
        """A worker said it is alive (its reactor runs)."""
        worker = self.by_pid(pid)
        if worker is not None and worker.state == READY:
            worker.heard_at = now

    def tick(self, now: float, in_app: Container[int] = ()) -> list[Command]:
        """Time has passed: respawns after back-off, KILLs after die-timeout, frozen workers.
        ``in_app`` holds the pids of the workers inside the application right now (the
        scoreboard's view): their silence is --timeout's business, not a freeze."""
        out: list[Command] = self._frozen(now, in_app)
        if (
            self._growth_wanted
            and self._last_growth is not None
            and now >= self._last_growth + self.spawn_delay
        ):
            self._growth_wanted = False  # grow() may now succeed: the caller asks again if need be
        due = [d for d in self._delayed if d[0] <= now]
        self._delayed = [d for d in self._delayed if d[0] > now]
        for _, slot, generation in due:
            if self._members(slot, generation) < self._wanted(slot, generation):
                out.append(self._spawn(slot, generation, now))
        for w in list(self.workers.values()):
            if w.stop_deadline is not None and now >= w.stop_deadline and w.pid is not None:
                w.stop_deadline = None
                if self.stopping:
                    self.exit_status = 1
                out.append(
                    Log(
                        "warn",
                        f"{self.noun} {w.slot} (pid {w.pid}) did not exit in time: killing it",
                    )
                )
                out.append(Kill(w.pid, signal.SIGKILL))
        return out + self._converge(now)

    def reload(self, now: float) -> list[Command]:
        if self.stopping or self._reload_from is not None:
            return [Log("warn", "reload ignored: a reload or stop is already under way")]
        self._reload_from = self.generation
        self.generation += 1
        self._count("reload")
        out: list[Command] = [Log("info", f"reload: starting generation {self.generation}")]
        out += [self._spawn(slot, self.generation, now) for slot in range(self.procs)]
        return out + self._converge(now)

    def stop(self, now: float, graceful: bool = True) -> list[Command]:
        self.stopping = True
        self._delayed = []
        self._retire_queue = []
        self._growth_wanted = False
        if not self.workers:
            return [Halt(self.exit_status, "no workers left")]
        out: list[Command] = []
        for w in list(self.workers.values()):
            if graceful:
                out += self._stop_worker(w, signal.SIGTERM, "shutting down", now, force=True)
            else:
                w.state = STOPPING
                w.stop_reason = w.stop_reason or "shutting down"
                if w.pid is None:
                    w.pending_signal = signal.SIGINT
                    continue
                out.append(Kill(w.pid, signal.SIGINT))
                w.stop_deadline = now + 1.0
        return out

    def scale(self, delta: int, now: float) -> list[Command]:
        if self.stopping:
            return []
        target = max(1, self.procs + delta)
        if target == self.procs:
            return [Log("info", f"keeping {self.procs} worker(s): at least one must run")]
        out: list[Command] = [Log("info", f"workers: {self.procs} -> {target}")]
        added = range(self.procs, target)
        self.procs = target
        for slot in added:
            if self._members(slot, self.generation) < self._wanted(slot, self.generation):
                out.append(self._spawn(slot, self.generation, now))
        return out + self._converge(now)  # stops the workers of the slots removed

    def retire(self, pid: int, reason: str, now: float, detail: str = "") -> list[Command]:
        """Recycle a worker (max-requests, max-worker-rss): its replacement starts first, and
        only one worker recycles at a time so capacity never dips. ``reason`` counts in
        :attr:`restarts`; ``detail`` (a figure) is only logged."""
        worker = self.by_pid(pid)
        if worker is None or worker.state != READY or self.stopping or worker.stop_reason:
            return []
        worker.stop_reason = reason
        worker.stop_detail = detail
        self._retire_queue.append(worker.id)
        return self._converge(now)

    def hung(self, pid: int, now: float) -> list[Command]:
        """A worker spent longer than the request timeout inside the app: kill it now."""
        worker = self.by_pid(pid)
        if worker is None or worker.pid is None:
            return []
        self._count("timeout")
        worker.state = STOPPING
        worker.stop_reason = worker.stop_reason or "timeout"
        worker.stop_deadline = None
        worker.pending_signal = None
        return [Kill(worker.pid, signal.SIGKILL), *self._converge(now)]

    # -- helpers

    def _frozen(self, now: float, in_app: Container[int]) -> list[Command]:
        """Kill and replace each ready worker silent for ``liveness`` seconds outside the app
        (stopped, a reactor stuck outside the app). A stopped process cannot write a stack, so
        none is asked for: SIGKILL, and a new worker in its slot at once."""
        if not self.liveness or self.stopping:
            return []
        out: list[Command] = []
        for w in list(self.workers.values()):
            if w.state != READY or w.heard_at is None or w.pid is None:
                continue
            if now < w.heard_at + self.liveness:
                continue
            if w.pid in in_app:
                # Silent because the app holds its reactor: --timeout governs that. The window
                # restarts, so that it gets a full one to speak once it leaves the app.
                w.heard_at = now
                continue
            self._count("frozen")
            out.append(
                Log(
                    "error",
                    f"{self.noun} {w.slot} (pid {w.pid}) frozen: no heartbeat for "
                    f"{now - w.heard_at:.1f}s outside the app (liveness {self.liveness:g}s); "
                    "killing it and starting another",
                )
            )
            w.state = STOPPING
            w.stop_reason = "frozen"
            w.stop_deadline = None
            out.append(Kill(w.pid, signal.SIGKILL))
            if self._members(w.slot, w.generation) < self._wanted(w.slot, w.generation):
                out.append(self._spawn(w.slot, w.generation, now))
        return out

    def _reload_failed(
        self, worker: WorkerRecord, how: str, detail: str, now: float
    ) -> list[Command]:
        """A worker of the new generation died before it was ready: keep the old one serving."""
        assert self._reload_from is not None
        out: list[Command] = [
            Log(
                "error",
                f"reload failed: worker {worker.slot} of generation {worker.generation} did "
                f"not boot ({how}); generation {self._reload_from} keeps serving{detail}",
            )
        ]
        for w in list(self.workers.values()):
            if w.generation == self.generation:
                out += self._stop_worker(w, signal.SIGKILL, "failed reload", now)
        self._delayed = [d for d in self._delayed if d[2] != self.generation]
        self.generation = self._reload_from
        self._reload_from = None
        # Every slot the old generation served still has its worker (a crash during the reload
        # was respawned in the old generation); should one not, it gets one now.
        for slot in range(self.procs):
            if self._members(slot, self.generation) == 0:
                out.append(self._spawn(slot, self.generation, now))
        return out + self._converge(now)

    def _serving(self) -> tuple[int, ...]:
        """The generations that may have workers: the newest, and the one a reload replaces."""
        if self._reload_from is None:
            return (self.generation,)
        return (self.generation, self._reload_from)

    def _recycling(self) -> WorkerRecord | None:
        """The worker whose replacement may start or run now: the head of the retire queue (after
        dropping the workers that left or were stopped meanwhile). None during a reload, which
        replaces them all anyway, and while stopping."""
        while self._retire_queue:
            head = self.workers.get(self._retire_queue[0])
            if head is not None and head.state == READY and head.generation in self._serving():
                break
            self._retire_queue.pop(0)
        if not self._retire_queue or self.stopping or self._reload_from is not None:
            return None
        return self.workers[self._retire_queue[0]]

    def _members(self, slot: int, generation: int) -> int:
        """Workers serving (or about to serve) ``slot`` in ``generation``: those not stopping,
        and the respawns waiting for their back-off."""
        running = sum(
            1
            for w in self.workers.values()
            if w.slot == slot and w.generation == generation and w.state != STOPPING
        )
        return running + sum(1 for _, s, g in self._delayed if s == slot and g == generation)

    def _wanted(self, slot: int, generation: int) -> int:
        """How many workers ``slot`` should have in ``generation``: one, two while its worker is
        being recycled (it and its replacement), none outside ``procs`` or the serving
        generations."""
        if self.stopping or slot >= self.procs or generation not in self._serving():
            return 0
        head = self._recycling()
        if head is not None and head.slot == slot and head.generation == generation:
            return 2
        return 1

    def _converge(self, now: float) -> list[Command]:
        """Bring the table to what is wanted: finish a reload whose generation is ready, stop
        every surplus worker, start the next replacement, send the signals of workers stopped
        before they had a pid. Called at the end of every event."""
        out: list[Command] = []
        if not self.stopping:
            out += self._finish_reload(now)
            for w in list(self.workers.values()):
                if w.state == STOPPING:
                    continue
                if w.slot >= self.procs:
                    out += self._stop_worker(w, signal.SIGTERM, "scaled down", now)
                elif w.generation not in self._serving():
                    out += self._stop_worker(w, signal.SIGTERM, "reload", now)
            self._delayed = [
                d for d in self._delayed if d[1] < self.procs and d[2] in self._serving()
            ]
            for slot, generation in sorted({(w.slot, w.generation) for w in self.workers.values()}):
                out += self._trim(slot, generation, now)
            head = self._recycling()
            if head is not None and self._members(head.slot, head.generation) < 2:
                out += self._start_replacement(head, now)
        for w in self.workers.values():
            if w.pending_signal is not None and w.pid is not None:
                signum, w.pending_signal = w.pending_signal, None
                w.stop_deadline = now + (
                    1.0 if signum == signal.SIGINT else self.die_timeout + self.kill_grace
                )
                out.append(Kill(w.pid, signum))
        return out

    def _finish_reload(self, now: float) -> list[Command]:
        """Once every slot has a ready worker of the new generation, the old one retires."""
        if self._reload_from is None:
            return []
        for slot in range(self.procs):
            if not any(
                w.slot == slot and w.generation == self.generation and w.state == READY
                for w in self.workers.values()
            ):
                return []
        old, self._reload_from = self._reload_from, None
        return [Log("info", f"generation {self.generation} ready: retiring {old}")]

    def _trim(self, slot: int, generation: int, now: float) -> list[Command]:
        """Stop the surplus among one slot's workers of one generation: those older than its
        newest ready worker (they have been replaced), then the newest beyond what is wanted
        (a replacement no longer needed), then respawns waiting beyond that."""
        members = sorted(
            (
                w
                for w in self.workers.values()
                if w.slot == slot and w.generation == generation and w.state != STOPPING
            ),
            key=lambda w: w.id,
        )
        out: list[Command] = []
        ready = [w for w in members if w.state == READY]
        if ready:
            newest = ready[-1]
            for w in members:
                if w.id < newest.id:
                    out += self._stop_worker(w, signal.SIGTERM, w.stop_reason or "replaced", now)
            members = [w for w in members if w.id >= newest.id]
        wanted = self._wanted(slot, generation)
        for w in members[wanted:]:
            out += self._stop_worker(w, signal.SIGTERM, "no longer needed", now)
        room = max(0, wanted - len(members))
        waiting = [d for d in self._delayed if d[1] == slot and d[2] == generation]
        for d in waiting[room:]:
            self._delayed.remove(d)
        return out

    def _start_replacement(self, worker: WorkerRecord, now: float) -> list[Command]:
        self._count(worker.stop_reason)
        detail = f" ({worker.stop_detail})" if worker.stop_detail else ""
        return [
            Log(
                "info",
                f"{self.noun} {worker.slot} (pid {worker.pid}): {worker.stop_reason}{detail}; "
                "starting its replacement",
            ),
            self._spawn(worker.slot, worker.generation, now),
        ]

    def _spawn(self, slot: int, generation: int, now: float) -> Spawn:
        worker = WorkerRecord(next(self._ids), slot, generation, now)
        self.workers[worker.id] = worker
        return Spawn(worker)

    def _stop_worker(
        self, worker: WorkerRecord, signum: int, reason: str, now: float, force: bool = False
    ) -> list[Command]:
        if worker.state == STOPPING and not force:
            return []
        worker.state = STOPPING
        worker.stop_reason = worker.stop_reason or reason
        if worker.pid is None:
            worker.pending_signal = signum  # sent by _converge once the executor reports its pid
            return []
        worker.stop_deadline = now + self.die_timeout + self.kill_grace
        return [Kill(worker.pid, signum)]

    def _count(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
