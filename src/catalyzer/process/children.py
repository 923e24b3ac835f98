"""Child processes with a control channel: the plumbing the prefork master
(:mod:`catalyzer.prefork.master`) and the task dispatcher (:mod:`catalyzer.dispatch`) share.

A child is a fresh interpreter started with ``reactor.spawnProcess`` (never ``fork``). Besides
its standard streams it inherits one end of a ``socketpair``, at a file descriptor number the
parent chooses, on which the two sides speak AMP; the parent adopts the other end with
``adoptStreamConnection``. What the child writes to stderr (and stdout, if it is piped) is split
into lines and handed to :meth:`ChildProcess.line_received`, where the default tags each line with
the child's label in the parent's log. The end of the process is reported once, with its exit
status or signal, to :meth:`ChildProcess.ended`.

:class:`SupervisedChild` adds what both the master and the dispatcher want of a child a
:class:`~catalyzer.process.supervision.Supervisor` tracks: its output is held back while it boots,
so that a boot failure is reported once, with the child's last words, instead of line by line for
every failing child.

What a child is for (an HTTP worker, a task runner), which descriptors it gets besides the
control channel, and what to do when it ends are the caller's business.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from twisted.internet import protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python.failure import Failure

from catalyzer.process.supervision import STARTING, WorkerRecord

__all__ = [
    "ChildProcess",
    "SupervisedChild",
    "exit_at_interpreter_exit",
    "exit_of",
    "halt",
    "kill",
    "set_title",
    "spawn_child",
]

# Lines of a booting child's output kept for its boot failure report (the end of a traceback).
HELD_LINES = 200


class ChildProcess(protocol.ProcessProtocol):
    """The parent's view of one child: its output as lines, and its end.

    ``label`` is called for each line logged (the child's pid is known only once it runs), and
    ``logger`` is where the tagged lines go, as ``[label] line``.
    """

    def __init__(self, logger: Logger, label: Callable[[], str]) -> None:
        self.logger = logger
        self.label = label
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self.line_received(line.decode("utf-8", "replace"))

    def line_received(self, text: str) -> None:
        """One line of the child's output; by default logged with the child's label."""
        self.log_line(text)

    def log_line(self, text: str) -> None:
        self.logger.info("[{label}] {line}", label=self.label(), line=text)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in list(self._partial.items()):
            if rest:
                self._partial[fd] = b""
                self.line_received(rest.decode("utf-8", "replace"))
        status, signum = exit_of(reason)
        self.ended(status, signum)

    def ended(self, status: int | None, signum: int | None) -> None:
        """The process is gone (exit ``status``, or killed by ``signum``). Override."""

    def signal(self, signum: int) -> None:
        """Signal the process through its transport (``spawnProcess``'s), which knows whether
        it has been reaped: a bare ``os.kill`` could hit a new process that reused the pid."""
        if self.transport is not None:
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess(signum)


class SupervisedChild(ChildProcess):
    """A child whose :class:`~catalyzer.process.supervision.WorkerRecord` says whether it has
    booted: while it is starting, its output is held (the last :data:`HELD_LINES` lines) instead
    of logged. Once the supervisor has it ready, :meth:`release` logs what was held; if it dies
    first, :meth:`held_text` is its output for the boot failure report."""

    def __init__(self, logger: Logger, label: Callable[[], str], record: WorkerRecord) -> None:
        super().__init__(logger, label)
        self.record = record
        self.held: deque[str] = deque(maxlen=HELD_LINES)

    def line_received(self, text: str) -> None:
        if self.record.state == STARTING:
            self.held.append(text)
            return
        self.log_line(text)

    def release(self) -> None:
        """Log the held lines, oldest first."""
        while self.held:
            self.log_line(self.held.popleft())

    def held_text(self) -> str:
        return "\n".join(self.held)


def exit_of(reason: Failure) -> tuple[int | None, int | None]:
    """``(exit status, signal)`` from ``processEnded``'s reason; one of them is None."""
    value = reason.value
    return getattr(value, "exitCode", None), getattr(value, "signal", None)


def spawn_child(
    reactor: Any,
    process: ChildProcess,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    child_fds: Mapping[int, Any],
    control_fd: int,
    control: Callable[[], protocol.Protocol],
    path: str | None = None,
) -> int:
    """Start ``argv`` with ``child_fds`` plus one end of a fresh socketpair at ``control_fd``;
    connect the other end to the protocol ``control()`` returns. Returns the child's pid.

    ``OSError`` from ``spawnProcess`` (no such executable, no permission) is raised after the
    socketpair is closed again.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = dict(child_fds)
    fds[control_fd] = theirs.fileno()
    try:
        transport = reactor.spawnProcess(
            process, argv[0], list(argv), env=dict(env), path=path, childFDs=fds
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: control()  # type: ignore[method-assign]
    try:
        reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)
    finally:
        ours.close()  # adoptStreamConnection made its own copy
    pid: int = transport.pid
    return pid


def kill(pid: int, signum: int) -> None:
    """``os.kill`` that ignores a process already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def exit_at_interpreter_exit(status: int) -> None:
    """End the process with ``status`` once twistd has finished, without waiting for threads
    that may still be stuck in application code (twistd itself would exit 0, or by signal)."""
    atexit.register(_exit_now, status)


def halt(
    reactor: Any,
    status: int,
    line: str,
    *,
    at_exit: Callable[[int], object] = exit_at_interpreter_exit,
    stream: TextIO | None = None,
) -> None:
    """Stop the reactor, and with a non-zero ``status`` exit with it and say why in one line.

    The line goes to the process's real standard error (``stream``, by default
    ``sys.__stderr__``): by now twistd has sent ``sys.stderr`` to its log, and whoever started
    the process should see the reason. Halting while twistd is still starting services stops the
    reactor as soon as it runs.
    """
    if status:
        out = stream if stream is not None else sys.__stderr__
        if out is not None:
            out.write(line + "\n")
            out.flush()
        at_exit(status)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def set_title(title: str) -> None:
    """The process title (``ps``, ``top``), when setproctitle is installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return
    setproctitle(title)
