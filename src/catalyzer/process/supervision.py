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
"""

from __future__ import annotations

import itertools
import signal
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
    stop_deadline: float | None = None
    stats: dict[str, object] = field(default_factory=dict)


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
    ) -> None:
        self.procs = procs
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
        if self._growth_wanted and self._last_growth is not None:
            times.append(self._last_growth + self.spawn_delay)
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
        if not self.booted or self.stopping:
            return [Halt(BOOT_FAILURE, text)]
        self._count("spawn-failure")
        delay = self.backoff_max
        self._delayed.append((now + delay, worker.slot, worker.generation))
        return [Log("error", f"{text}; trying again in {delay:g}s")]

    def ready(self, pid: int, now: float) -> list[Command]:
        worker = self.by_pid(pid)
        if worker is None or worker.state != STARTING:
            return []
        worker.state = READY
        worker.ready_at = now
        self.booted = True
        out: list[Command] = [Log("info", f"{self.noun} {worker.slot} (pid {pid}) ready")]
        if self.stopping:
            return out + self._stop_worker(worker, signal.SIGTERM, "shutting down", now)
        if self._reload_from is not None:
            new = [w for w in self.workers.values() if w.generation == self.generation]
            if new and all(w.state == READY for w in new):
                old = self._reload_from
                self._reload_from = None
                out.append(Log("info", f"generation {self.generation} ready: retiring {old}"))
                for w in list(self.workers.values()):
                    if w.generation < self.generation and w.state != STOPPING:
                        out += self._stop_worker(w, signal.SIGTERM, "reload", now)
            return out
        # A replacement for a recycled worker is ready: now the old one may go.
        for w in list(self.workers.values()):
            if (
                w.slot == worker.slot
                and w.id != worker.id
                and w.state == READY
                and (w.generation == worker.generation)
            ):
                out += self._stop_worker(w, signal.SIGTERM, w.stop_reason or "replaced", now)
        return out

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
        if self._retire_queue and self._retire_queue[0] == worker.id:
            self._retire_queue.pop(0)
        if self.stopping:
            # A worker that had to cut requests exits 1. (One that was still booting may die of
            # the TERM itself: nothing was in flight there. Our own KILL is counted in tick.)
            if status not in (0, None):
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
                # The new generation cannot boot: keep the old one serving.
                out.append(
                    Log(
                        "error",
                        f"reload failed: worker {worker.slot} of generation {worker.generation} did "
                        f"not boot ({how}); generation {self._reload_from} keeps serving{detail}",
                    )
                )
                for w in list(self.workers.values()):
                    if w.generation == self.generation:
                        out += self._stop_worker(w, signal.SIGKILL, "failed reload", now)
                self.generation = self._reload_from
                self._reload_from = None
                return out
            self._count("boot-failure")
            out.append(Log("error", f"{self.noun} {worker.slot} failed to boot ({how}){detail}"))
        elif not expected:
            self._count("crashed")
            out.append(
                Log("error", f"{self.noun} {worker.slot} (pid {pid}) died unexpectedly ({how})")
            )
        if expected and worker.generation != self.generation:
            return out  # retired by a reload: its slot is served by the new generation
        if expected and any(
            w.slot == worker.slot and w.generation == worker.generation
            for w in self.workers.values()
        ):
            return out  # recycled: its replacement is already running
        if worker.slot >= self.procs:
            return out  # scaled down
        if expected:
            out.append(self._spawn(worker.slot, worker.generation, now))
            return out
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
            self._delayed.append((now + delay, worker.slot, worker.generation))
        else:
            out.append(self._spawn(worker.slot, worker.generation, now))
        return out

    def tick(self, now: float) -> list[Command]:
        out: list[Command] = []
        if (
            self._growth_wanted
            and self._last_growth is not None
            and now >= self._last_growth + self.spawn_delay
        ):
            self._growth_wanted = False  # grow() may now succeed: the caller asks again if need be
        due = [d for d in self._delayed if d[0] <= now]
        self._delayed = [d for d in self._delayed if d[0] > now]
        for _, slot, generation in due:
            if not self.stopping and slot < self.procs and generation == self.generation:
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
        return out

    def reload(self, now: float) -> list[Command]:
        if self.stopping or self._reload_from is not None:
            return [Log("warn", "reload ignored: a reload or stop is already under way")]
        self._reload_from = self.generation
        self.generation += 1
        self._count("reload")
        out: list[Command] = [Log("info", f"reload: starting generation {self.generation}")]
        out += [self._spawn(slot, self.generation, now) for slot in range(self.procs)]
        return out

    def stop(self, now: float, graceful: bool = True) -> list[Command]:
        self.stopping = True
        self._delayed = []
        self._growth_wanted = False
        if not self.workers:
            return [Halt(self.exit_status, "no workers left")]
        out: list[Command] = []
        for w in list(self.workers.values()):
            if graceful:
                out += self._stop_worker(w, signal.SIGTERM, "shutting down", now, force=True)
            elif w.pid is not None:
                w.state = STOPPING
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
        if target > self.procs:
            out += [self._spawn(slot, self.generation, now) for slot in range(self.procs, target)]
        else:
            for w in list(self.workers.values()):
                if w.slot >= target:
                    out += self._stop_worker(w, signal.SIGTERM, "scaled down", now)
        self.procs = target
        return out

    def retire(self, pid: int, reason: str, now: float) -> list[Command]:
        """Recycle a worker (max-requests, a hung request): its replacement starts first, and only
        one worker recycles at a time so capacity never dips."""
        worker = self.by_pid(pid)
        if worker is None or worker.state != READY or self.stopping or worker.stop_reason:
            return []
        worker.stop_reason = reason
        self._retire_queue.append(worker.id)
        if self._retire_queue[0] != worker.id:
            return []
        return self._start_replacement(worker, now)

    def hung(self, pid: int, now: float) -> list[Command]:
        """A worker spent longer than the request timeout inside the app: kill it now."""
        worker = self.by_pid(pid)
        if worker is None or worker.pid is None:
            return []
        self._count("timeout")
        worker.state = STOPPING
        worker.stop_reason = worker.stop_reason or "timeout"
        return [Kill(worker.pid, signal.SIGKILL)]

    # -- helpers

    def _start_replacement(self, worker: WorkerRecord, now: float) -> list[Command]:
        self._count(worker.stop_reason)
        return [
            Log(
                "info",
                f"{self.noun} {worker.slot} (pid {worker.pid}): {worker.stop_reason}; "
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
            return []
        worker.stop_deadline = now + self.die_timeout + self.kill_grace
        out: list[Command] = [Kill(worker.pid, signum)]
        # The next worker waiting to be recycled may start once this one is on its way out.
        if self._retire_queue and self._retire_queue[0] == worker.id:
            self._retire_queue.pop(0)
            if self._retire_queue:
                nxt = self.workers.get(self._retire_queue[0])
                if nxt is not None:
                    out += self._start_replacement(nxt, now)
        return out

    def _count(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
