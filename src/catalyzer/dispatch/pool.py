"""A preforking task dispatcher for Twisted programs.

:class:`PreforkDispatcher` is an ``IService`` that keeps a pool of child processes and a FIFO
queue of tasks. :meth:`~PreforkDispatcher.dispatch` names a function (by import path, by a name
in ``methods``, or by a name searched for in the ``classes`` modules) and its arguments, and
returns a Deferred that fires with a :class:`~catalyzer.dispatch.tasks.TaskResult`: the value, or an error
value (never an errback), and the seconds it took.

Children are fresh interpreters (``python -m catalyzer.dispatch.child``, started by
:func:`catalyzer.process.children.spawn_child` as the prefork master starts its workers); one child runs
one task at a time. Arguments and results are pickled (protocol 5) and travel over AMP in pieces
of 60,000 bytes. The decisions (which child to start, when to replace one, back-off after crashes,
the stop deadline) are :class:`catalyzer.process.supervision.Supervisor`'s, as for the prefork master.

See ``docs/dispatch.md`` for the whole story: failure behaviour, hooks, trust, the network face.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure

from catalyzer.dispatch import settings as S
from catalyzer.dispatch import tasks, wire
from catalyzer.dispatch.tasks import (
    SerializationError,
    TaskError,
    TaskFailed,
    TaskResult,
)
from catalyzer.ops import introspection
from catalyzer.process.children import SupervisedChild, spawn_child
from catalyzer.process.executor import Executor
from catalyzer.process.reactors import ProcessReactor
from catalyzer.process.supervision import (
    READY,
    STARTING,
    STOPPING,
    Command,
    Supervisor,
    WorkerRecord,
)

__all__ = [
    "PreforkDispatcher",
    "SerializationError",
    "TaskError",
    "TaskFailed",
    "TaskRequest",
    "TaskResult",
    "describe_all",
    "running",
]

log = Logger(namespace="catalyzer.dispatch")

_CONTROL_FD = 3
_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
# verbose needed for a level to be reported (warnings and errors always are).
_VERBOSITY = {"debug": 2, "info": 1, "warn": 0, "error": 0}

# Every dispatcher between startService and the end of stopService is in the process's
# introspection registry, for catalyzer's state dump (SIGUSR1) and manhole.
_KIND = "dispatchers"


def running() -> list[PreforkDispatcher]:
    """The dispatchers started in this process and not yet stopped."""
    return [d for d in introspection.registry.running(_KIND) if isinstance(d, PreforkDispatcher)]


def describe_all() -> str:
    """:meth:`PreforkDispatcher.describe` of every running dispatcher ("" if there is none)."""
    return "\n".join(d.describe() for d in running())


# -- the control channel (catalyzer.dispatch.child speaks it without Twisted)


class Ready(amp.Command):
    """Child -> dispatcher: ``fork_init`` has run; tasks welcome."""

    arguments = [(b"pid", amp.Integer())]
    response = []
    requiresAnswer = False


class Chunk(amp.Command):
    """Dispatcher -> child: the next piece of the next task's pickled arguments."""

    arguments = [(b"data", amp.String())]
    response = []
    requiresAnswer = False


class Run(amp.Command):
    """Dispatcher -> child: run ``target`` with the arguments (the pieces sent so far and
    ``data``). The answer is the pickled value (``ok``) or a JSON error; a result larger than one
    AMP value comes first as ``ResultChunk`` boxes."""

    arguments = [(b"target", amp.Unicode()), (b"data", amp.String())]
    response = [(b"ok", amp.Boolean()), (b"data", amp.String())]


class ResultChunk(amp.Command):
    """Child -> dispatcher: the next piece of the current task's result."""

    arguments = [(b"data", amp.String())]
    response = []
    requiresAnswer = False


class Stop(amp.Command):
    """Dispatcher -> child: exit once this is read (after the task in hand)."""

    arguments = []
    response = []
    requiresAnswer = False


@dataclass(frozen=True)
class TaskRequest:
    """What was asked for, as handed to an ``upon_result`` callback with the result."""

    name: str
    args: tuple[Any, ...]


UponResult = Callable[[TaskRequest, TaskResult], object]
_Hook = Callable[[str, tuple[Any, ...]], object]


class _Task:
    __slots__ = (
        "args",
        "deferred",
        "name",
        "payload",
        "queued_at",
        "started_at",
        "target",
        "timeout",
        "timer",
        "upon_result",
    )

    def __init__(
        self,
        name: str,
        args: tuple[Any, ...],
        target: str,
        payload: bytes,
        upon_result: UponResult | None,
        timeout: float | None,
        queued_at: float,
    ) -> None:
        self.name = name
        self.args = args
        self.target = target
        self.payload = payload
        self.upon_result = upon_result
        self.timeout = timeout
        self.queued_at = queued_at
        self.started_at: float | None = None
        self.timer: IDelayedCall | None = None
        self.deferred: defer.Deferred[TaskResult] = defer.Deferred()


class _Child(SupervisedChild):
    """The dispatcher's view of one child process."""

    def __init__(self, dispatcher: PreforkDispatcher, record: WorkerRecord) -> None:
        super().__init__(log, self._label, record)
        self.dispatcher = dispatcher
        self.control: _ControlProtocol | None = None
        self.task: _Task | None = None
        self.tasks_done = 0
        # False once the child may take no more tasks: retiring, told to stop, timed out.
        self.usable = True
        self.result_chunks: list[bytes] = []

    def _label(self) -> str:
        return f"dispatch child {self.record.slot} pid {self.record.pid}"

    def log_line(self, text: str) -> None:
        self.dispatcher._output(f"[{self._label()}] {text}")

    def ended(self, status: int | None, signum: int | None) -> None:
        self.dispatcher._child_exited(self, status, signum)


class _ControlProtocol(protocol.Protocol):
    """The dispatcher's end of a child's control channel.

    The boxes are those of the AMP commands above, but written and parsed with the small codec
    the child uses (:mod:`catalyzer.dispatch.tasks`): Twisted's general AMP machinery costs more per box
    than a no-op task does in all, and one box each way is the whole cost of a task."""

    def __init__(self, child: _Child) -> None:
        self.child = child
        self.parser = wire.BoxParser()
        self.asked = 0

    def dataReceived(self, data: bytes) -> None:
        dispatcher = self.child.dispatcher
        for box in self.parser.feed(data):
            dispatcher._box(self.child, box)

    def run(self, target: bytes, pieces: list[bytes]) -> None:
        self.asked += 1
        out = [wire.encode_box(((b"_command", b"Chunk"), (b"data", p))) for p in pieces[:-1]]
        out.append(
            wire.encode_box(
                (
                    (b"_command", b"Run"),
                    (b"_ask", b"%d" % self.asked),
                    (b"target", target),
                    (b"data", pieces[-1]),
                )
            )
        )
        self.send(b"".join(out))

    def stop(self) -> None:
        self.send(wire.encode_box(((b"_command", b"Stop"),)))

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)
            # Send now rather than on the reactor's next turn, when the socket is reported
            # writable: one task is one box each way, and the extra turn would cost more than
            # the box. (Whatever does not fit waits for that turn, as usual; an error shows up
            # there too.)
            flush = getattr(transport, "doWrite", None)
            if flush is not None and not getattr(transport, "disconnecting", True):
                flush()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.transport = None
        self.child.dispatcher._control_lost(self.child)


class PreforkDispatcher(Service):
    """A pool of ``max_forks`` child processes running tasks from a FIFO queue.

    ``pre_fork`` children start with the service; more are started while tasks wait and every
    child is busy, at most one per ``spawn_delay`` seconds. After ``max_requests`` tasks (0: no
    limit) a child is replaced, the replacement first. ``max_forks=0`` runs every task at once,
    in this process, blocking the reactor while it runs.

    Tasks are found by ``methods`` (name -> ``"module:function"`` or a module-level function) and
    ``classes`` (module paths searched in order for a public function of that name).
    ``upon_result(request, result)`` is called for every result of a task that has no callback of
    its own. ``timeout`` is the default limit, in seconds, for a task in a child (None: none);
    ``stop_timeout`` bounds how long :meth:`stopService` waits for the tasks in hand.

    Hooks: ``fork_preinit(slot)`` and ``fork_postinit(slot, pid)`` run here around each spawn
    (``pid`` is None if the spawn failed); ``fork_init()`` runs in each child once it starts,
    ``precall(target, args)`` and ``postcall(target, args)`` in the child around each task. The
    child-side hooks are module-level functions or ``"module:function"`` paths.

    Log lines go to ``talkback(line)`` if given, else to ``twisted.logger`` (namespace
    ``catalyzer.dispatch``); ``verbose`` 1 adds children starting and stopping, 2 every task.
    ``on_halt(reason)`` is called if children cannot be started at all (a failing ``fork_init``
    or import): the dispatcher then fails every task with ``DispatcherHalted``.
    """

    def __init__(
        self,
        *,
        reactor: ProcessReactor,
        max_forks: int = S.MAX_FORKS.default,
        pre_fork: int = S.PRE_FORK.default,
        max_requests: int = S.MAX_REQUESTS.default,
        methods: Mapping[str, str | Callable[..., Any]] | None = S.METHODS.default,
        classes: Sequence[str] = S.CLASSES.default,
        upon_result: UponResult | None = S.UPON_RESULT.default,
        fork_name: str = S.FORK_NAME.default,
        verbose: int = S.VERBOSE.default,
        talkback: Callable[[str], object] | None = S.TALKBACK.default,
        fork_preinit: Callable[[int], object] | None = S.FORK_PREINIT.default,
        fork_postinit: Callable[[int, int | None], object] | None = S.FORK_POSTINIT.default,
        fork_init: str | Callable[[], object] | None = S.FORK_INIT.default,
        precall: str | Callable[[str, tuple[Any, ...]], object] | None = S.PRECALL.default,
        postcall: str | Callable[[str, tuple[Any, ...]], object] | None = S.POSTCALL.default,
        spawn_delay: float = S.SPAWN_DELAY.default,
        timeout: float | None = S.TIMEOUT.default,
        stop_timeout: float = S.STOP_TIMEOUT.default,
        on_halt: Callable[[str], object] | None = S.ON_HALT.default,
        python: str = S.PYTHON.default,
    ) -> None:
        # Every keyword is checked against its rule in the one table (dispatch/settings.py),
        # which the command line and the docs share.
        S.validate(locals())
        self.reactor = reactor
        self.max_forks = max_forks
        self.pre_fork = min(pre_fork, max_forks)
        self.max_requests = max_requests
        self.methods = {name: tasks.as_path(f) for name, f in (methods or {}).items()}
        self.classes = list(classes)
        self.upon_result = upon_result
        self.fork_name = fork_name
        self.verbose = verbose
        self.talkback = talkback
        self.fork_preinit = fork_preinit
        self.fork_postinit = fork_postinit
        self.fork_init = tasks.as_path(fork_init) if fork_init is not None else None
        self.precall = tasks.as_path(precall) if precall is not None else None
        self.postcall = tasks.as_path(postcall) if postcall is not None else None
        self.spawn_delay = spawn_delay
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.on_halt = on_halt
        self.python = python
        self.supervisor = Supervisor(
            max(1, max_forks),
            die_timeout=stop_timeout,
            initial=self.pre_fork,
            spawn_delay=spawn_delay,
            noun="child",
            kill_grace=0.0,  # a child does not enforce stop_timeout itself: we do, on time
        )
        self.children: dict[int, _Child] = {}  # record id -> child
        self.queue: deque[_Task] = deque()
        self.done = 0
        self.failed = 0
        self.halted: str | None = None
        self.stopping = False
        self._stopped: list[defer.Deferred[None]] = []
        self.executor = Executor(
            self.supervisor,
            reactor,
            spawn=self._spawn,
            kill=self._kill,
            log=self._say,
            halt=lambda status, reason: self._halt(reason),
            after_tick=self._pump,
        )
        self._paths: dict[Any, str] = {}  # callable -> its import path
        self._inline: dict[str, Callable[..., Any]] = {}  # target -> callable (max_forks=0)
        self._inline_hooks: tuple[_Hook | None, _Hook | None] | None = None

    # -- the API

    def dispatch(
        self,
        method: str | Callable[..., Any],
        *params: Any,
        upon_result: UponResult | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[TaskResult]:
        """Queue ``method(*params)``; the Deferred fires with its :class:`TaskResult`.

        ``method`` is a module-level function, a ``"module:function"`` path, or a name looked up
        in ``methods`` and then in the ``classes`` modules (an unknown name is an error result).
        ``upon_result`` replaces the dispatcher's callback for this task; ``timeout`` its default
        time limit. Raises :class:`SerializationError` at once if ``params`` cannot be pickled,
        and ``ValueError`` for a function a child could not import.
        """
        name, target = self._target(method)
        now = self._now()
        request_timeout = self.timeout if timeout is None else timeout
        if target is None or self.halted is not None or self.stopping:
            task = _Task(name, params, "", b"", upon_result, request_timeout, now)
            if target is None:
                where = "methods" + "".join(f", {module}" for module in self.classes)
                error = TaskError(tasks.UNKNOWN_METHOD, f"no method {name!r} (searched {where})")
            elif self.halted is not None:
                error = TaskError(tasks.HALTED, f"the dispatcher has halted: {self.halted}")
            else:
                error = TaskError(tasks.STOPPED, "the dispatcher is stopping")
            self._finish(task, TaskResult(error=error))
            return task.deferred
        if self.max_forks == 0:
            return self._run_inline(name, params, target, upon_result)
        payload = tasks.dumps(params)  # SerializationError: the caller's to handle
        task = _Task(name, params, target, payload, upon_result, request_timeout, now)
        self.queue.append(task)
        if self.verbose >= 2:
            self._say("debug", f"queued {name} ({len(self.queue)} waiting)")
        self._pump()
        return task.deferred

    def state(self) -> dict[str, Any]:
        """The pool as data: children (slot, pid, state, age, tasks done, the task in hand and
        for how long), queue length, totals."""
        now = self._now()
        children = []
        for record in self.supervisor.live():
            child = self.children.get(record.id)
            if child is None:
                continue
            task = child.task
            if record.state == STARTING:
                state = "starting"
            elif record.state != READY:
                state = "stopping"
            elif task is not None:
                state = "busy"
            else:
                state = "idle" if child.usable else "retiring"
            children.append(
                {
                    "slot": record.slot,
                    "pid": record.pid,
                    "state": state,
                    "age": round(now - record.spawned_at, 3),
                    "tasks": child.tasks_done,
                    "task": task.name if task is not None else None,
                    "task_elapsed": (
                        round(now - task.started_at, 3)
                        if task is not None and task.started_at is not None
                        else None
                    ),
                }
            )
        return {
            "name": self.fork_name,
            "pid": os.getpid(),
            "max_forks": self.max_forks,
            "pre_fork": self.pre_fork,
            "queued": len(self.queue),
            "done": self.done,
            "failed": self.failed,
            "restarts": dict(self.supervisor.restarts),
            "stopping": self.stopping,
            "halted": self.halted,
            "children": children,
        }

    def describe(self) -> str:
        """:meth:`state` as text, one line per child (for logs, SIGUSR1 and the manhole)."""
        s = self.state()
        mode = f"{len(s['children'])}/{s['max_forks']} children" if s["max_forks"] else "in-process"
        head = (
            f"dispatcher {s['name']!r} in pid {s['pid']}: {mode}, {s['queued']} queued, "
            f"{s['done']} done ({s['failed']} failed), restarts {s['restarts']}"
        )
        if s["halted"]:
            head += f", HALTED: {s['halted']}"
        elif s["stopping"]:
            head += ", stopping"
        lines = [head]
        for c in s["children"]:
            line = (
                f"  child {c['slot']} pid {c['pid']} {c['state']} up {c['age']:.0f}s, "
                f"{c['tasks']} tasks"
            )
            if c["task"] is not None:
                line += f", running {c['task']} for {c['task_elapsed']:.1f}s"
            lines.append(line)
        return "\n".join(lines)

    # -- service

    def startService(self) -> None:
        Service.startService(self)
        introspection.registry.add(_KIND, self)
        if self.max_forks:
            self._say("info", f"starting {self.pre_fork} of up to {self.max_forks} children")
            self._run(self.supervisor.start(self._now()))
        self._pump()

    def stopService(self) -> defer.Deferred[None]:
        """Fail the queued tasks, let the tasks in hand finish (killing the children still busy
        after ``stop_timeout``), and fire once no child is left."""
        Service.stopService(self)
        done: defer.Deferred[None] = defer.Deferred()
        done.addBoth(self._unregister)
        if self.stopping and not self._stopped:
            done.callback(None)
            return done
        self._stopped.append(done)
        if self.stopping:
            return done
        self.stopping = True
        while self.queue:
            task = self.queue.popleft()
            self._finish(
                task,
                TaskResult(
                    error=TaskError(
                        tasks.STOPPED, "the dispatcher stopped before this task started"
                    )
                ),
            )
        if self.max_forks == 0:
            self._stop_done()
            return done
        busy = sum(1 for c in self.children.values() if c.task is not None)
        self._say("info", f"stopping: {len(self.children)} children, {busy} with a task in hand")
        self._run(self.supervisor.stop(self._now(), graceful=True))
        return done

    def _unregister(self, result: object) -> object:
        introspection.registry.remove(_KIND, self)
        return result

    # -- scheduling

    def _target(self, method: str | Callable[..., Any]) -> tuple[str, str | None]:
        """``(name to report, what a child runs)``; the latter None for an unknown name."""
        if isinstance(method, str):
            if ":" in method:
                return method, method
            return method, tasks.method_target(method, self.methods, self.classes)
        if not callable(method):
            raise TypeError(f"expected a function or a method name, not {method!r}")
        path = self._paths.get(method)
        if path is None:
            path = self._paths[method] = tasks.callable_path(method)
        return path, path

    def _pump(self) -> None:
        """Hand queued tasks to idle children; start one more child if tasks still wait."""
        if not self.running or self.stopping or self.halted is not None:
            return
        if self.queue:
            idle = [
                c
                for c in self.children.values()
                if c.task is None and c.usable and c.record.state == READY and c.control is not None
            ]
            for child in idle:
                if not self.queue:
                    break
                self._assign(child, self.queue.popleft())
        if self.queue:
            starting = sum(1 for c in self.children.values() if c.record.state == STARTING)
            if len(self.queue) > starting and len(self.children) < self.max_forks:
                self._run(self.supervisor.grow(self._now()))

    def _assign(self, child: _Child, task: _Task) -> None:
        control = child.control
        assert control is not None
        child.task = task
        task.started_at = self._now()
        control.run(task.target.encode("utf-8"), tasks.split(task.payload))
        task.payload = b""
        if task.timeout:
            task.timer = self.reactor.callLater(task.timeout, self._timed_out, child, task)

    def _box(self, child: _Child, box: dict[bytes, bytes]) -> None:
        """One box from a child."""
        if b"_answer" in box:
            self._answered(box.get(b"ok") == b"True", box.get(b"data", b""), child)
            return
        command = box.get(b"_command")
        if command == b"ResultChunk":
            child.result_chunks.append(box.get(b"data", b""))
        elif command == b"Ready":
            self._child_ready(child)
        else:  # an _error box, or nonsense: this child cannot be trusted with more work
            self._say("error", f"child {child.record.slot} (pid {child.record.pid}) sent {box!r}")
            self._control_lost(child)

    def _answered(self, ok: bool, data: bytes, child: _Child) -> None:
        task = child.task
        if task is None:
            return  # timed out meanwhile: already answered
        child.task = None
        if child.result_chunks:
            data = b"".join([*child.result_chunks, data])
            child.result_chunks = []
        now = self._now()
        elapsed = now - (task.started_at if task.started_at is not None else now)
        pid = child.record.pid
        child.tasks_done += 1
        if self.max_requests and child.tasks_done >= self.max_requests and child.usable:
            child.usable = False
            if pid is not None:
                self._run(self.supervisor.retire(pid, "max-requests", now))
        # The child's next task goes out before anything else is done here (this result's
        # callbacks included): it works while we do.
        if (
            self.queue
            and child.usable
            and self.running
            and not self.stopping
            and self.halted is None
        ):
            self._assign(child, self.queue.popleft())
        if ok:
            try:
                result = TaskResult(tasks.loads(data), None, elapsed, pid)
            except SerializationError as e:
                result = TaskResult(None, TaskError(tasks.SERIALIZATION, str(e)), elapsed, pid)
        else:
            result = TaskResult(None, TaskError.from_json(data), elapsed, pid)
        self._finish(task, result)
        if self.queue:
            self._pump()

    def _control_lost(self, child: _Child) -> None:
        """The control channel closed or went mad: the child is dying, or must. Its exit
        answers the task in hand."""
        child.usable = False
        if child.record.state == STOPPING and child.task is None:
            return  # exiting as it was told to
        child.signal(signal.SIGKILL)

    def _timed_out(self, child: _Child, task: _Task) -> None:
        task.timer = None
        if child.task is not task:
            return
        child.task = None
        child.usable = False
        elapsed = self._elapsed(task)
        pid = child.record.pid
        self._say(
            "warn",
            f"child {child.record.slot} (pid {pid}) spent more than {task.timeout:g}s on "
            f"{task.name}: killing it",
        )
        if pid is not None:
            self._run(self.supervisor.hung(pid, self._now()))
        error = TaskError(
            tasks.TIMEOUT,
            f"{task.name} did not finish within {task.timeout:g}s; its child (pid {pid}) was "
            "killed",
        )
        self._finish(task, TaskResult(None, error, elapsed, pid))
        self._pump()

    def _finish(self, task: _Task, result: TaskResult) -> None:
        if task.timer is not None:
            if task.timer.active():
                task.timer.cancel()
            task.timer = None
        self.done += 1
        if not result.ok:
            self.failed += 1
        if self.verbose >= 2:
            outcome = "ok" if result.ok else str(result.error)
            self._say("debug", f"{task.name}: {outcome} in {result.elapsed:.3f}s")
        callback = task.upon_result or self.upon_result
        if callback is not None:
            try:
                callback(TaskRequest(task.name, task.args), result)
            except Exception:
                log.failure("upon_result for {name} failed", name=task.name)
        task.deferred.callback(result)

    def _elapsed(self, task: _Task) -> float:
        return self._now() - (task.started_at if task.started_at is not None else task.queued_at)

    # -- in-process (max_forks=0)

    def _run_inline(
        self,
        name: str,
        params: tuple[Any, ...],
        target: str,
        upon_result: UponResult | None,
    ) -> defer.Deferred[TaskResult]:
        task = _Task(name, params, target, b"", upon_result, None, self._now())
        task.started_at = task.queued_at
        value: Any = None
        error: TaskError | None
        try:
            if self._inline_hooks is None:
                self._inline_hooks = (
                    tasks.load_path(self.precall) if self.precall else None,
                    tasks.load_path(self.postcall) if self.postcall else None,
                )
        except Exception as e:  # no child to fail to boot here: the hook's error is the task's
            error = tasks.error_from_exception(e)
        else:
            precall, postcall = self._inline_hooks
            value, error = tasks.call(
                target, params, self.classes, found=self._inline, precall=precall, postcall=postcall
            )
        result = TaskResult(value, error, self._elapsed(task), os.getpid())
        self._finish(task, result)
        return task.deferred

    # -- children

    def _spawn(self, record: WorkerRecord) -> None:
        child = _Child(self, record)
        self._hook(self.fork_preinit, record.slot)
        spec = {
            "control_fd": _CONTROL_FD,
            "parent": os.getpid(),
            "slot": record.slot,
            "name": self.fork_name,
            "fork_init": self.fork_init,
            "precall": self.precall,
            "postcall": self.postcall,
            "classes": self.classes,
            "path": sys.path,
        }
        env = dict(os.environ)
        env[wire.ENV_KEY] = json.dumps(spec)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            pid = spawn_child(
                self.reactor,
                child,
                [self.python, "-m", "catalyzer.dispatch.child"],
                env=env,
                # stdout is shared (a task's prints go straight out); stderr is tagged.
                child_fds={0: devnull, 1: 1, 2: "r"},
                control_fd=_CONTROL_FD,
                control=lambda: self._control_for(child),
                path=os.getcwd(),
            )
        except OSError as e:
            self._hook(self.fork_postinit, record.slot, None)
            self._run(self.supervisor.spawn_failed(record, f"{self.python}: {e}", self._now()))
            return
        finally:
            os.close(devnull)
        self.supervisor.spawned(record, pid)
        self.children[record.id] = child
        if self.verbose >= 1:
            self._say("info", f"child {record.slot} started (pid {pid})")
        self._hook(self.fork_postinit, record.slot, pid)

    def _control_for(self, child: _Child) -> _ControlProtocol:
        child.control = _ControlProtocol(child)
        return child.control

    def _child_ready(self, child: _Child) -> None:
        pid = child.record.pid
        if pid is None:
            return
        commands = self.supervisor.ready(pid, self._now())
        child.release()
        self._run(commands)
        self._pump()

    def _child_exited(self, child: _Child, status: int | None, signum: int | None) -> None:
        record = child.record
        self.children.pop(record.id, None)
        task = child.task
        if task is not None:
            child.task = None
            how = f"exit status {status}" if signum is None else f"signal {_signal_name(signum)}"
            why = (
                f"; it was still running when stop_timeout ({self.stop_timeout:g}s) ran out"
                if self.stopping and signum == signal.SIGKILL
                else ""
            )
            error = TaskError(
                tasks.CHILD_DIED,
                f"the child (pid {record.pid}) running {task.name} died ({how}){why}",
            )
            self._finish(task, TaskResult(None, error, self._elapsed(task), record.pid))
        if record.pid is None:
            return
        output = child.held_text()
        self._run(self.supervisor.exited(record.pid, status, signum, self._now(), output))
        self._pump()

    def _run(self, commands: Sequence[Command]) -> None:
        self.executor.run(commands)

    def _kill(self, pid: int, signum: int) -> None:
        child = next((c for c in self.children.values() if c.record.pid == pid), None)
        if child is not None and signum == signal.SIGTERM:
            child.usable = False
            control = child.control
            if control is not None and control.transport is not None:
                # In band, after whatever was already written to it: a task sent just before
                # is never lost to the race a signal would run.
                control.stop()
                return
        if child is not None:
            child.signal(signal.SIGKILL if signum == signal.SIGINT else signum)

    def _halt(self, reason: str) -> None:
        if self.supervisor.stopping:
            if not self.children:  # the supervisor's way of saying every child has exited
                self._stop_done()
            return
        # Children cannot boot at all: fail what waits, and stop trying (no restart loop).
        self.halted = reason
        self._say("error", f"halted: {reason}")
        while self.queue:
            task = self.queue.popleft()
            error = TaskError(tasks.HALTED, f"the dispatcher has halted: {reason}")
            self._finish(task, TaskResult(error=error))
        self._run(self.supervisor.stop(self._now(), graceful=False))
        if self.on_halt is not None:
            self._hook(self.on_halt, reason)

    def _stop_done(self) -> None:
        self.executor.cancel()
        waiters, self._stopped = self._stopped, []
        if self.stopping:
            self._say("info", "stopped: no child left")
        for d in waiters:
            d.callback(None)

    # -- time

    def _now(self) -> float:
        now: float = self.reactor.seconds()
        return now

    # -- output

    def _say(self, level: str, text: str) -> None:
        if self.verbose < _VERBOSITY.get(level, 1):
            return
        if self.talkback is not None:
            self._hook(self.talkback, text if level in ("debug", "info") else f"{level}: {text}")
        else:
            log.emit(_LEVELS.get(level, LogLevel.info), "{text}", text=text)

    def _output(self, line: str) -> None:
        """A line a child wrote to stderr: always reported."""
        if self.talkback is not None:
            self._hook(self.talkback, line)
        else:
            log.info("{line}", line=line)

    def _hook(self, hook: Callable[..., object] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.failure("dispatcher hook {hook!r} failed", hook=hook)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
