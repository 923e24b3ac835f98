"""``twistd -n catalyzer-dispatch --methods MODULE``: a task dispatcher's methods over XML-RPC.

Every public function of the ``--methods`` modules (see :func:`catalyzer.dispatch.tasks.public_function`)
is an XML-RPC method, run in a pool of ``--procs`` children by a
:class:`~catalyzer.dispatch.PreforkDispatcher`. A task's exception comes back as an XML-RPC fault
(code 8002, ``"Type: message"``; the traceback stays in the server), an unknown method as fault
8001. Only plain names are callable from the network: never an import path.

This is an edge module: it touches the global reactor. The options are those of
:data:`catalyzer.dispatch.settings.OPTIONS`, the table the dispatcher's keywords and
``docs/dispatch.md`` come from; ``--help`` shows them.
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

from catalyzer.dispatch import PreforkDispatcher, settings, tasks
from catalyzer.dispatch.tasks import TaskResult
from catalyzer.process import signals
from catalyzer.process.children import halt
from catalyzer.process.reactors import RunningReactor
from catalyzer.server.listening import listen_all, listen_now

log = Logger(namespace="catalyzer.dispatch")

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _fail(message: str) -> SystemExit:
    return SystemExit(f"catalyzer-dispatch: error: {message}")


class Options(usage.Options):
    synopsis = "--methods MODULE [--methods MODULE ...] [options]"
    longdesc = (
        "Serve the public functions of the --methods modules over XML-RPC, each call run in a "
        "pool of child processes (see docs/dispatch.md)."
    )
    optParameters = [
        [o.name, o.short, None, f"{o.help} [default: {o.default}]" if o.default else o.help]
        for o, _ in settings.OPTIONS
        if not o.repeatable
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self.methods: list[str] = []
        self.settings: dict[str, Any] = {}
        self.endpoint: Any = None

    def opt_methods(self, module: str) -> None:
        self.methods.append(module)

    # usage.Options takes an option's help from its handler's docstring.
    opt_methods.__doc__ = settings.CLASSES_OPTION.help
    opt_m = opt_methods

    def postOptions(self) -> None:
        if not self.methods:
            raise _fail("--methods MODULE is required (the module whose functions are served)")
        try:
            self.settings = settings.from_command_line(self.opts)
        except ValueError as e:
            raise _fail(str(e)) from None
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
    dispatcher = PreforkDispatcher(
        **settings.keywords({**values, "methods": options.methods}),
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
    signals.take_over(reactor, {signal.SIGUSR1: dump, signal.SIGTERM: stop, signal.SIGINT: stop})
    log.info(
        "catalyzer-dispatch pid {pid}: methods from {methods}, up to {procs} children",
        pid=os.getpid(),
        methods=", ".join(options.methods),
        procs=procs,
    )
    return root


def _halt(reactor: RunningReactor, reason: str) -> None:
    """Children cannot start (the --methods module does not import, say): exit 3, as catalyzer's
    master does on a boot failure, rather than answer every call with a fault."""
    halt(reactor, 3, f"catalyzer-dispatch: {reason}")
