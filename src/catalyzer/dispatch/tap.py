"""``twistd -n catalyzer-dispatch --methods MODULE``: a task dispatcher's methods over XML-RPC.

Every public function of the ``--methods`` modules (see :func:`catalyzer.dispatch.tasks.public_function`)
is an XML-RPC method, run in a pool of ``--procs`` children by a
:class:`~catalyzer.dispatch.PreforkDispatcher`. A task's exception comes back as an XML-RPC fault
(code 8002, ``"Type: message"``; the traceback stays in the server), an unknown method as fault
8001. Only plain names are callable from the network: never an import path.

This is an edge module: it touches the global reactor. The options are a small table of their
own, below; ``--help`` shows them.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import server, xmlrpc

from catalyzer.dispatch import PreforkDispatcher, tasks
from catalyzer.dispatch.tasks import TaskResult
from catalyzer.process import signals
from catalyzer.process.children import halt
from catalyzer.server.listening import listen_all, listen_now

log = Logger(namespace="catalyzer.dispatch")

DEFAULT_LISTEN = "tcp:7080:interface=127.0.0.1"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# name, short, default, type, help: the whole option table.
OPTIONS: list[tuple[str, str | None, str | None, type, str]] = [
    ("listen", "l", DEFAULT_LISTEN, str, "Endpoint to serve XML-RPC on (loopback by default)."),
    ("procs", "p", "4", int, "Children at most (0: run every task in this process)."),
    ("pre-fork", None, None, int, "Children started at once [default: --procs]."),
    ("max-requests", None, "0", int, "Replace a child after this many tasks (0: never)."),
    ("timeout", "t", "0", float, "Kill a child whose task runs longer, in seconds (0: never)."),
    ("spawn-delay", None, "2", float, "Seconds between two children started on demand."),
    ("stop-timeout", None, "10", float, "Seconds the tasks in hand get to finish at shutdown."),
    ("fork-name", None, "catalyzer dispatch", str, "Children's process title: NAME child."),
    ("fork-init", None, None, str, "module:function each child runs once it starts."),
    ("verbose", "v", "0", int, "1: children starting and stopping; 2: every task."),
]


def _fail(message: str) -> SystemExit:
    return SystemExit(f"catalyzer-dispatch: error: {message}")


class Options(usage.Options):
    synopsis = "--methods MODULE [--methods MODULE ...] [options]"
    longdesc = (
        "Serve the public functions of the --methods modules over XML-RPC, each call run in a "
        "pool of child processes (see docs/dispatch.md)."
    )
    optParameters = [
        [name, short, None, f"{text} [default: {default}]" if default else text]
        for name, short, default, _, text in OPTIONS
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self.methods: list[str] = []
        self.settings: dict[str, Any] = {}
        self.endpoint: Any = None

    def opt_methods(self, module: str) -> None:
        """A module whose public functions are served (repeatable; searched in order)."""
        self.methods.append(module)

    opt_m = opt_methods

    def postOptions(self) -> None:
        if not self.methods:
            raise _fail("--methods MODULE is required (the module whose functions are served)")
        for name, _, default, kind, _ in OPTIONS:
            raw = self.opts.get(name)
            raw = default if raw is None else raw
            if raw is None:
                self.settings[name] = None
                continue
            try:
                value = kind(raw)
            except ValueError:
                raise _fail(f"--{name} {raw!r}: expected {kind.__name__}") from None
            if isinstance(value, int | float) and value < 0:
                raise _fail(f"--{name} cannot be negative")
            self.settings[name] = value
        from twisted.internet import reactor

        try:
            self.endpoint = endpoints.serverFromString(reactor, self.settings["listen"])
        except Exception as e:  # the endpoint parsers raise a variety of types
            raise _fail(f"--listen {self.settings['listen']!r}: {e or type(e).__name__}") from None


class DispatchResource(xmlrpc.XMLRPC):
    """XML-RPC calls turned into dispatched tasks."""

    def __init__(self, dispatcher: PreforkDispatcher) -> None:
        xmlrpc.XMLRPC.__init__(self, allowNone=True, useDateTime=True)
        self.dispatcher = dispatcher

    def lookupProcedure(self, procedurePath: str) -> Callable[..., Any]:
        # A plain name only: an import path from the network would run anything at all.
        if not _NAME.fullmatch(procedurePath):
            raise xmlrpc.NoSuchFunction(self.NOT_FOUND, f"no method {procedurePath!r}")

        def call(*args: Any) -> Any:
            return self.dispatcher.dispatch(procedurePath, *args).addCallback(self._answer)

        return call

    def listProcedures(self) -> list[str]:
        return []

    def _answer(self, result: TaskResult) -> Any:
        if result.error is None:
            return result.value
        code = self.NOT_FOUND if result.error.type == tasks.UNKNOWN_METHOD else self.FAILURE
        return xmlrpc.Fault(code, str(result.error))


class _Listen(Service):
    """Listens on one endpoint and says where, as catalyzer does."""

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        (self.port,) = listen_all(
            [(self.description, self.endpoint)],
            lambda e: listen_now(e, self.factory),
            logger=log,
            prefix="catalyzer-dispatch: error",
        )

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def makeService(options: Options) -> Service:
    from twisted.internet import reactor

    values = options.settings
    procs: int = values["procs"]
    pre_fork = values["pre-fork"]
    dispatcher = PreforkDispatcher(
        max_forks=procs,
        pre_fork=procs if pre_fork is None else pre_fork,
        max_requests=values["max-requests"],
        classes=options.methods,
        timeout=values["timeout"] or None,
        spawn_delay=values["spawn-delay"],
        stop_timeout=values["stop-timeout"],
        fork_name=values["fork-name"],
        fork_init=values["fork-init"],
        verbose=values["verbose"],
        on_halt=lambda reason: _halt(reactor, reason),
        reactor=reactor,
    )
    root = MultiService()
    Service.setServiceParent(dispatcher, root)
    site = server.Site(DispatchResource(dispatcher))
    site.noisy = False
    Service.setServiceParent(_Listen(values["listen"], options.endpoint, site), root)

    def dump() -> None:
        log.info("{text}", text=dispatcher.describe())

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    # Our own TERM/INT handlers (they only enqueue the stop): twistd's would make the process
    # kill itself with the signal once stopped, where a clean stop should exit 0.
    reactor.callWhenRunning(
        signals.install,
        reactor,
        {signal.SIGUSR1: dump, signal.SIGTERM: stop, signal.SIGINT: stop},
    )
    log.info(
        "catalyzer-dispatch pid {pid}: methods from {methods}, up to {procs} children",
        pid=os.getpid(),
        methods=", ".join(options.methods),
        procs=procs,
    )
    return root


def _halt(reactor: Any, reason: str) -> None:
    """Children cannot start (the --methods module does not import, say): exit 3, as catalyzer's
    master does on a boot failure, rather than answer every call with a fault."""
    halt(reactor, 3, f"catalyzer-dispatch: {reason}")
