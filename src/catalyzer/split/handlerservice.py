"""A handler process as a Twisted service: its sessions with the fronts (one per ``--connect``),
its app threads and its access log; TERM drains it. Used by ``catalyzer-handler`` directly and by
each handler worker under the prefork master (:mod:`catalyzer.split.worker`)."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from catalyzer.ops.profiling import ProfiledApp
from catalyzer.process import signals
from catalyzer.process.children import exit_at_interpreter_exit
from catalyzer.server.channel import ServerState
from catalyzer.settings import Config
from catalyzer.split.handler import HandlerSession
from catalyzer.split.zmqio import (
    ZmqConnection,
    handler_socket,
    load_key_pair,
    load_public_key,
    new_context,
)

__all__ = [
    "HandlerService",
    "HandlerSetupError",
    "check_profile_directory",
    "handler_threads",
    "with_profiling",
]

log = Logger(namespace="catalyzer.split")


def handler_threads(threads: int) -> int:
    """A handler's app threads: ``--threads 0`` (the default) means one. A handler's reactor never
    runs the app: it must keep heartbeating (an app call longer than handler-liveness would make
    the front count the handler lost and run its GETs again elsewhere). Its credit is its threads
    and its ``--prefetch``, which a stall takes back (see :class:`HandlerSession`)."""
    return max(1, threads)


class HandlerSetupError(Exception):
    """A ``--connect`` endpoint ZeroMQ refuses, or keys that do not go together; the text says
    which and why."""


def check_profile_directory(config: Config) -> None:
    """With ``--profile DIR``: make DIR if missing; raise :class:`HandlerSetupError` if it
    cannot be made or written (a master checks before it starts any worker)."""
    directory = config.profile
    if not directory:
        return
    try:
        os.makedirs(directory, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        raise HandlerSetupError(f"--profile {directory!r}: {e.strerror or e}") from None


def with_profiling(app: Any, config: Config) -> Any:
    """``app`` as it is, or with ``--profile DIR``: one request in ``profile-every`` profiled
    into DIR (created if missing). Raises :class:`HandlerSetupError` if DIR cannot be made or
    written."""
    directory = config.profile
    if not directory:
        return app
    check_profile_directory(config)
    log.info(
        "profiling one request in {every} into {directory} (the newest {keep} files stay)",
        every=config.profile_every,
        directory=directory,
        keep=config.profile_keep,
    )
    return ProfiledApp(
        app,
        directory,
        config.profile_every,
        config.profile_keep,
        lambda text: log.error("{text}", text=text),
    )


class HandlerService(MultiService):
    """The handler process: its sessions with the fronts, its app threads, its access log.

    :meth:`drain` (TERM) leaves in order (DRAIN, unstarted work returned, started work finished,
    BYE) and stops the reactor; ``clean_exit`` is false if die-timeout had to cut. With
    ``install_signals`` (a handler that is its own process, not a prefork worker) TERM, INT,
    USR1 and HUP (logged and ignored) are handled here and a cut makes the process exit 1."""

    def __init__(
        self,
        server: ServerState,
        sessions: list[HandlerSession],
        reactor: Any,
        context: Any = None,
    ) -> None:
        MultiService.__init__(self)
        self.server = server
        self.sessions = sessions
        self.reactor = reactor
        self.context = context
        self.install_signals = False
        self.endpoints: list[str] = []  # the fronts, in the order of ``sessions``
        self.clean_exit = True
        # Called once every session has been welcomed (a prefork worker's Ready).
        self.on_ready: Callable[[], None] | None = None
        self._welcomed: set[int] = set()
        self._left = 0
        self._stopping = False
        self._cut: Any = None
        self._flusher: LoopingCall | None = None

    @classmethod
    def build(
        cls, config: Config, server: ServerState, reactor: Any, *, generation: int
    ) -> HandlerService:
        """One session per ``--connect`` front, sharing ``server``'s app threads."""
        curve = None
        if config.curve_key or config.front_key:
            if not (config.curve_key and config.front_key):
                raise HandlerSetupError(
                    "--curve-key and --front-key go together (this handler's key pair, the "
                    "front's public key)"
                )
            public, secret = load_key_pair(config.curve_key)
            curve = (public, secret, load_public_key(config.front_key))
        context = new_context()
        host = socket.gethostname()
        hello = (
            (b"host", host.encode("utf-8", "replace")),
            (b"pid", b"%d" % os.getpid()),
            (b"tag", config.tag.encode("utf-8", "replace")),
            (b"gen", b"%d" % generation),
            (b"weight", b"%g" % config.weight),
        )
        sessions: list[HandlerSession] = []
        for endpoint in config.connect:
            identity = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}".encode()
            try:
                sock = handler_socket(
                    context,
                    endpoint,
                    identity,
                    heartbeat=config.heartbeat_interval,
                    liveness=config.handler_liveness,
                    curve=curve,
                )
            except Exception as e:  # zmq.ZMQError
                for session in sessions:
                    session.stop()
                context.term()
                raise HandlerSetupError(f"--connect {endpoint!r}: {e}") from None
            connection = ZmqConnection(sock, reactor, lambda frames: None, batching=True)
            sessions.append(
                HandlerSession(
                    connection,
                    reactor,
                    server.response_services,
                    slots=handler_threads(config.threads),
                    prefetch=config.prefetch,
                    prefetch_stall=config.prefetch_stall,
                    hello=hello,
                    heartbeat=config.heartbeat_interval,
                    liveness=config.handler_liveness,
                    access_log=server.access_log,
                    errors=server.errors,
                    multiprocess=server.multiprocess,
                )
            )
        service = cls(server, sessions, reactor, context)
        service.endpoints = list(config.connect)
        return service

    def startService(self) -> None:
        # Before the sessions connect: see signals.take_over.
        if self.install_signals:
            signals.take_over(
                self.reactor,
                {
                    signal.SIGTERM: self.drain,
                    signal.SIGINT: self.quick,
                    signal.SIGUSR1: self._dump,
                    signal.SIGHUP: self._hup,
                },
            )
        MultiService.startService(self)
        self.server.start_threads(self.reactor, command="catalyzer-handler")
        if self.server.access_log is not None:
            self._flusher = LoopingCall(self.server.access_log.flush)
            self._flusher.clock = self.reactor
            self._flusher.start(1.0, now=False)
        for n, session in enumerate(self.sessions):
            session.on_idle = self._session_left
            session.on_welcome = lambda n=n: self._session_welcomed(n)
            session.start()

    def _session_welcomed(self, n: int) -> None:
        self._welcomed.add(n)
        if len(self._welcomed) == len(self.sessions) and self.on_ready is not None:
            ready, self.on_ready = self.on_ready, None
            ready()

    def status(self) -> dict[str, object]:
        return {"sessions": [s.status() for s in self.sessions]}

    def describe(self) -> str:
        """The sessions as text, one line per front (the USR1 dump of a handler master)."""
        lines = [f"{len(self.sessions)} sessions"]
        for n, session in enumerate(self.sessions):
            row = session.status()
            where = self.endpoints[n] if n < len(self.endpoints) else f"front {n}"
            state = "draining" if row["draining"] else "joined" if row["welcomed"] else "joining"
            lines.append(
                f"  {where}: {state}, {row['in_flight']} in flight ({row['running']} running), "
                f"{row['served']} served, {row['stalls']} stalls, session {row['sessions']}"
            )
        return "\n".join(lines)

    def _dump(self) -> None:
        log.info("state of handler pid {pid}: {text}", pid=os.getpid(), text=self.describe())

    def _hup(self) -> None:
        log.warn(
            "SIGHUP ignored: a single handler process cannot reload itself: run it with --procs N"
        )

    def drain(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("SIGTERM: returning queued work, finishing started work, then leaving")
        self._cut = self.reactor.callLater(self.server.config.die_timeout, self._die_timeout)
        for session in self.sessions:
            session.drain()

    def quick(self) -> None:
        log.info("stopping now")
        self._stop(clean=False)

    def _die_timeout(self) -> None:
        self._cut = None
        log.warn("die-timeout reached with requests still running: cutting them")
        self._stop(clean=False)

    def _stop(self, clean: bool) -> None:
        if not clean:
            self.clean_exit = False
            if self.install_signals:
                exit_at_interpreter_exit(1)
        if self.reactor.running:
            self.reactor.stop()

    def _session_left(self) -> None:
        self._left += 1
        if self._left == len(self.sessions):
            if self._cut is not None and self._cut.active():
                self._cut.cancel()
            # A little later: the BYEs are queued in libzmq, and closing with LINGER 0 would
            # drop them.
            self.reactor.callLater(0.2, self._stop, True)

    def stopService(self) -> Any:
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.server.access_log is not None:
            self.server.access_log.flush()
        for session in self.sessions:
            session.stop()
        if self.context is not None:
            self.context.term()
            self.context = None
        if self.server.threadpool is not None:
            self.server.threadpool.stop()
        return MultiService.stopService(self)
