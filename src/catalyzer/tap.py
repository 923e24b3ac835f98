"""The ``twistd catalyzer`` entry point: option table and ``makeService`` (the wiring; the
single-process root service with its signals and exit status is :mod:`catalyzer.server.root`).

This is an edge module: the only place besides the worker entry points that touches the global
reactor. Every user error (bad option, bad ``--app``, unusable endpoint or log file) ends the process
with one line on stderr and a non-zero status, before anything is bound.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from catalyzer.configfile import load_config_file
from catalyzer.ops.introspection import registry as introspection
from catalyzer.server import twistedprivate
from catalyzer.server.channel import ServerState, describe_connections
from catalyzer.server.endpointspec import (
    EndpointSpecError,
    open_forwarding_warning,
    server_endpoints,
    with_backlog,
)
from catalyzer.server.root import SingleProcessRoot, SingleStatus, no_reload, with_dispatchers
from catalyzer.server.service import HTTPService
from catalyzer.server.startchecks import spool_dir_problem
from catalyzer.settings import SETTINGS as ALL_SETTINGS
from catalyzer.settings import (
    SPLIT_SECTION,
    Config,
    SettingError,
    layered_values,
    repeatable_option,
)
from catalyzer.wsgi.appspec import AppSpecError, load_app

log = Logger(namespace="catalyzer")

# Split mode's settings belong to catalyzer-front and catalyzer-handler (catalyzer.split.tap).
SETTINGS = tuple(s for s in ALL_SETTINGS if s.section != SPLIT_SECTION)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"catalyzer: error: {message}")


class Options(usage.Options):
    synopsis = "--app MODULE:CALLABLE [options]"
    longdesc = (
        "Serve a WSGI application on Twisted. Every option is described in docs/settings.md; "
        "sizes take K/M/G suffixes, times are in seconds."
    )
    optParameters = [
        [s.name, s.short, None, f"{s.help} [default: {s.default!s}]"]
        for s in SETTINGS
        if not s.repeatable and not s.flag
    ]
    optParameters.append(
        [
            "config",
            "c",
            None,
            "A TOML file holding any of these settings; CATALYZER_NAME environment variables "
            "win over it, and the command line over both.",
        ]
    )
    optFlags = [[s.name, s.short, s.help] for s in SETTINGS if s.flag]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.repeated: dict[str, list[str]] = {}
        usage.Options.__init__(self)
        self.config: Config | None = None
        self.endpoints: list[tuple[str, Any]] = []
        self.environ = os.environ if environ is None else environ

    def postOptions(self) -> None:
        file_values: dict[str, object] = {}
        if self.opts.get("config"):
            try:
                file_values = load_config_file(self.opts["config"])
            except SettingError as e:
                raise _fail(str(e)) from None
        try:
            values = layered_values(SETTINGS, file_values, self.environ, self.opts, self.repeated)
        except SettingError as e:
            raise _fail(str(e)) from None
        if "listen" not in values and (values.get("uwsgi") or values.get("fastcgi")):
            values["listen"] = []  # behind a web server: no HTTP port unless asked for
        if not values.get("app"):
            raise _fail("--app MODULE:CALLABLE is required (e.g. --app myapp:app)")
        try:
            self.config = Config.from_values(values)
        except SettingError as e:
            raise _fail(str(e)) from None
        if self.config.max_worker_rss and self.config.procs == 1 and not self.config.reload:
            raise _fail(
                "--max-worker-rss needs a master to replace the worker: use --procs 2 or more "
                "(with --procs 1 the twistd process itself serves, and nothing would replace it)"
            )
        problem = spool_dir_problem(self.config)
        if problem is not None:
            raise _fail(problem)
        from twisted.internet import reactor

        if not (self.config.listen or self.config.uwsgi or self.config.fastcgi):
            raise _fail("nothing to listen on: give --listen, --uwsgi or --fastcgi")
        try:
            self.endpoints = server_endpoints(self.config, reactor)
        except EndpointSpecError as e:
            raise _fail(str(e)) from None


for _setting in SETTINGS:
    if _setting.repeatable:
        setattr(Options, "opt_" + _setting.attr, repeatable_option(_setting))
        if _setting.short:
            setattr(Options, "opt_" + _setting.short, getattr(Options, "opt_" + _setting.attr))


def makeService(options: Options) -> Service:
    config = options.config
    assert config is not None
    from twisted.internet import reactor

    warning = open_forwarding_warning(config)
    if warning is not None:
        log.warn(warning)
    if config.procs > 1 or config.reload:
        # The master never imports the app: a broken app cannot take it down.
        from catalyzer.prefork.master import MasterService

        master = MasterService(config, options.endpoints, reactor)
        root = MultiService()
        Service.setServiceParent(master, root)
        namespace: dict[str, object] = {
            "workers": lambda: master.status()["workers"],
            "dump": master.dump_text,
            "stats": master.status,
            "reload": master.reload,
            "master": master,
            "dispatchers": lambda: introspection.running("dispatchers"),
        }
        _add_operations(root, config, master, reactor, namespace)
        return root

    try:
        app = load_app(config.app, os.getcwd())
    except AppSpecError as e:
        raise _fail(str(e)) from None
    try:
        server = ServerState.from_config(app, config, reactor)
    except OSError as e:
        raise _fail(f"--access-log {config.access_log!r}: {e.strerror or e}") from None
    twistedprivate.dispatch_lightly(reactor)
    http = HTTPService(server, options.endpoints, reactor)
    root = SingleProcessRoot(http, reactor)
    status = SingleStatus(server)
    names: dict[str, object] = {
        "workers": lambda: status.status()["workers"],
        "dump": lambda: with_dispatchers(describe_connections(server)),
        "stats": status.status,
        "reload": no_reload,
        "server": server,
        "dispatchers": lambda: introspection.running("dispatchers"),
    }
    _add_operations(root, config, status, reactor, names)
    return root


def _add_operations(
    root: MultiService, config: Config, source: Any, reactor: Any, namespace: dict[str, object]
) -> None:
    """The stats endpoint (served by catalyzer's own engine) and the manhole."""
    if config.manhole:
        try:
            from catalyzer.ops.manhole import make_manhole_service

            manhole = make_manhole_service(
                config.manhole, namespace, reactor, config.manhole_keys or None
            )
        except ImportError as e:
            raise _fail(
                f"--manhole needs twisted.conch: pip install 'catalyzer[manhole]' ({e})"
            ) from None
        except SettingError as e:
            raise _fail(str(e)) from None
        manhole.setServiceParent(root)
    if not config.stats:
        return
    from catalyzer.ops.statusapp import make_status_app

    try:
        endpoint = endpoints.serverFromString(reactor, with_backlog(config.stats, 64))
    except Exception as e:
        raise _fail(f"--stats {config.stats!r}: {e or type(e).__name__}") from None
    server = ServerState(
        make_status_app(source), config.replace(access_log="off", threads=0), reactor
    )
    Service.setServiceParent(HTTPService(server, [(config.stats, endpoint)], reactor), root)
