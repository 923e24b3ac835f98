"""The prefork master (``--procs N``): binds the listening sockets, spawns and supervises the
workers, and turns signals into actions. It never imports the application.

Decisions are made by :class:`catalyzer.process.supervision.Supervisor`; this service carries them out:
``reactor.spawnProcess`` with the listening sockets (:mod:`catalyzer.prefork.listeners`), a
control socketpair (AMP) and a shared scoreboard passed as file descriptors, signals sent through
each process's transport, and the log; :class:`catalyzer.process.executor.Executor` hands it the
commands and times the supervisor's deadlines. The reactor is a parameter:
``tests/prefork/test_master.py`` runs the master on :class:`catalyzer.testing.FakeProcessReactor`.

Signals (each handler only enqueues the action for the reactor):

====== ===============================================================================
HUP    new generation of workers with fresh code; the old one retires once all are ready
TERM   stop accepting, TERM every worker, KILL what is left after die-timeout; exit 0 or 1
INT    quick stop (also QUIT)
USR1   state dump in the log: the master's table and every worker's connections
TTIN   one worker more; TTOU: one fewer
====== ===============================================================================
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import interfaces
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from catalyzer.http.progress import ProgressRegistry
from catalyzer.ops import metrics, trace
from catalyzer.ops.introspection import registry as introspection
from catalyzer.ops.metrics import CounterTotals, read_counts, snapshot_of
from catalyzer.prefork import control, fdpass
from catalyzer.prefork.balance import Balancer, Give, WorkerLoad
from catalyzer.prefork.fdpass import FdReader
from catalyzer.prefork.handoff import Drop, HandoffRouter, WorkerView
from catalyzer.prefork.listeners import Listener, listen
from catalyzer.prefork.reloader import FileWatcher
from catalyzer.process import signals
from catalyzer.process.children import (
    SupervisedChild,
    exit_at_interpreter_exit,
    halt,
    spawn_child,
)
from catalyzer.process.children import set_title as _set_title
from catalyzer.process.executor import Executor
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.process.supervision import READY, Command, Supervisor
from catalyzer.process.supervision import WorkerRecord as Record
from catalyzer.server.listening import listen_all
from catalyzer.settings import Config

__all__ = ["MasterService"]

log = Logger(namespace="catalyzer.prefork.master")
worker_log = Logger(namespace="catalyzer.prefork.worker")


def _log(level: str, text: str) -> None:
    """A supervisor's Log command (its levels are twisted.logger's names)."""
    log.emit(LogLevel.levelWithName(level), "{text}", text=text)


# How long a worker hung past --timeout gets to write its stack (SIGUSR2) before its KILL.
_KILL_AFTER_DUMP = 0.5
# How long a connection handed over waits for a worker out of the app before it goes back to
# the one it came from (which answers it once its own app call is over), and how often the
# master looks for one meanwhile.
_HANDOFF_HOLD = 1.0
_HANDOFF_RETRY = 0.005
# How faulthandler's dump of a thread begins ("Current thread 0x... (most recent call first):").
_STACK_HEADER = "(most recent call first):"


class WorkerProcess(SupervisedChild):
    """The master's view of one worker process: its output and its end."""

    def __init__(self, master: MasterService, record: Record, scoreboard: Scoreboard) -> None:
        super().__init__(worker_log, self._label, record)
        self.master = master
        self.scoreboard = scoreboard
        self.control: amp.AMP | None = None
        # Set once the worker has been in the app past --timeout and asked for its stack.
        self.hung_since: float | None = None
        self.stack_seen = False
        # Our end of its connection hand-off channel (prefork.fdpass), once spawned.
        self.handoff: FdReader | None = None

    def _label(self) -> str:
        return f"worker {self.record.slot} pid {self.record.pid}"

    def line_received(self, text: str) -> None:
        if self.hung_since is not None and text.rstrip().endswith(_STACK_HEADER):
            self.stack_seen = True
        super().line_received(text)

    def ended(self, status: int | None, signum: int | None) -> None:
        if self.handoff is not None:
            self.handoff.stop()
        try:
            self.master.worker_exited(self, status, signum)
        finally:
            self.scoreboard.close()


class MasterControl(control.QuietAMP):
    """The master's end of one worker's control channel."""

    def __init__(self, master: MasterService, process: WorkerProcess) -> None:
        amp.AMP.__init__(self)
        self.master = master
        self.process = process

    @control.Ready.responder
    def ready(self, pid: int) -> dict[str, Any]:
        self.master.worker_ready(self.process)
        return {}

    @control.Heartbeat.responder
    def heartbeat(self, stats: str) -> dict[str, Any]:
        self.process.record.stats = json.loads(stats)
        self.master.heartbeat(self.process)
        return {}

    @control.Watch.responder
    def watch(self, paths: str) -> dict[str, Any]:
        if self.master.watcher is not None:
            self.master.watcher.watch(json.loads(paths), since=self.process.record.spawned_at)
        return {}

    @control.Progress.responder
    def progress(self, entries: str) -> dict[str, Any]:
        self.master.record_progress(self.process, json.loads(entries))
        return {}

    @control.QueryProgress.responder
    def query_progress(self, upload_id: str) -> dict[str, Any]:
        return {"entry": json.dumps(self.master.progress.get(upload_id, self.master._now()))}

    @control.Retire.responder
    def retire(self, reason: str, detail: str | None = None) -> dict[str, Any]:
        self.master.retire(self.process, reason, detail or "")
        return {}


class MasterService(Service):
    def __init__(
        self,
        config: Config,
        endpoints: Sequence[tuple[str, interfaces.IStreamServerEndpoint]],
        reactor: Any,
        *,
        at_exit: Callable[[int], object] = exit_at_interpreter_exit,
        worker_module: str = "catalyzer.prefork.worker",
        balance: bool = True,
        command: str = "catalyzer",
    ) -> None:
        """``reactor`` spawns the workers and times everything; ``at_exit(status)`` makes the
        process exit with a halt's non-zero status once twistd is done. ``worker_module`` is
        what a worker runs (``python -m``): split mode's handler workers speak the same control
        contract (:mod:`catalyzer.prefork.control`); ``balance``: its workers serve client
        connections, which ``balance-every`` moves from busy to idle workers. ``command`` begins
        the line a halt leaves on standard error."""
        self.worker_module = worker_module
        self.command = command
        self.config = config
        self.endpoints = endpoints
        self.reactor = reactor
        self.at_exit = at_exit
        self.supervisor = Supervisor(
            config.procs, die_timeout=config.die_timeout, liveness=config.worker_liveness
        )
        self.executor = Executor(
            self.supervisor,
            reactor,
            spawn=self._spawn,
            kill=self._kill,
            log=_log,
            halt=self._halt,
            in_app=self._in_app,
        )
        self.listeners: list[Listener] = []
        self.processes: dict[int, WorkerProcess] = {}  # record id -> process
        self.halted: int | None = None
        # Every worker's request counters, read from its scoreboard: those of the workers alive,
        # and the final ones of every worker that has exited, so that the totals never go down.
        self.counters = CounterTotals()
        self._hang_check: Any = None  # the IDelayedCall of the next --timeout check
        self.watcher: FileWatcher | None = None
        self._reload_pending = False
        self.progress = ProgressRegistry(config.progress_ttl, config.progress_entries)
        self._upload_owner: dict[str, int] = {}  # upload id -> record id of the receiving worker
        self._devnull = os.open(os.devnull, os.O_RDWR)
        # Keep-alive connections given away by workers stuck in the app (prefork.handoff).
        self.handoffs = HandoffRouter(hold_limit=_HANDOFF_HOLD)
        self._handoff_retry: Any = None
        # Keep-alive connections moved from a busy worker to an idle one (prefork.balance).
        every = config.balance_every if balance else 0.0
        self.balancer = Balancer(every) if every > 0 else None
        self._balance_call: LoopingCall | None = None
        self._balance_to: dict[int, int] = {}  # record id of a giving worker -> its receiver
        self.rebalanced = 0

    # -- start

    def privilegedStartService(self) -> None:
        # Before listening: see signals.take_over.
        signals.take_over(
            self.reactor,
            {
                signal.SIGHUP: self.reload,
                signal.SIGTERM: lambda: self.stop(graceful=True),
                signal.SIGINT: lambda: self.stop(graceful=False),
                signal.SIGQUIT: lambda: self.stop(graceful=False),
                signal.SIGUSR1: self.dump,
                signal.SIGTTIN: lambda: self._run(self.supervisor.scale(1, self._now())),
                signal.SIGTTOU: lambda: self._run(self.supervisor.scale(-1, self._now())),
            },
        )
        self.listeners = listen_all(
            [(description, (description, endpoint)) for description, endpoint in self.endpoints],
            lambda named: listen(*named, self.config.procs, self.config.reuse_port),
            logger=log,
            close=Listener.close,
            address=lambda listener: listener.address,
        )
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self.reactor.callWhenRunning(_set_title, f"catalyzer master [{self.config.app}]")
        log.info("master pid {pid}: starting {n} workers", pid=os.getpid(), n=self.config.procs)
        if self.config.reload:
            self.watcher = FileWatcher(self.reactor, self._files_changed)
            self.watcher.watch_patterns(self.config.watch)
            self.watcher.start()
        self._run(self.supervisor.start(self._now()))
        self._check_hangs()

    def stopService(self) -> None:
        Service.stopService(self)
        if self.watcher is not None:
            self.watcher.stop()
        self.executor.cancel()
        self._cancel_hang_check()
        if self._balance_call is not None and self._balance_call.running:
            self._balance_call.stop()
        self._close_handoffs()
        # The reactor is stopping for a reason other than our own orderly exit: leave no orphans.
        for process in list(self.processes.values()):
            process.signal(signal.SIGKILL)

    # -- actions

    def reload(self) -> None:
        log.info("SIGHUP: reloading")
        self._run(self.supervisor.reload(self._now()))

    def _files_changed(self, paths: list[str]) -> None:
        if self.supervisor.stopping:
            return
        log.info("changed: {paths}; reloading", paths=", ".join(paths))
        if self.supervisor.reloading:
            self._reload_pending = True  # after the reload under way: it may predate the save
            return
        self._run(self.supervisor.reload(self._now()))

    def _after_reload(self) -> None:
        if self._reload_pending and not self.supervisor.reloading:
            self._reload_pending = False
            self._run(self.supervisor.reload(self._now()))

    def stop(self, graceful: bool) -> None:
        if self.supervisor.stopping and graceful:
            return
        log.info("{how} stop", how="graceful" if graceful else "quick")
        for listener in self.listeners:
            listener.close()
        self._run(self.supervisor.stop(self._now(), graceful=graceful))

    def heartbeat(self, process: WorkerProcess) -> None:
        if process.record.pid is not None:
            self.supervisor.heartbeat(process.record.pid, self._now())
        balancer = self.balancer
        if balancer is not None and not balancer.sampling:
            requests = read_counts(process.scoreboard.counters())[metrics.REQUESTS]
            if balancer.heard(process.record.id, requests, self._now()):
                self._balance_call = LoopingCall(self._balance)
                self._balance_call.clock = self.reactor
                self._balance_call.start(balancer.period)

    def _in_app(self) -> set[int]:
        """The pids whose scoreboard says they are inside the application now."""
        return {
            p.record.pid
            for p in self.processes.values()
            if p.record.pid is not None and p.scoreboard.read()[0]
        }

    def retire(self, process: WorkerProcess, reason: str, detail: str = "") -> None:
        if process.record.pid is not None:
            self._run(self.supervisor.retire(process.record.pid, reason, self._now(), detail))

    def dump(self) -> None:
        log.info("{dump}", dump=self.dump_text())
        for process in self.processes.values():
            if process.control is not None and process.record.state == READY:
                d = process.control.callRemote(control.Dump)
                d.addCallback(lambda r: log.info("{text}", text=r["text"]))
                d.addErrback(lambda f: None)

    def dump_text(self) -> str:
        """The master's table of workers (USR1 also logs each worker's own view)."""
        now = self._now()
        lines = [
            f"state of master pid {os.getpid()}: generation {self.supervisor.generation}, "
            f"{len(self.supervisor.workers)} workers, restarts {self.supervisor.restarts}"
        ]
        self._read_counters()
        for record in self.supervisor.live():
            stats = record.stats
            process = self.processes.get(record.id)
            in_app = ""
            if process is not None:
                entered, what = process.scoreboard.read()
                if entered:
                    in_app = f", in app for {now - entered:.1f}s on {what}"
                stuck = process.scoreboard.stuck()
                if stuck:
                    in_app += f", every app thread in a long call for {now - stuck:.1f}s"
            lines.append(
                f"  worker {record.slot} pid {record.pid} gen {record.generation} "
                f"{record.state} up {now - record.spawned_at:.0f}s, "
                f"{self._requests_of(record)} requests, {stats.get('connections', 0)} connections, "
                f"rss {int(stats.get('rss', 0)) // 1024} KiB{in_app}"  # type: ignore[call-overload]
            )
        dispatchers = (
            introspection.describe_all()
        )  # task dispatchers running in the master itself (a .tac)
        if dispatchers:
            lines.append(dispatchers)
        return "\n".join(lines)

    def status(self) -> dict[str, Any]:
        """The state dump as data, with every worker's numbers added up (for ``--stats``)."""
        now = self._now()
        workers = []
        self._read_counters()
        for record in self.supervisor.live():
            process = self.processes.get(record.id)
            # Read now, not from the last heartbeat: with --threads, whether every app thread
            # is stuck in a long call (prefork.poolrescue), since when (0.0: not).
            stuck = process.scoreboard.stuck() if process is not None else 0.0
            workers.append(
                {
                    "slot": record.slot,
                    "pid": record.pid,
                    "generation": record.generation,
                    "state": record.state,
                    "uptime": round(now - record.spawned_at, 3),
                    **record.stats,
                    "requests": self._requests_of(record),
                    "threads_stuck_since": stuck,
                }
            )
        # Counters: every request answered, by the workers alive and those gone (their final
        # counts); gauges: only the workers alive.
        total = self.counters.total()
        return {
            "pid": os.getpid(),
            "generation": self.supervisor.generation,
            "workers": workers,
            "restarts": dict(self.supervisor.restarts),
            "workers_retired": self.counters.workers_retired,
            "requests": total[metrics.REQUESTS],
            "connections": _total(workers, "connections"),
            "in_flight": _total(workers, "in_flight"),
            "rebalanced": self.rebalanced,
            "metrics": snapshot_of(total),
            "progress_entries": len(self.progress.entries),
        }

    def _read_counters(self) -> None:
        """Each live worker's counters, from its scoreboard."""
        for record_id, process in self.processes.items():
            self.counters.reported(record_id, read_counts(process.scoreboard.counters()))

    def _requests_of(self, record: Record) -> int:
        counts = self.counters.of(record.id)
        return counts[metrics.REQUESTS] if counts is not None else 0

    def record_progress(self, source: WorkerProcess, entries: dict[str, Any]) -> None:
        """News of a worker's uploads: the one view every worker's polls are answered from."""
        self.progress.update(entries, self._now())
        for upload_id, entry in entries.items():
            if entry.get("state") == "uploading":
                self._upload_owner[upload_id] = source.record.id
            else:
                self._upload_owner.pop(upload_id, None)

    def ready(self) -> bool:
        return not self.supervisor.stopping and any(
            w.state == READY for w in self.supervisor.workers.values()
        )

    # -- worker events

    def worker_ready(self, process: WorkerProcess) -> None:
        pid = process.record.pid
        if trace.ENABLED:
            trace.emit("ready", worker=process.record.slot, child=pid)
        if pid is not None:
            commands = self.supervisor.ready(pid, self._now())
            process.release()
            self._run(commands)
            self._after_reload()
            self._check_hangs()  # it may have entered the app already

    def worker_exited(self, process: WorkerProcess, status: int | None, signum: int | None) -> None:
        self.processes.pop(process.record.id, None)
        orphans = [u for u, owner in self._upload_owner.items() if owner == process.record.id]
        if orphans:
            # The worker receiving these uploads is gone: they will never finish.
            now = self._now()
            for upload_id in orphans:
                del self._upload_owner[upload_id]
                self.progress.failed(upload_id, None, now)
        # Its final counts, whatever its end (nothing writes them any more): read once, here.
        self.counters.exited(process.record.id, _final_counts(process.scoreboard))
        pid = process.record.pid
        if trace.ENABLED:
            trace.emit("exit", worker=process.record.slot, child=pid, status=status, signal=signum)
        if pid is None:
            return
        if process.hung_since is not None:
            self._report_stack(process)
        output = process.held_text()
        self._run(self.supervisor.exited(pid, status, signum, self._now(), output))
        self._after_reload()
        slot = process.record.slot
        if slot >= self.supervisor.procs and not any(
            w.slot == slot for w in self.supervisor.workers.values()
        ):
            for listener in self.listeners:
                listener.release(slot)

    # -- carrying out decisions

    def _run(self, commands: Sequence[Command]) -> None:
        self.executor.run(commands)

    def _kill(self, pid: int, signum: int) -> None:
        process = next((p for p in self.processes.values() if p.record.pid == pid), None)
        if process is not None:
            process.signal(signum)

    def _spawn(self, record: Record) -> None:
        scoreboard = Scoreboard.create()
        # stdout is shared (the access log's "-" and the app's prints go straight out); stderr
        # carries the worker's log, which we tag with its number.
        child_fds: dict[int, Any] = {0: self._devnull, 1: 1, 2: "r"}
        listeners = []
        for n, listener in enumerate(self.listeners):
            child_fds[3 + n] = listener.fd_for(record.slot)
            listeners.append(
                {"description": listener.description, "family": listener.family, "fd": 3 + n}
            )
        control_fd = 3 + len(self.listeners)
        scoreboard_fd = control_fd + 1
        child_fds[scoreboard_fd] = scoreboard.fd
        handoff_fd = scoreboard_fd + 1
        ours, theirs = fdpass.pair()
        child_fds[handoff_fd] = theirs.fileno()
        env = dict(os.environ)
        env[control.ENV_KEY] = control.worker_environment(
            self.config,
            record.slot,
            record.generation,
            listeners,
            control_fd,
            scoreboard_fd,
            handoff_fd,
        )
        process = WorkerProcess(self, record, scoreboard)
        try:
            pid = spawn_child(
                self.reactor,
                process,
                [sys.executable, "-m", self.worker_module],
                env=env,
                child_fds=child_fds,
                control_fd=control_fd,
                control=lambda: self._control_for(process),
                path=os.getcwd(),
            )
        except OSError as e:
            scoreboard.close()
            ours.close()
            self._run(self.supervisor.spawn_failed(record, f"{sys.executable}: {e}", self._now()))
            return
        finally:
            theirs.close()
        process.handoff = fdpass.FdReader(
            self.reactor, ours, lambda fd: self._handed_over(process, fd)
        )
        process.handoff.start()
        self.supervisor.spawned(record, pid)
        if trace.ENABLED:
            trace.emit("spawn", worker=record.slot, generation=record.generation, child=pid)
        self.processes[record.id] = process
        self.counters.started(record.id)

    # -- keep-alive hand-off: connections from workers stuck in the app to idle ones

    def _handed_over(self, source: WorkerProcess, fd: int) -> None:
        # Also while stopping: the worker that takes it answers with Connection: close.
        self.handoffs.received(
            fd, source.record.id, self._now(), prefer=self._balance_to.get(source.record.id)
        )
        if trace.ENABLED:
            trace.emit("handoff", worker=source.record.slot, held=self.handoffs.holding)
        self._route_handoffs()

    def _view(self, record_id: int, process: WorkerProcess) -> WorkerView:
        """A worker as connection routing sees it: whether it can take connections, whether
        its scoreboard says it can start no request now (in the app; with ``--threads``, every
        thread stuck in a long call: prefork.poolrescue)."""
        scoreboard = process.scoreboard
        busy = scoreboard.stuck() if self.config.threads else scoreboard.read()[0]
        return WorkerView(
            id=record_id,
            ready=process.record.state == READY and process.handoff is not None,
            in_app=bool(busy),
        )

    def _route_handoffs(self) -> None:
        if self._handoff_retry is not None and self._handoff_retry.active():
            self._handoff_retry.cancel()  # a new arrival: one look now, one timer after
        self._handoff_retry = None
        now = self._now()
        views = [self._view(record_id, process) for record_id, process in self.processes.items()]
        for command in self.handoffs.route(views, now):
            if isinstance(command, Drop):
                log.warn("a keep-alive connection handed over was closed: {r}", r=command.reason)
                os.close(command.token)
                continue
            target = self.processes.get(command.worker)
            reader = target.handoff if target is not None else None
            if reader is not None and fdpass.send_fd(reader.sock, command.token):
                os.close(command.token)  # the worker has its own copy now
                continue
            dropped = self.handoffs.undelivered(command, now)
            if dropped is not None:
                log.warn("a keep-alive connection handed over was closed: {r}", r=dropped.reason)
                os.close(dropped.token)
        if self.handoffs.holding:
            # Every worker is in the app: look again soon (scoreboards cannot call us).
            self._handoff_retry = self.reactor.callLater(_HANDOFF_RETRY, self._route_handoffs)

    def _balance(self) -> None:
        """Every balance-every seconds: the workers' request rates; a busy worker gives part
        of its keep-alive connections to the least busy one."""
        assert self.balancer is not None
        loads = []
        for record_id, process in self.processes.items():
            view = self._view(record_id, process)
            requests = read_counts(process.scoreboard.counters())[metrics.REQUESTS]
            loads.append(WorkerLoad(view.id, view.ready, view.in_app, requests))
        give = self.balancer.observe(loads)
        if not self.balancer.sampling and self._balance_call is not None:
            self._balance_call.stop()
            self._balance_call = None
        if give is None:
            return
        source = self.processes.get(give.worker)
        if source is None or source.control is None:
            return
        self._balance_to = {give.worker: give.to}
        d = source.control.callRemote(control.Rebalance, share=give.share)
        d.addCallback(self._rebalanced, source, give)
        d.addErrback(lambda f: None)  # the worker went away meanwhile

    def _rebalanced(self, answer: dict[str, int], source: WorkerProcess, give: Give) -> None:
        self.rebalanced += answer["moved"]
        if trace.ENABLED:
            trace.emit(
                "rebalance",
                worker=source.record.slot,
                share=round(give.share, 3),
                moved=answer["moved"],
            )

    def _close_handoffs(self) -> None:
        if self._handoff_retry is not None and self._handoff_retry.active():
            self._handoff_retry.cancel()
        self._handoff_retry = None
        for fd in self.handoffs.forget_all():
            os.close(fd)

    def _control_for(self, process: WorkerProcess) -> MasterControl:
        process.control = MasterControl(self, process)
        return process.control

    # -- --timeout: a worker too long in the app

    def _check_hangs(self, due: float | None = None) -> None:
        """Ask for the stack of, then kill, each worker that has spent --timeout in the app on
        one request; check again when the next one could.

        The scoreboard cannot tell the master when a worker enters the app, but no request can
        time out before ``entered + timeout``, nor one not yet entered before ``now + timeout``:
        the check is armed at the earliest of these, and again when a worker becomes ready.
        ``due`` is the instant the timer was armed for."""
        self._cancel_hang_check()
        timeout = self.config.timeout
        if not timeout or self.supervisor.stopping:
            return
        # Never earlier than the instant the check was armed for (see Executor._fire).
        now = self._now() if due is None else max(self._now(), due)
        next_check = now + timeout
        for process in list(self.processes.values()):
            record = process.record
            if record.state != READY or record.pid is None or process.hung_since is not None:
                continue
            entered, what = process.scoreboard.read()
            if not entered:
                continue
            expires = entered + timeout  # computed the same way as the instant armed for it
            if expires > now:
                next_check = min(next_check, expires)
                continue
            process.hung_since = now
            log.error(
                "worker {slot} (pid {pid}) has spent {elapsed:.1f}s in the app on {what} "
                "(timeout {timeout:g}s): asking for its stack, then killing it",
                slot=record.slot,
                pid=record.pid,
                elapsed=now - entered,
                what=what,
                timeout=timeout,
            )
            process.signal(signal.SIGUSR2)  # faulthandler in the worker dumps its stack
            self.reactor.callLater(
                _KILL_AFTER_DUMP,
                lambda pid=record.pid: self._run(self.supervisor.hung(pid, self._now())),
            )
        self._hang_check = self.reactor.callLater(
            max(0.0, next_check - self._now()), self._check_hangs, next_check
        )

    def _cancel_hang_check(self) -> None:
        if self._hang_check is not None and self._hang_check.active():
            self._hang_check.cancel()
        self._hang_check = None

    def _report_stack(self, process: WorkerProcess) -> None:
        """Once a worker killed after --timeout has ended (all its output has been read), say
        whether the stack logged before is its own: a worker that is stopped (SIGSTOP) or
        blocked in the kernel cannot run faulthandler's handler, and then nothing was written."""
        record = process.record
        if process.stack_seen:
            log.error(
                "worker {slot} (pid {pid}) killed after --timeout: its stack is logged above",
                slot=record.slot,
                pid=record.pid,
            )
        else:
            log.error(
                "worker {slot} (pid {pid}) killed after --timeout: no stack: the worker did not "
                "answer the dump request (SIGUSR2) within {wait:g}s (stopped, or blocked where "
                "no signal handler runs)",
                slot=record.slot,
                pid=record.pid,
                wait=_KILL_AFTER_DUMP,
            )

    def _halt(self, status: int, reason: str) -> None:
        if self.halted is not None:
            return
        self.halted = status
        if status:
            log.error("exiting with status {status}: {reason}", status=status, reason=reason)
        else:
            log.info("{reason}: exiting", reason=reason)
        for process in list(self.processes.values()):
            process.signal(signal.SIGKILL)
        halt(self.reactor, status, f"{self.command}: {reason}", at_exit=self.at_exit)

    def _now(self) -> float:
        now: float = self.reactor.seconds()
        return now


def _final_counts(scoreboard: Scoreboard) -> list[int] | None:
    """The counters an exited worker left (None if its memory cannot be read: then the last ones
    read are kept, and the rest of the exit's handling goes on)."""
    try:
        final: list[int] = scoreboard.counters().tolist()
    except (ValueError, BufferError) as e:  # a closed mapping
        log.error("the counters of an exited worker could not be read: {e}", e=e)
        return None
    return final


def _total(workers: list[dict[str, Any]], key: str) -> int:
    return sum(w[key] for w in workers if isinstance(w.get(key), int))
