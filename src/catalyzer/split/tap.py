"""The ``twistd catalyzer-front`` and ``twistd catalyzer-handler`` entry points: option tables
(from the one settings table, :mod:`catalyzer.settings`) and ``makeService``.

An edge module: it touches the global reactor. Every user error (bad option, bad ``--app``, an
endpoint that cannot be bound) ends the process with one line on stderr and a non-zero status,
before anything is served.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from catalyzer.configfile import load_config_file
from catalyzer.process import signals
from catalyzer.process.children import exit_at_interpreter_exit
from catalyzer.server.channel import ServerState
from catalyzer.server.root import SingleProcessRoot
from catalyzer.server.service import HTTPService
from catalyzer.settings import BY_NAME, SPLIT_SECTION, Config, Setting, SettingError
from catalyzer.split.front import SplitFront
from catalyzer.split.handler import HandlerSession
from catalyzer.split.router import Router, RouterSettings
from catalyzer.split.zmqio import ZmqConnection, front_socket, handler_socket, new_context
from catalyzer.wsgi.appspec import AppSpecError, load_app
from catalyzer.wsgi.types import Environ, StartResponse

__all__ = ["FrontOptions", "HandlerOptions", "makeFrontService", "makeHandlerService"]

log = Logger(namespace="catalyzer.split")

_ENGINE_SECTIONS = ("Listening", "Limits", "Timeouts", "Upload progress", "Logging")
_NOT_FRONT = {"uwsgi", "fastcgi", "connect", "tag", "weight"}
FRONT_SETTINGS = (
    "script-name",
    *(
        s.name
        for s in BY_NAME.values()
        if (s.section in _ENGINE_SECTIONS or s.section == SPLIT_SECTION)
        and s.name not in _NOT_FRONT
    ),
)
HANDLER_SETTINGS = (
    "app",
    "threads",
    "connect",
    "tag",
    "weight",
    "heartbeat-interval",
    "handler-liveness",
    "write-timeout",
    "die-timeout",
    "access-log",
)


def _fail(command: str, message: str) -> SystemExit:
    return SystemExit(f"{command}: error: {message}")


class _SettingsOptions(usage.Options):
    """Options made from a subset of the settings table; ``--config FILE`` for any of them."""

    command: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.repeated: dict[str, list[str]] = {}
        usage.Options.__init__(self)
        self.config: Config | None = None

    @classmethod
    def settings(cls) -> list[Setting]:
        return [BY_NAME[name] for name in cls.names]

    def postOptions(self) -> None:
        values: dict[str, object] = {}
        if self.opts.get("config"):
            try:
                loaded = load_config_file(self.opts["config"])
            except SettingError as e:
                raise _fail(self.command, str(e)) from None
            values.update({k: v for k, v in loaded.items() if k in self.names})
        try:
            for setting in self.settings():
                if setting.repeatable:
                    raw_list = self.repeated.get(setting.name)
                    if raw_list:
                        values[setting.name] = [setting.coerce(v) for v in raw_list]
                    continue
                raw = self.opts.get(setting.name)
                if setting.flag:
                    if raw:
                        values[setting.name] = True
                elif raw is not None:
                    values[setting.name] = setting.coerce(raw)
            self.config = Config.from_values(values)
        except SettingError as e:
            raise _fail(self.command, str(e)) from None
        for name in self.required:
            if not values.get(name):
                raise _fail(self.command, f"--{name} is required (see --help)")


def _options_class(
    name: str, command: str, names: Iterable[str], required: tuple[str, ...], synopsis: str
) -> type[_SettingsOptions]:
    chosen = tuple(dict.fromkeys(names))
    table = [BY_NAME[n] for n in chosen]
    attrs: dict[str, Any] = {
        "command": command,
        "names": chosen,
        "required": required,
        "synopsis": synopsis,
        "optParameters": [
            [s.name, s.short, None, f"{s.help} [default: {s.default!s}]"]
            for s in table
            if not s.repeatable and not s.flag
        ]
        + [["config", "c", None, "A TOML file holding any of these settings."]],
        "optFlags": [[s.name, s.short, s.help] for s in table if s.flag],
    }
    for setting in table:
        if setting.repeatable:
            attrs["opt_" + setting.attr] = _repeatable_option(setting)
    return type(name, (_SettingsOptions,), attrs)


def _repeatable_option(setting: Setting) -> Any:
    def opt(self: _SettingsOptions, value: str) -> None:
        self.repeated.setdefault(setting.name, []).append(value)

    opt.__doc__ = setting.help
    return opt


FrontOptions = _options_class(
    "FrontOptions",
    "catalyzer-front",
    FRONT_SETTINGS,
    ("handlers",),
    "--listen ENDPOINT --handlers tcp://127.0.0.1:5560 [options]",
)
HandlerOptions = _options_class(
    "HandlerOptions",
    "catalyzer-handler",
    HANDLER_SETTINGS,
    ("app", "connect"),
    "--app MODULE:CALLABLE --connect tcp://127.0.0.1:5560 [options]",
)


def router_settings(config: Config) -> RouterSettings:
    return RouterSettings(
        queue_length=config.queue_length,
        queue_timeout=config.queue_timeout,
        start_timeout=config.start_timeout,
        first_byte_timeout=config.first_byte_timeout,
        stall_timeout=config.stall_timeout,
        retries=config.retries,
        window=config.window,
        heartbeat=config.heartbeat_interval,
        liveness=config.handler_liveness,
        no_handler_grace=config.no_handler_grace,
    )


def _no_local_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("a split-mode front runs no application: its handlers do")


def makeFrontService(options: _SettingsOptions) -> Service:
    config = options.config
    assert config is not None
    from twisted.internet import reactor

    command = "catalyzer-front"
    config = config.replace(threads=0, procs=1)
    listen: list[tuple[str, Any]] = []
    for description in config.listen:
        try:
            listen.append((description, endpoints.serverFromString(reactor, description)))
        except Exception as e:
            raise _fail(command, f"--listen {description!r}: {e or type(e).__name__}") from None
    router = Router(router_settings(config))
    front = SplitFront(router, reactor, config.script_name)
    context = new_context()
    try:
        sock, bound = front_socket(
            context,
            config.handlers,
            heartbeat=config.heartbeat_interval,
            liveness=config.handler_liveness,
        )
    except Exception as e:  # zmq.ZMQError, named where zmq may be imported
        context.term()
        raise _fail(command, f"--handlers {list(config.handlers)!r}: {e}") from None
    connection = ZmqConnection(sock, reactor, front.received)
    front.attach(connection)
    try:
        server = ServerState.from_config(_no_local_app, config, reactor, responder=front.responder)
    except OSError as e:
        raise _fail(command, f"--access-log {config.access_log!r}: {e.strerror or e}") from None
    http = HTTPService(server, listen, reactor)
    root = SingleProcessRoot(http, reactor)
    reactor.callWhenRunning(connection.start)
    reactor.callWhenRunning(
        log.info,
        "front: handlers connect to {where}",
        where=" ".join(bound),
    )

    def close() -> None:
        front.stop()
        connection.close()
        context.term()

    reactor.addSystemEventTrigger("after", "shutdown", close)
    return root


class HandlerService(MultiService):
    """The handler process: its sessions with the fronts, its app threads, its signals.

    TERM drains (DRAIN, unstarted work returned, started work finished, BYE) and exits 0, or 1 if
    die-timeout had to cut; INT stops at once."""

    def __init__(self, server: ServerState, sessions: list[HandlerSession], reactor: Any) -> None:
        MultiService.__init__(self)
        self.server = server
        self.sessions = sessions
        self.reactor = reactor
        self._left = 0
        self._stopping = False
        self._cut: Any = None
        self._flusher: LoopingCall | None = None

    def startService(self) -> None:
        MultiService.startService(self)
        if self.server.threadpool is not None:
            self.server.threadpool.start()
        if self.server.access_log is not None:
            self._flusher = LoopingCall(self.server.access_log.flush)
            self._flusher.clock = self.reactor
            self._flusher.start(1.0, now=False)
        for session in self.sessions:
            session.on_idle = self._session_left
            session.start()
        self.reactor.callWhenRunning(
            signals.install,
            self.reactor,
            {signal.SIGTERM: self._drain, signal.SIGINT: self._quick},
        )

    def _drain(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("SIGTERM: returning queued work, finishing started work, then leaving")
        self._cut = self.reactor.callLater(self.server.config.die_timeout, self._die_timeout)
        for session in self.sessions:
            session.drain()

    def _quick(self) -> None:
        log.info("SIGINT: stopping now")
        exit_at_interpreter_exit(1)
        self.reactor.stop()

    def _die_timeout(self) -> None:
        self._cut = None
        log.warn("die-timeout reached with requests still running: cutting them")
        exit_at_interpreter_exit(1)
        self.reactor.stop()

    def _session_left(self) -> None:
        self._left += 1
        if self._left == len(self.sessions):
            if self._cut is not None and self._cut.active():
                self._cut.cancel()
            # A turn later: the BYEs are queued in libzmq; LINGER 0 would drop them at close.
            self.reactor.callLater(0.2, self.reactor.stop)

    def stopService(self) -> Any:
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.server.access_log is not None:
            self.server.access_log.flush()
        for session in self.sessions:
            session.stop()
        if self.server.threadpool is not None:
            self.server.threadpool.stop()
        return MultiService.stopService(self)


def makeHandlerService(options: _SettingsOptions) -> Service:
    config = options.config
    assert config is not None
    from twisted.internet import reactor

    command = "catalyzer-handler"
    slots = max(1, config.threads)
    config = config.replace(threads=slots)
    try:
        app = load_app(config.app, os.getcwd())
    except AppSpecError as e:
        raise _fail(command, str(e)) from None
    try:
        server = ServerState.from_config(app, config, reactor)
    except OSError as e:
        raise _fail(command, f"--access-log {config.access_log!r}: {e.strerror or e}") from None
    context = new_context()
    host = socket.gethostname()
    hello = (
        (b"host", host.encode("utf-8", "replace")),
        (b"pid", b"%d" % os.getpid()),
        (b"tag", config.tag.encode("utf-8", "replace")),
        (b"gen", b"1"),
        (b"weight", b"%g" % config.weight),
    )
    sessions = []
    for endpoint in config.connect:
        identity = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}".encode()
        try:
            sock = handler_socket(
                context,
                endpoint,
                identity,
                heartbeat=config.heartbeat_interval,
                liveness=config.handler_liveness,
            )
        except Exception as e:  # zmq.ZMQError
            context.term()
            raise _fail(command, f"--connect {endpoint!r}: {e}") from None
        connection = ZmqConnection(sock, reactor, lambda frames: None)
        sessions.append(
            HandlerSession(
                connection,
                reactor,
                server.response_services,
                slots=slots,
                hello=hello,
                heartbeat=config.heartbeat_interval,
                liveness=config.handler_liveness,
                access_log=server.access_log,
                errors=server.errors,
            )
        )
    reactor.addSystemEventTrigger("after", "shutdown", context.term)
    return HandlerService(server, sessions, reactor)
