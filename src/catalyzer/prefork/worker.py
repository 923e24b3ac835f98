"""A prefork worker: ``python -m catalyzer.prefork.worker``, spawned by the master (never by hand).

It is a fresh interpreter: it imports the application, adopts the listening sockets the master
passed as file descriptors, says Ready over its control channel, and serves like the single-process
server. Its log goes to stderr, which the master reads and tags with the worker's number.

The master passes its settings as JSON in ``CATALYZER_WORKER`` (see :func:`catalyzer.prefork.control.worker_environment`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

from twisted.internet import protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

from catalyzer.ops import trace
from catalyzer.ops.introspection import registry as introspection
from catalyzer.prefork import boot, control
from catalyzer.prefork.fdpass import FdReader
from catalyzer.prefork.poolrescue import PoolRescue
from catalyzer.prefork.recycling import RecyclePolicy
from catalyzer.prefork.rescue import GatedScoreboard, Watchdog, adopt, rebalance
from catalyzer.process.children import set_title
from catalyzer.process.memory import MIB, ResidentMemory
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server import twistedprivate
from catalyzer.server.channel import describe_connections
from catalyzer.server.proxyheader import ProxyHeaderFactory, RejectionLog, split_proxied
from catalyzer.server.startchecks import StartError
from catalyzer.settings import Config
from catalyzer.wsgi.threads import AppThreads

log = Logger(namespace="catalyzer.prefork.worker")


class Worker:
    def __init__(self, spec: Mapping[str, Any], reactor: Any) -> None:
        from catalyzer.server.channel import ServerState
        from catalyzer.server.service import HTTPService
        from catalyzer.wsgi.appspec import AppSpecError, load_app

        self.reactor = reactor
        self.slot = int(spec["slot"])
        self.generation = int(spec["generation"])
        self.config = Config.from_values(spec["settings"])
        config = self.config
        set_title(f"catalyzer worker {self.slot} [{config.app}]")
        self.broken_files: list[str] = []
        try:
            app = load_app(config.app, os.getcwd())
        except AppSpecError as e:
            if not config.reload:
                boot.fail(str(e))
            from catalyzer.prefork.reloader import error_app, files_in_traceback

            log.error("{error}", error=e)
            app = error_app(str(e))
            self.broken_files = files_in_traceback(str(e))
        limit = config.max_requests
        if limit:
            limit += random.randint(0, config.max_requests_jitter)
        self.recycling = RecyclePolicy(limit, config.max_worker_rss * MIB)
        self.memory = ResidentMemory() if config.max_worker_rss else None
        handoff_fd = spec.get("handoff_fd")
        self.handoff = None if handoff_fd is None else socket.socket(fileno=int(handoff_fd))
        if self.handoff is not None:
            self.handoff.setblocking(False)
        # Keep-alive rescue (prefork.rescue): only when the app runs in the reactor thread, the
        # one case where a worker in the app cannot read its other connections.
        rescue = self.handoff is not None and not config.threads and config.handoff_after > 0
        scoreboard_fd = int(spec["scoreboard_fd"])
        scoreboard = GatedScoreboard(scoreboard_fd) if rescue else Scoreboard(scoreboard_fd)
        # Uploads' progress goes to the master and polls are answered from its view of every
        # worker's uploads (_send_progress, _query_progress).
        self.server = ServerState.from_config(
            app,
            config,
            reactor,
            multiprocess=True,
            scoreboard=scoreboard,
            on_response=self._count_response,
            progress_source=self._query_progress,
            share_progress=True,
        )
        endpoints: list[tuple[str, Any]] = []
        for listener in spec["listeners"]:
            endpoints.append((listener["description"], _Adopted(reactor, listener)))
        self.service = HTTPService(self.server, endpoints, reactor)
        self.watchdog: Watchdog | None = None
        self.pool_rescue: PoolRescue | None = None
        threadpool = self.server.response_services.threadpool
        if (
            self.handoff is not None
            and isinstance(threadpool, AppThreads)
            and config.handoff_after > 0
        ):
            self.pool_rescue = PoolRescue(
                reactor, self.server, threadpool, scoreboard, self.handoff, config.handoff_after
            )
        if rescue:
            assert isinstance(scoreboard, GatedScoreboard) and self.handoff is not None
            self.watchdog = Watchdog(
                reactor, self.server, scoreboard, self.handoff, config.handoff_after
            )
        self.control: amp.AMP | None = None
        self.rebalanced = 0
        self._modules_seen = 0
        self._control_fd = int(spec["control_fd"])

    def start(self) -> None:
        try:
            self.service.privilegedStartService()
            self.service.startService()
        except StartError:  # its message is on stderr already
            boot.fail()
        for port in self.service.ports:
            # One accept per wake-up on the socket all workers share: a burst is spread over the
            # workers awake, and a worker stuck in the app takes nothing (see prefork.listeners).
            twistedprivate.accept_one_per_wakeup(port)
            twistedprivate.exclusive_wakeups(port)
        ctl = protocol.Factory()
        ctl.buildProtocol = lambda addr: control.WorkerControl(self)  # type: ignore[method-assign]
        self.reactor.adoptStreamConnection(self._control_fd, socket.AF_UNIX, ctl)
        os.close(self._control_fd)
        self.reactor.callLater(0, self._say_ready)
        if self.handoff is not None:
            from catalyzer.server.channel import HTTPFactory

            factory = HTTPFactory(self.server)
            FdReader(
                self.reactor, self.handoff, lambda fd: adopt(self.reactor, factory, fd)
            ).start()
        if self.watchdog is not None:
            self.watchdog.start()
        if self.pool_rescue is not None:
            self.pool_rescue.start()
        if self.server.progress is not None:
            # Our uploads' progress goes to the master ten times a second.
            sender = LoopingCall(self._send_progress)
            sender.clock = self.reactor
            sender.start(0.1, now=False)

    def _query_progress(self, upload_id: str) -> Any:
        proto = self.control
        if proto is None:
            from twisted.internet import defer

            return defer.fail(ConnectionError("no master"))
        d = proto.callRemote(control.QueryProgress, upload_id=upload_id)
        return d.addCallback(lambda answer: json.loads(answer["entry"]))

    def _send_progress(self) -> None:
        tracker = self.server.progress
        proto = self.control
        if tracker is None or proto is None or not tracker.outbox:
            return
        proto.callRemote(control.Progress, entries=json.dumps(tracker.take_outbox()))

    def _say_ready(self) -> None:
        proto = self.control
        if proto is not None:
            proto.callRemote(control.Ready, pid=os.getpid())
            self._heartbeat()

    def _heartbeat(self) -> None:
        proto = self.control
        if proto is None:
            return
        proto.callRemote(control.Heartbeat, stats=json.dumps(self.stats()))
        if self.config.reload and len(sys.modules) != self._modules_seen:
            # Report the app's files again when it has imported more (lazy imports).
            from catalyzer.prefork.reloader import module_files

            self._modules_seen = len(sys.modules)
            paths = module_files() + self.broken_files
            if trace.ENABLED:
                trace.emit("watch", files=len(paths))
            proto.callRemote(control.Watch, paths=json.dumps(paths))
        self.reactor.callLater(1.0, self._heartbeat)

    def stats(self) -> dict[str, Any]:
        server = self.server
        assert server.scoreboard is not None
        entered, what = server.scoreboard.read()
        # Not the counters: the master reads them from the scoreboard itself.
        numbers = {k: v for k, v in server.status().items() if k not in ("metrics", "requests")}
        return {
            **numbers,
            "in_app": what if entered else "",
            "in_app_since": entered,
            "rss": _rss(),
            # Keep-alive connections given to other workers while this one was in the app.
            "handed_off": self._handed_off(),
            # Keep-alive connections given to less busy workers (prefork.balance).
            "rebalanced": self.rebalanced,
        }

    def _handed_off(self) -> int:
        if self.watchdog is not None:
            return self.watchdog.moved
        return self.pool_rescue.moved if self.pool_rescue is not None else 0

    def describe(self) -> str:
        head = f"worker {self.slot} pid {os.getpid()} generation {self.generation}: "
        text = head + describe_connections(self.server)
        # Task dispatchers the app runs in this worker (catalyzer.dispatch), if any.
        dispatchers = introspection.describe_all()
        return f"{text}\n{dispatchers}" if dispatchers else text

    def _count_response(self) -> None:
        policy = self.recycling
        rss = self.memory.read() if self.memory is not None and policy.watches_memory else 0
        decision = policy.after_response(self.server.requests_served, rss)
        if decision is not None and self.control is not None:
            self.control.callRemote(control.Retire, reason=decision.reason, detail=decision.detail)

    def stop(self, quick: bool = False) -> None:
        # The watchdog (or the pool's rescue) keeps going while we drain: a connection waiting
        # behind a slow request is better answered by another worker now than with
        # Connection: close after it.
        if quick:
            self.service.hurry()
        # Now, not once the reactor's shutdown has begun: responses starting meanwhile are the
        # last on their connections.
        self.server.stop_keep_alive()
        if self.reactor.running:
            self.reactor.stop()

    def master_lost(self) -> None:
        if self.reactor.running:
            log.warn("the master went away: stopping")
            self.reactor.stop()

    def rebalance(self, share: float) -> int:
        """The master asks for ``share`` of our active keep-alive connections
        (prefork.balance); how many went."""
        if self.handoff is None:
            return 0
        moved = rebalance(
            self.reactor, self.server, self.handoff, share, self.server.clock.seconds()
        )
        self.rebalanced += moved
        return moved


class _Adopted:
    """An endpoint for a listening socket inherited from the master."""

    def __init__(self, reactor: Any, listener: Mapping[str, Any]) -> None:
        self.reactor = reactor
        self.listener = listener
        self.rejections = RejectionLog(reactor)

    def listen(self, factory: Any) -> Any:
        from twisted.internet import defer

        from catalyzer.server.faces import split_face

        # "uwsgi:haproxy:tcp:9000": the face first, then the PROXY wrapper, then the endpoint.
        proxied, description = split_proxied(split_face(str(self.listener["description"]))[1])
        if description.startswith("ssl:"):
            from twisted.internet import endpoints
            from twisted.protocols.tls import TLSMemoryBIOFactory

            endpoint = endpoints.serverFromString(self.reactor, description)
            # The TLS settings come from the same endpoint description the master parsed.
            factory = TLSMemoryBIOFactory(
                twistedprivate.ssl_context_factory(endpoint), False, factory
            )
        if proxied:
            # Outermost: the PROXY header comes before anything else on the connection.
            factory = ProxyHeaderFactory(factory, self.rejections)
        fd = int(self.listener["fd"])
        port = self.reactor.adoptStreamPort(fd, control.FAMILIES[self.listener["family"]], factory)
        os.close(fd)  # adoptStreamPort made its own copy
        return defer.succeed(port)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def main() -> None:
    from twisted.internet import reactor

    from catalyzer.process.heap import freeze_startup_heap, keep_large_blocks

    spec = boot.read_spec("catalyzer.prefork.worker", "twistd catalyzer --procs N")
    keep_large_blocks()
    worker = Worker(spec, reactor)
    twistedprivate.dispatch_lightly(reactor)
    boot.run(
        reactor,
        worker.start,
        {
            signal.SIGTERM: worker.stop,
            signal.SIGINT: lambda: worker.stop(quick=True),
            signal.SIGQUIT: lambda: worker.stop(quick=True),
        },
        worker.service.stopService,
        lambda: 0 if worker.service.clean_exit else 1,
        # A response the app is making while TERM arrives already says Connection: close,
        # even when the app runs in this (the reactor's) thread.
        at_once={signal.SIGTERM: worker.server.stop_keep_alive},
        # After the signal handlers: a full collection at start-up takes a while.
        then=freeze_startup_heap,
    )


if __name__ == "__main__":
    main()
