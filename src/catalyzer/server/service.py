"""The single-process HTTP service: binds the endpoints, serves, and stops gracefully."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, interfaces, task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from catalyzer.server.channel import ServerState
from catalyzer.server.faces import factory_for, split_face
from catalyzer.server.listening import ListenError, listen_all, listen_now

__all__ = ["HTTPService", "ListenError"]

log = Logger(namespace="catalyzer")


class HTTPService(Service):
    """Listens on ``endpoints`` and serves ``server``'s application.

    Binding happens in :meth:`privilegedStartService`, before ``twistd`` drops privileges, so a
    root-started server can bind port 80 and still run the app as ``--uid``.

    :meth:`stopService` is the graceful stop: stop accepting, let requests in flight finish, close
    idle connections, and cut whatever is left after ``die-timeout``. ``clean_exit`` says whether
    everything finished in time.
    """

    def __init__(
        self,
        server: ServerState,
        endpoints: Sequence[tuple[str, interfaces.IStreamServerEndpoint]],
        reactor: Any,
    ) -> None:
        self.server = server
        self.endpoints = endpoints
        self.reactor = reactor
        self.ports: list[interfaces.IListeningPort] = []
        self.clean_exit = True
        self._die_timeout = server.config.die_timeout
        self._flusher: LoopingCall | None = None

    def privilegedStartService(self) -> None:
        # A gateway endpoint (--uwsgi, --fastcgi) is told apart by its description.
        factories = {}
        for description, _ in self.endpoints:
            face = split_face(description)[0]
            if face not in factories:
                factories[face] = factory_for(face, self.server)
        listening = [(d, (e, factories[split_face(d)[0]])) for d, e in self.endpoints]
        self.ports = listen_all(listening, lambda ef: listen_now(*ef), logger=log)
        self.server.listening_on(self.ports)
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self.server.start_threads(self.reactor)
        if self.server.access_log is not None:
            self._flusher = LoopingCall(self.server.access_log.flush)
            self._flusher.clock = self.server.clock
            self._flusher.start(1.0, now=False)

    def hurry(self) -> None:
        """Stop without waiting for requests in flight (SIGINT): die-timeout becomes 0."""
        self._die_timeout = 0.0

    @defer.inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        Service.stopService(self)
        # Before the listeners close (a reactor turn at least): a response that starts meanwhile
        # already says Connection: close.
        self.server.stop_keep_alive()
        yield defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in self.ports], consumeErrors=True
        )
        self.ports = []
        self.server.listening_on([])
        timeout = self._die_timeout
        busy = len(self.server.channels)
        if busy:
            log.info("stopping: waiting up to {t:g}s for {n} connection(s)", t=timeout, n=busy)
        drained = self.server.drain()
        timer = self.server.clock.callLater(timeout, drained.cancel)
        try:
            yield drained
        except defer.CancelledError:
            self.clean_exit = False
            log.warn(
                "die-timeout ({t:g}s) reached: cutting {n} connection(s)",
                t=timeout,
                n=len(self.server.channels),
            )
            self.server.abort_all()
            # Let the reactor carry out the aborts before it shuts down.
            yield task.deferLater(self.server.clock, 0, lambda: None)
        else:
            timer.cancel()
        if self.server.threadpool is not None and self.clean_exit:
            # Threads still inside the app after die-timeout are abandoned, not joined: the
            # entry point then ends the process with os._exit.
            self.server.threadpool.stop()
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self.server.access_log is not None:
            self.server.access_log.close()
