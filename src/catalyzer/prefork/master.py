"""The prefork master (``--procs N``): binds the listening sockets, spawns and supervises the
workers, and turns signals into actions. It never imports the application.

Decisions are made by :class:`catalyzer.process.supervision.Supervisor`; this service carries them out:
``reactor.spawnProcess`` with the listening sockets, a control socketpair (AMP) and a shared
scoreboard passed as file descriptors, ``os.kill`` for signals, and the log.

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
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints, error, interfaces, protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from catalyzer.http.progress import ProgressRegistry
from catalyzer.ops import trace
from catalyzer.ops.introspection import registry as introspection
from catalyzer.ops.metrics import RequestMetrics, merge
from catalyzer.prefork import control
from catalyzer.prefork.reloader import FileWatcher
from catalyzer.process import signals
from catalyzer.process.children import ChildProcess, exit_at_interpreter_exit, spawn_child
from catalyzer.process.children import kill as _kill
from catalyzer.process.children import set_title as _set_title
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.process.supervision import READY, STARTING, Halt, Kill, Log, Spawn, Supervisor
from catalyzer.process.supervision import WorkerRecord as Record
from catalyzer.server import twistedprivate
from catalyzer.settings import Config

__all__ = ["MasterService"]

log = Logger(namespace="catalyzer.prefork.master")
worker_log = Logger(namespace="catalyzer.prefork.worker")

_TICK = 0.2
_KILL_AFTER_DUMP = 0.5
_BOOT_OUTPUT_LINES = 200


class _NoAccept(protocol.Factory):
    """The master's ports never accept: workers do."""

    noisy = False

    def buildProtocol(self, addr: object) -> None:
        return None


class _Listener:
    """One ``--listen`` endpoint as the workers see it.

    A TCP endpoint (tcp, tcp6, ssl) gets one ``SO_REUSEPORT`` socket per worker slot: the kernel
    spreads new connections evenly over them, where with one shared socket the worker that
    wakes first takes most of a burst. The master holds the sockets, so a worker's replacement
    (crash, recycling, reload) adopts the same socket and serves what queued meanwhile. Other
    endpoints (unix, systemd) are one socket shared by every worker.
    """

    def __init__(self, description: str, family: str, address: Any) -> None:
        self.description = description
        self.family = family
        self.address = address
        self.shared: Any = None  # the Twisted port of a shared socket
        self.slots: dict[int, socket.socket] = {}
        self._bind: tuple[int, tuple[Any, ...], int] | None = None

    @classmethod
    def reuseport(cls, description: str, endpoint: Any, slots: int) -> _Listener:
        bind = twistedprivate.tcp_bind(endpoint)
        v6 = isinstance(endpoint, endpoints.TCP6ServerEndpoint) or ":" in bind.interface
        family = socket.AF_INET6 if v6 else socket.AF_INET
        host = bind.interface or ("::" if v6 else "")
        first = _reuseport_socket(family, (host, bind.port), bind.backlog)
        bound = first.getsockname()
        address = (IPv6Address if v6 else IPv4Address)("TCP", bound[0], bound[1])
        listener = cls(description, "INET6" if v6 else "INET", address)
        listener._bind = (family, bound, bind.backlog)
        listener.slots[0] = first
        for slot in range(1, slots):
            listener.slots[slot] = listener._new_socket()
        return listener

    def _new_socket(self) -> socket.socket:
        assert self._bind is not None
        family, address, backlog = self._bind
        return _reuseport_socket(family, address, backlog)

    def fd_for(self, slot: int) -> int:
        if self.shared is not None:
            fd: int = self.shared.fileno()
            return fd
        sock = self.slots.get(slot)
        if sock is None:
            try:
                sock = self.slots[slot] = self._new_socket()
            except OSError as e:  # e.g. a privileged port after dropping privileges
                log.warn(
                    "{d}: no socket of its own for worker {slot} ({e}): sharing slot 0's",
                    d=self.description,
                    slot=slot,
                    e=e,
                )
                sock = self.slots[min(self.slots)]
        return sock.fileno()

    def release(self, slot: int) -> None:
        """The slot is gone (scaled down): connections the kernel queued there are refused."""
        sock = self.slots.pop(slot, None) if slot != 0 else None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self.shared is not None:
            self.shared.stopListening()
        for sock in self.slots.values():
            sock.close()
        self.slots = {}


def _reuseport_socket(family: int, address: tuple[Any, ...], backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class WorkerProcess(ChildProcess):
    """The master's view of one worker process: its output and its end."""

    def __init__(self, master: MasterService, record: Record, scoreboard: Scoreboard) -> None:
        super().__init__(worker_log, self._label)
        self.master = master
        self.record = record
        self.scoreboard = scoreboard
        self.control: amp.AMP | None = None
        self.boot_output: deque[str] = deque(maxlen=_BOOT_OUTPUT_LINES)
        self.hung_since: float | None = None

    def _label(self) -> str:
        return f"worker {self.record.slot} pid {self.record.pid}"

    def line_received(self, text: str) -> None:
        if self.record.state == STARTING:
            # Held back until the worker is ready: a boot failure is reported once, by the
            # master, instead of once per failing worker.
            self.boot_output.append(text)
            return
        self.log_line(text)

    def flush_boot_output(self) -> None:
        while self.boot_output:
            self.log_line(self.boot_output.popleft())

    def ended(self, status: int | None, signum: int | None) -> None:
        self.scoreboard.close()
        self.master.worker_exited(self, status, signum)


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
    def retire(self, reason: str) -> dict[str, Any]:
        self.master.retire(self.process, reason)
        return {}


class MasterService(Service):
    def __init__(
        self,
        config: Config,
        endpoints: Sequence[tuple[str, interfaces.IStreamServerEndpoint]],
        reactor: Any,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.reactor = reactor
        self.supervisor = Supervisor(config.procs, die_timeout=config.die_timeout)
        self.listeners: list[_Listener] = []
        self.processes: dict[int, WorkerProcess] = {}  # record id -> process
        self.halted: int | None = None
        # Counters of workers that have exited, so that the totals never go down.
        self._retired_metrics = RequestMetrics().snapshot()
        self._ticker: LoopingCall | None = None
        self.watcher: FileWatcher | None = None
        self._reload_pending = False
        self.progress = ProgressRegistry(config.progress_ttl, config.progress_entries)
        self._upload_owner: dict[str, int] = {}  # upload id -> record id of the receiving worker
        self._devnull = os.open(os.devnull, os.O_RDWR)

    # -- start

    def privilegedStartService(self) -> None:
        from catalyzer.server.service import ListenError

        for description, endpoint in self.endpoints:
            try:
                listener = self._listen(description, endpoint)
            except (OSError, error.CannotListenError) as e:
                err = getattr(e, "socketError", None) or e
                for other in self.listeners:
                    other.close()
                raise ListenError(f"catalyzer: cannot listen on {description}: {err}") from None
            self.listeners.append(listener)
            log.info(
                "listening on {description} ({address})",
                description=description,
                address=listener.address,
            )
        Service.privilegedStartService(self)

    def _listen(self, description: str, endpoint: Any) -> _Listener:
        if type(endpoint) in _TCP_ENDPOINTS:
            return _Listener.reuseport(description, endpoint, self.config.procs)
        result: list[Any] = []
        endpoint.listen(_NoAccept()).addBoth(result.append)
        port = result[0] if result else None
        if not interfaces.IListeningPort.providedBy(port):
            if isinstance(port, Failure):
                port.raiseException()
            raise OSError("did not bind at once")
        port.stopReading()  # type: ignore[attr-defined]  # the master never accepts
        listener = _Listener(description, _family(port), port.getHost())
        listener.shared = port
        return listener

    def startService(self) -> None:
        Service.startService(self)
        _set_title(f"catalyzer master [{self.config.app}]")
        self.reactor.callWhenRunning(
            signals.install,
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
        log.info("master pid {pid}: starting {n} workers", pid=os.getpid(), n=self.config.procs)
        if self.config.reload:
            self.watcher = FileWatcher(self.reactor, self._files_changed)
            self.watcher.watch_patterns(self.config.watch)
            self.watcher.start()
        self._run(self.supervisor.start(self._now()))
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(_TICK, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self.watcher is not None:
            self.watcher.stop()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        # The reactor is stopping for a reason other than our own orderly exit: leave no orphans.
        for process in list(self.processes.values()):
            if process.record.pid is not None:
                _kill(process.record.pid, signal.SIGKILL)

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

    def retire(self, process: WorkerProcess, reason: str) -> None:
        if process.record.pid is not None:
            self._run(self.supervisor.retire(process.record.pid, reason, self._now()))

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
        for record in self.supervisor.live():
            stats = record.stats
            process = self.processes.get(record.id)
            in_app = ""
            if process is not None:
                entered, what = process.scoreboard.read()
                if entered:
                    in_app = f", in app for {now - entered:.1f}s on {what}"
            lines.append(
                f"  worker {record.slot} pid {record.pid} gen {record.generation} "
                f"{record.state} up {now - record.spawned_at:.0f}s, "
                f"{stats.get('requests', 0)} requests, {stats.get('connections', 0)} connections, "
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
        live: list[dict[str, Any]] = []
        for record in self.supervisor.live():
            stats = record.stats
            if isinstance(stats.get("metrics"), dict):
                live.append(stats["metrics"])  # type: ignore[arg-type]
            workers.append(
                {
                    "slot": record.slot,
                    "pid": record.pid,
                    "generation": record.generation,
                    "state": record.state,
                    "uptime": round(now - record.spawned_at, 3),
                    **{k: v for k, v in stats.items() if k != "metrics"},
                }
            )
        return {
            "pid": os.getpid(),
            "generation": self.supervisor.generation,
            "workers": workers,
            "restarts": dict(self.supervisor.restarts),
            "requests": _total(workers, "requests"),
            "connections": _total(workers, "connections"),
            "in_flight": _total(workers, "in_flight"),
            "metrics": merge([self._retired_metrics, *live]),
            "progress_entries": len(self.progress.entries),
        }

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
            process.flush_boot_output()
            self._run(commands)
            self._after_reload()

    def worker_exited(self, process: WorkerProcess, status: int | None, signum: int | None) -> None:
        self.processes.pop(process.record.id, None)
        orphans = [u for u, owner in self._upload_owner.items() if owner == process.record.id]
        if orphans:
            # The worker receiving these uploads is gone: they will never finish.
            now = self._now()
            for upload_id in orphans:
                del self._upload_owner[upload_id]
                self.progress.failed(upload_id, None, now)
        last = process.record.stats.get("metrics")
        if isinstance(last, dict):
            self._retired_metrics = merge([self._retired_metrics, last])
        pid = process.record.pid
        if trace.ENABLED:
            trace.emit("exit", worker=process.record.slot, child=pid, status=status, signal=signum)
        if pid is None:
            return
        output = "\n".join(process.boot_output)
        self._run(self.supervisor.exited(pid, status, signum, self._now(), output))
        self._after_reload()
        slot = process.record.slot
        if slot >= self.supervisor.procs and not any(
            w.slot == slot for w in self.supervisor.workers.values()
        ):
            for listener in self.listeners:
                listener.release(slot)

    # -- carrying out decisions

    def _run(self, commands: Sequence[object]) -> None:
        for command in commands:
            if isinstance(command, Spawn):
                self._spawn(command.worker)
            elif isinstance(command, Kill):
                _kill(command.pid, command.signum)
            elif isinstance(command, Log):
                getattr(log, command.level)("{text}", text=command.text)
            elif isinstance(command, Halt):
                self._halt(command.status, command.reason)

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
        env = dict(os.environ)
        env[control.ENV_KEY] = control.worker_environment(
            self.config, record.slot, record.generation, listeners, control_fd, scoreboard_fd
        )
        process = WorkerProcess(self, record, scoreboard)
        try:
            pid = spawn_child(
                self.reactor,
                process,
                [sys.executable, "-m", "catalyzer.prefork.worker"],
                env=env,
                child_fds=child_fds,
                control_fd=control_fd,
                control=lambda: self._control_for(process),
                path=os.getcwd(),
            )
        except OSError as e:
            scoreboard.close()
            self._run(self.supervisor.spawn_failed(record, f"{sys.executable}: {e}", self._now()))
            return
        self.supervisor.spawned(record, pid)
        if trace.ENABLED:
            trace.emit("spawn", worker=record.slot, generation=record.generation, child=pid)
        self.processes[record.id] = process

    def _control_for(self, process: WorkerProcess) -> MasterControl:
        process.control = MasterControl(self, process)
        return process.control

    def _tick(self) -> None:
        now = self._now()
        self._run(self.supervisor.tick(now))
        timeout = self.config.timeout
        if not timeout or self.supervisor.stopping:
            return
        for process in list(self.processes.values()):
            record = process.record
            if record.state != READY or record.pid is None or process.hung_since is not None:
                continue
            entered, what = process.scoreboard.read()
            if entered and now - entered > timeout:
                process.hung_since = now
                log.error(
                    "worker {slot} (pid {pid}) has spent {elapsed:.1f}s in the app on {what} "
                    "(timeout {timeout:g}s): its stack follows; killing it",
                    slot=record.slot,
                    pid=record.pid,
                    elapsed=now - entered,
                    what=what,
                    timeout=timeout,
                )
                _kill(record.pid, signal.SIGUSR2)  # faulthandler in the worker dumps its stack
                self.reactor.callLater(
                    _KILL_AFTER_DUMP,
                    lambda pid=record.pid: self._run(self.supervisor.hung(pid, self._now())),
                )

    def _halt(self, status: int, reason: str) -> None:
        if self.halted is not None:
            return
        self.halted = status
        if status:
            log.error("exiting with status {status}: {reason}", status=status, reason=reason)
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"catalyzer: {reason}\n")
                stream.flush()
            exit_at_interpreter_exit(status)
        else:
            log.info("{reason}: exiting", reason=reason)
        for process in list(self.processes.values()):
            if process.record.pid is not None:
                _kill(process.record.pid, signal.SIGKILL)
        if self.reactor.running:
            self.reactor.stop()
        else:  # halted while twistd is still starting services
            self.reactor.callWhenRunning(self.reactor.stop)

    def _now(self) -> float:
        now: float = self.reactor.seconds()
        return now


_TCP_ENDPOINTS = (
    endpoints.TCP4ServerEndpoint,
    endpoints.TCP6ServerEndpoint,
    endpoints.SSL4ServerEndpoint,
)


def _total(workers: list[dict[str, Any]], key: str) -> int:
    return sum(w[key] for w in workers if isinstance(w.get(key), int))


def _family(port: Any) -> str:
    host = port.getHost()
    if isinstance(host, IPv6Address):
        return "INET6"
    if isinstance(host, IPv4Address):
        return "INET"
    if isinstance(host, UNIXAddress):
        return "UNIX"
    raise ValueError(f"cannot pass a {type(host).__name__} listener to workers")
