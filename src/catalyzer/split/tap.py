"""The ``twistd catalyzer-front`` and ``twistd catalyzer-handler`` entry points: option tables
(from the one settings table, :mod:`catalyzer.settings`) and ``makeService``.

An edge module: it touches the global reactor. Every user error (bad option, bad ``--app``, an
endpoint that cannot be bound) ends the process with one line on stderr and a non-zero status,
before anything is served.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from catalyzer.configfile import load_config_file
from catalyzer.ops.introspection import registry as introspection
from catalyzer.ops.statusapp import make_status_app
from catalyzer.process.heap import keep_large_blocks
from catalyzer.server import twistedprivate
from catalyzer.server.channel import ServerState, describe_connections
from catalyzer.server.endpointspec import (
    EndpointSpecError,
    open_forwarding_warning,
    server_endpoints,
)
from catalyzer.server.faces import Face
from catalyzer.server.root import SingleProcessRoot, SingleStatus, with_dispatchers
from catalyzer.server.service import HTTPService
from catalyzer.server.startchecks import spool_dir_problem
from catalyzer.settings import (
    BY_NAME,
    SPLIT_SECTION,
    Config,
    Setting,
    SettingError,
    layered_values,
    repeatable_option,
)
from catalyzer.split.front import SplitFront
from catalyzer.split.handlerservice import (
    HandlerService,
    HandlerSetupError,
    check_profile_directory,
    handler_threads,
    with_profiling,
)
from catalyzer.split.router import Router, RouterSettings
from catalyzer.split.zmqio import (
    KeyFileError,
    ZapHandler,
    ZmqConnection,
    front_socket,
    load_allowed_keys,
    load_key_pair,
    new_context,
)
from catalyzer.wsgi.appspec import AppSpecError, load_app
from catalyzer.wsgi.types import Environ, StartResponse

__all__ = ["FrontOptions", "HandlerOptions", "makeFrontService", "makeHandlerService"]

log = Logger(namespace="catalyzer.split")

_ENGINE_SECTIONS = ("Listening", "Limits", "Timeouts", "Upload progress", "Logging")
_NOT_FRONT = {
    "uwsgi",
    "fastcgi",
    "connect",
    "tag",
    "weight",
    "prefetch",
    "prefetch-stall",
    "front-key",
    "profile",
    "profile-every",
    "profile-keep",
}
FRONT_SETTINGS = (
    "script-name",
    "stats",
    "manhole",
    "manhole-keys",
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
    "procs",
    "curve-key",
    "front-key",
    "timeout",
    "worker-liveness",
    "max-requests",
    "max-requests-jitter",
    "max-worker-rss",
    "connect",
    "tag",
    "weight",
    "prefetch",
    "prefetch-stall",
    "heartbeat-interval",
    "handler-liveness",
    "write-timeout",
    "die-timeout",
    "access-log",
    "profile",
    "profile-every",
    "profile-keep",
)


def _fail(command: str, message: str) -> SystemExit:
    return SystemExit(f"{command}: error: {message}")


class _SettingsOptions(usage.Options):
    """Options made from a subset of the settings table; ``--config FILE`` for any of them."""

    command: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.repeated: dict[str, list[str]] = {}
        usage.Options.__init__(self)
        self.config: Config | None = None
        self.environ = os.environ if environ is None else environ

    @classmethod
    def settings(cls) -> list[Setting]:
        return [BY_NAME[name] for name in cls.names]

    def postOptions(self) -> None:
        file_values: dict[str, object] = {}
        if self.opts.get("config"):
            try:
                file_values = load_config_file(self.opts["config"])
            except SettingError as e:
                raise _fail(self.command, str(e)) from None
        try:
            values = layered_values(
                self.settings(), file_values, self.environ, self.opts, self.repeated, self.names
            )
            self.config = Config.from_values(values)
        except SettingError as e:
            raise _fail(self.command, str(e)) from None
        for name in self.required:
            if not values.get(name):
                raise _fail(self.command, f"--{name} is required (see --help)")
        problem = spool_dir_problem(self.config)
        if problem is not None:
            raise _fail(self.command, problem)


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
        + [
            [
                "config",
                "c",
                None,
                "A TOML file holding any of these settings; CATALYZER_NAME environment variables win over it, and the command line over both.",
            ]
        ],
        "optFlags": [[s.name, s.short, s.help] for s in table if s.flag],
    }
    for setting in table:
        if setting.repeatable:
            attrs["opt_" + setting.attr] = repeatable_option(setting)
    return type(name, (_SettingsOptions,), attrs)


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
        budget=config.buffer_budget,
        heartbeat=config.heartbeat_interval,
        liveness=config.handler_liveness,
        no_handler_grace=config.no_handler_grace,
    )


def _no_local_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError("a split-mode front runs no application: its handlers do")


_LOOPBACK_HOSTS = ("127.", "localhost", "[::1]", "::1")


def local_endpoint(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint``: ipc, or tcp on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rpartition(":")[0]
    return host.startswith(_LOOPBACK_HOSTS)


class FrontStatus:
    """``--stats`` of a front: the engine's numbers and, under ``split``, the router's (a row
    per handler, the queue, its counters). Ready while listening with a handler connected."""

    def __init__(self, server: ServerState, front: SplitFront) -> None:
        self.single = SingleStatus(server)
        self.server = server
        self.front = front

    def status(self) -> dict[str, Any]:
        return {**self.single.status(), "split": self.front.status()}

    def ready(self) -> bool:
        return self.single.ready() and bool(self.front.router.handlers)


def front_control_app(front: SplitFront, status_app: Any) -> Any:
    """The stats endpoint's app with the front's commands added (no signals needed):
    ``POST /split/drain?tag=T`` (no new work for tag T) and ``POST /split/weight?tag=T&weight=W``
    (blue/green: start v43 handlers, weight them 0.1, compare, drain v42)."""

    def app(environ: Environ, start_response: StartResponse) -> Any:
        path = environ["PATH_INFO"]
        if not path.startswith("/split/"):
            return status_app(environ, start_response)
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        if environ["REQUEST_METHOD"] != "POST":
            return _answer(start_response, "405 Method Not Allowed", "use POST\n")
        tag = query.get("tag")
        if tag is None:
            return _answer(start_response, "400 Bad Request", "tag=T is required\n")
        if path == "/split/drain":
            n = front.drain_tag(tag)
            return _answer(start_response, "200 OK", f"drained {n} handlers tagged {tag}\n")
        if path == "/split/weight":
            try:
                weight = float(query.get("weight", ""))
                if not 0 <= weight < float("inf"):
                    raise ValueError
            except ValueError:
                return _answer(start_response, "400 Bad Request", "weight=W, 0 or more\n")
            n = front.set_weight(tag, weight)
            return _answer(start_response, "200 OK", f"weight {weight:g} for tag {tag} ({n})\n")
        return _answer(start_response, "404 Not Found", "/split/drain or /split/weight\n")

    return app


def _answer(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def makeFrontService(options: _SettingsOptions) -> Service:
    config = options.config
    assert config is not None
    from twisted.internet import reactor

    command = "catalyzer-front"
    keep_large_blocks()
    config = config.replace(threads=0, procs=1)
    # The same endpoints as catalyzer's HTTP face (--backlog, catalyzer's PROXY protocol
    # listener, systemd sockets), and the same warning for a forwarding judgement that trusts all.
    try:
        listen = server_endpoints(config, reactor, faces=(Face.HTTP,))
    except EndpointSpecError as e:
        raise _fail(command, str(e)) from None
    warning = open_forwarding_warning(config)
    if warning is not None:
        log.warn(warning)
    router = Router(router_settings(config))
    front = SplitFront(router, reactor, config.script_name)
    curve = None
    allowed: set[bytes] = set()
    try:
        if config.curve_key:
            if not config.handler_keys:
                raise KeyFileError("--curve-key needs --handler-keys DIR (the allowed handlers)")
            curve = load_key_pair(config.curve_key)
            allowed = load_allowed_keys(config.handler_keys)
        elif config.handler_keys:
            raise KeyFileError("--handler-keys needs --curve-key (the front's own key pair)")
    except KeyFileError as e:
        raise _fail(command, str(e)) from None
    if curve is None and not config.insecure_handlers:
        for endpoint in config.handlers:
            if not local_endpoint(endpoint):
                raise _fail(
                    command,
                    f"--handlers {endpoint!r} is reachable from other hosts: give --curve-key "
                    "and --handler-keys (python -m catalyzer.split.keys makes them), or "
                    "--insecure-handlers",
                )
    context = new_context()
    zap = ZapHandler(context, reactor, allowed) if curve is not None else None
    try:
        sock, bound = front_socket(
            context,
            config.handlers,
            heartbeat=config.heartbeat_interval,
            liveness=config.handler_liveness,
            curve=curve,
        )
    except Exception as e:  # zmq.ZMQError, named where zmq may be imported
        if zap is not None:
            zap.close()
        context.term()
        raise _fail(command, f"--handlers {list(config.handlers)!r}: {e}") from None
    connection = ZmqConnection(sock, reactor, front.received, batching=True, routed=True)
    front.attach(connection)
    try:
        server = ServerState.from_config(_no_local_app, config, reactor, responder=front.responder)
    except OSError as e:
        raise _fail(command, f"--access-log {config.access_log!r}: {e.strerror or e}") from None
    twistedprivate.dispatch_lightly(reactor)
    http = HTTPService(server, listen, reactor)
    root = SingleProcessRoot(
        http, reactor, "a front has nothing to reload (handlers run with --procs N reload on HUP)"
    )
    if config.stats:
        try:
            endpoint = endpoints.serverFromString(reactor, config.stats)
        except Exception as e:
            raise _fail(command, f"--stats {config.stats!r}: {e or type(e).__name__}") from None
        stats = ServerState(
            front_control_app(front, make_status_app(FrontStatus(server, front))),
            config.replace(access_log="off", threads=0),
            reactor,
        )
        Service.setServiceParent(HTTPService(stats, [(config.stats, endpoint)], reactor), root)
    # The USR1 dump (SingleProcessRoot) lists what the registry holds: the handler rows.
    introspection.add("split", front)
    if config.manhole:
        namespace: dict[str, object] = {
            "handlers": lambda: front.status()["handlers"],
            "dump": lambda: with_dispatchers(describe_connections(server)),
            "stats": FrontStatus(server, front).status,
            "drain": front.drain_tag,
            "weight": front.set_weight,
            "front": front,
        }
        _add_manhole(root, config, namespace, reactor, command)
    if zap is not None:
        reactor.callWhenRunning(zap.start)
    reactor.callWhenRunning(connection.start)
    reactor.callWhenRunning(
        log.info,
        "front: handlers connect to {where}",
        where=" ".join(bound),
    )

    def close() -> None:
        front.stop()
        connection.close()
        if zap is not None:
            zap.close()
        context.term()

    reactor.addSystemEventTrigger("after", "shutdown", close)
    return root


def _add_manhole(
    root: MultiService, config: Config, namespace: dict[str, object], reactor: Any, command: str
) -> None:
    try:
        from catalyzer.ops.manhole import make_manhole_service

        manhole = make_manhole_service(
            config.manhole, namespace, reactor, config.manhole_keys or None
        )
    except ImportError as e:
        raise _fail(
            command, f"--manhole needs twisted.conch: pip install 'catalyzer[manhole]' ({e})"
        ) from None
    except SettingError as e:
        raise _fail(command, str(e)) from None
    manhole.setServiceParent(root)


def makeHandlerService(options: _SettingsOptions) -> Service:
    config = options.config
    assert config is not None
    from twisted.internet import reactor

    command = "catalyzer-handler"
    config = config.replace(listen=(), threads=handler_threads(config.threads))
    keep_large_blocks()
    if config.procs > 1:
        # The prefork master, unchanged, supervising handler processes instead of HTTP workers
        # (HUP generations gated on readiness, --timeout stack dumps, max-requests, TERM).
        try:
            check_profile_directory(config)
        except HandlerSetupError as e:
            raise _fail(command, str(e)) from None
        from catalyzer.prefork.master import MasterService

        master = MasterService(
            config,
            [],
            reactor,
            worker_module="catalyzer.split.worker",
            balance=False,
            command=command,
        )
        root = MultiService()
        Service.setServiceParent(master, root)
        return root
    try:
        app = with_profiling(load_app(config.app, os.getcwd()), config)
    except (AppSpecError, HandlerSetupError) as e:
        raise _fail(command, str(e)) from None
    try:
        server = ServerState.from_config(app, config, reactor)
    except OSError as e:
        raise _fail(command, f"--access-log {config.access_log!r}: {e.strerror or e}") from None
    twistedprivate.dispatch_lightly(reactor)
    try:
        service = HandlerService.build(config, server, reactor, generation=1)
    except (HandlerSetupError, KeyFileError) as e:
        raise _fail(command, str(e)) from None
    service.install_signals = True
    return service
