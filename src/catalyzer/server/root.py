"""The root service of a single-process server: its signals, the state dump, and its exit status.

TERM drains (requests in flight finish, answering with ``Connection: close``), INT stops at once,
USR1 logs the state of the connections, HUP is logged and ignored (its default action would end
the process without a word: a ``systemctl reload`` written for the prefork master must not). The
process exits 0 after a clean drain and 1 after cutting connections at die-timeout.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from catalyzer.ops.introspection import registry as introspection
from catalyzer.process import signals
from catalyzer.process.children import exit_at_interpreter_exit
from catalyzer.process.heap import freeze_startup_heap, keep_large_blocks
from catalyzer.server.channel import ServerState, describe_connections
from catalyzer.server.service import HTTPService

__all__ = ["SingleProcessRoot", "SingleStatus", "no_reload", "with_dispatchers"]

log = Logger(namespace="catalyzer")


def with_dispatchers(text: str) -> str:
    """``text`` and the state of the task dispatchers running in this process, if any."""
    dispatchers = introspection.describe_all()
    return f"{text}\n{dispatchers}" if dispatchers else text


def no_reload() -> str:
    return "a single process cannot reload itself: run with --procs N or --reload"


class SingleStatus:
    """``--stats`` data for the single-process server."""

    def __init__(self, server: ServerState) -> None:
        self.server = server

    def status(self) -> dict[str, object]:
        me = {"slot": 0, "pid": os.getpid(), "generation": 1, "state": "ready"}
        progress = self.server.progress
        return {
            **self.server.status(),
            "pid": os.getpid(),
            "workers": [me],
            "restarts": {},
            "progress_entries": len(progress.registry.entries) if progress else 0,
        }

    def ready(self) -> bool:
        return bool(self.server.ports) and not self.server.draining


class SingleProcessRoot(MultiService):
    """Owns the process-level behaviour: signals and the exit status. ``why_no_reload`` is
    logged when HUP is ignored."""

    def __init__(self, http: HTTPService, reactor: Any, why_no_reload: str = no_reload()) -> None:
        MultiService.__init__(self)
        self.http = http
        self.reactor = reactor
        self.why_no_reload = why_no_reload
        self._stopping = False
        Service.setServiceParent(http, self)

    def privilegedStartService(self) -> None:
        # Before the children listen: see signals.take_over.
        signals.take_over(
            self.reactor,
            {
                signal.SIGTERM: self._graceful_stop,
                signal.SIGINT: self._quick_stop,
                signal.SIGUSR1: self._dump,
                signal.SIGHUP: self._hup,
            },
            # A response the app is making while TERM arrives already says Connection: close,
            # even when the app runs in the reactor's thread.
            at_once={signal.SIGTERM: self.http.server.stop_keep_alive},
        )
        MultiService.privilegedStartService(self)

    def startService(self) -> None:
        keep_large_blocks()
        MultiService.startService(self)
        # After the signal handlers: a full collection at start-up takes a while.
        self.reactor.callWhenRunning(freeze_startup_heap)

    def _dump(self) -> None:
        text = with_dispatchers(describe_connections(self.http.server))
        log.info("state of pid {pid}: {text}", pid=os.getpid(), text=text)

    def _hup(self) -> None:
        log.warn("SIGHUP ignored: {why}", why=self.why_no_reload)

    def _graceful_stop(self) -> None:
        log.info("SIGTERM: finishing requests in flight, then exiting")
        self._stop()

    def _quick_stop(self) -> None:
        log.info("SIGINT: stopping now")
        self.http.hurry()
        self._stop()

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            # Now, not once the reactor's shutdown has begun: responses starting meanwhile are
            # the last on their connections.
            self.http.server.stop_keep_alive()
            self.reactor.stop()

    def stopService(self) -> Any:
        d = MultiService.stopService(self)

        def done(result: object) -> object:
            if not self.http.clean_exit:
                # Threads may still be stuck inside the app; don't wait for them at exit.
                exit_at_interpreter_exit(1)
            return result

        return d.addBoth(done)
