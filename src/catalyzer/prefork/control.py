"""The whole contract between the prefork master and its workers, imported by both sides.

How a worker is started (its settings as JSON in ``CATALYZER_WORKER``, the listening sockets'
families) and what the two say to each other afterwards: AMP commands over a socketpair of the
worker's own (not stdin/stdout, which carry the worker's log output).
"""

from __future__ import annotations

import json
import socket
from typing import Any, Protocol

from twisted.protocols import amp

from catalyzer.settings import BY_NAME, Config

ENV_KEY = "CATALYZER_WORKER"
FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def worker_environment(
    config: Config,
    slot: int,
    generation: int,
    listeners: list[dict[str, Any]],
    control_fd: int,
    scoreboard_fd: int,
    handoff_fd: int | None = None,
) -> str:
    """The JSON the master hands a worker."""
    values = {s.name: getattr(config, s.attr) for s in BY_NAME.values()}
    for name in ("listen", "uwsgi", "fastcgi"):
        values[name] = list(getattr(config, name))
    return json.dumps(
        {
            "settings": values,
            "slot": slot,
            "generation": generation,
            "listeners": listeners,
            "control_fd": control_fd,
            "scoreboard_fd": scoreboard_fd,
            # Connections passed between workers through the master (prefork.fdpass).
            "handoff_fd": handoff_fd,
        }
    )


class QuietAMP(amp.AMP):
    """AMP without its "connection established/lost" log lines: one per worker start is noise."""

    def makeConnection(self, transport: Any) -> None:
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any = None) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class Ready(amp.Command):
    """Worker -> master: the app is imported and the listening sockets are adopted."""

    arguments = [(b"pid", amp.Integer())]
    response = []


class Heartbeat(amp.Command):
    """Worker -> master, every second: the worker's numbers, as JSON."""

    arguments = [(b"stats", amp.Unicode())]
    response = []
    requiresAnswer = False


class Watch(amp.Command):
    """Worker -> master (with --reload): files to watch, as a JSON list of paths."""

    arguments = [(b"paths", amp.Unicode())]
    response = []
    requiresAnswer = False


class Progress(amp.Command):
    """Worker -> master: progress of the uploads this worker receives, JSON
    ``{upload id: entry}``. Sent ten times a second while there is news; no answer."""

    arguments = [(b"entries", amp.Unicode())]
    response = []
    requiresAnswer = False


class QueryProgress(amp.Command):
    """Worker -> master: a poll for an upload. Every poll is answered from the master's view, so
    that successive polls never go backwards, whichever worker answers them."""

    arguments = [(b"upload_id", amp.Unicode())]
    response = [(b"entry", amp.Unicode())]


class Retire(amp.Command):
    """Worker -> master: replace me (max-requests or max-worker-rss reached; ``detail`` gives
    the figure). The master starts the replacement first and sends TERM once it is ready."""

    arguments = [(b"reason", amp.Unicode()), (b"detail", amp.Unicode(optional=True))]
    response = []


class Dump(amp.Command):
    """Master -> worker: describe your connections (for the USR1 state dump)."""

    arguments = []
    response = [(b"text", amp.Unicode())]


class Rebalance(amp.Command):
    """Master -> worker: give away ``share`` (0..1) of your active keep-alive connections over
    the hand-off channel (:mod:`catalyzer.prefork.balance`); answered with how many went."""

    arguments = [(b"share", amp.Float())]
    response = [(b"moved", amp.Integer())]


class Controlled(Protocol):
    """What :class:`WorkerControl` needs of a worker (an HTTP worker or a split handler)."""

    control: amp.AMP | None

    def describe(self) -> str: ...

    def master_lost(self) -> None: ...

    def rebalance(self, share: float) -> int: ...


class WorkerControl(QuietAMP):
    """A worker's end of the control channel."""

    def __init__(self, worker: Controlled) -> None:
        amp.AMP.__init__(self)
        self.worker = worker

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        self.worker.control = self

    @Dump.responder
    def dump(self) -> dict[str, str]:
        return {"text": self.worker.describe()}

    @Rebalance.responder
    def rebalance(self, share: float) -> dict[str, int]:
        return {"moved": self.worker.rebalance(share)}

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        # The master is gone: nobody supervises us any more; stop serving gracefully.
        self.worker.master_lost()
