"""A handler worker: ``python -m catalyzer.split.worker``, spawned by the prefork master of
``catalyzer-handler --procs N`` (never by hand).

It speaks the prefork master's control contract (:mod:`catalyzer.prefork.control`): Ready once
every front has welcomed it (so a HUP's new generation replaces the old one only when it can
take work), a heartbeat every second, and its stack on SIGUSR2 (``--timeout``). The request it
runs is published in the scoreboard the master passes. TERM drains it like a standalone handler
and it exits 0, or 1 if die-timeout had to cut.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import amp

from catalyzer.prefork import boot, control
from catalyzer.prefork.recycling import RecyclePolicy
from catalyzer.process.children import set_title
from catalyzer.process.heap import keep_large_blocks
from catalyzer.process.memory import MIB, ResidentMemory
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server import twistedprivate
from catalyzer.server.channel import ServerState
from catalyzer.server.startchecks import StartError
from catalyzer.settings import Config
from catalyzer.split.handlerservice import HandlerService, HandlerSetupError, with_profiling
from catalyzer.split.zmqio import KeyFileError
from catalyzer.wsgi.appspec import AppSpecError, load_app

log = Logger(namespace="catalyzer.split.worker")


class HandlerWorker:
    def __init__(self, spec: dict[str, Any], reactor: Any) -> None:
        self.reactor = reactor
        self.slot = int(spec["slot"])
        self.generation = int(spec["generation"])
        config = Config.from_values(spec["settings"])
        set_title(f"catalyzer handler {self.slot} [{config.app}]")
        try:
            app = with_profiling(load_app(config.app, os.getcwd()), config)
        except (AppSpecError, HandlerSetupError) as e:
            boot.fail(str(e))
        handoff_fd = spec.get("handoff_fd")
        if handoff_fd is not None:
            os.close(int(handoff_fd))  # connections are not handed between handlers
        self.server = ServerState.from_config(
            app,
            config,
            reactor,
            multiprocess=True,
            scoreboard=Scoreboard(int(spec["scoreboard_fd"])),
        )
        twistedprivate.dispatch_lightly(reactor)
        try:
            self.service = HandlerService.build(
                config, self.server, reactor, generation=self.generation
            )
        except (HandlerSetupError, KeyFileError) as e:
            boot.fail(str(e))
        self.service.on_ready = self._say_ready
        limit = config.max_requests
        if limit:
            limit += random.randint(0, config.max_requests_jitter)
        self.recycling = RecyclePolicy(limit, config.max_worker_rss * MIB)
        self.memory = ResidentMemory() if config.max_worker_rss else None
        self.control: amp.AMP | None = None
        self._control_fd = int(spec["control_fd"])

    def start(self) -> None:
        ctl = protocol.Factory()
        ctl.buildProtocol = lambda addr: control.WorkerControl(self)  # type: ignore[method-assign]
        self.reactor.adoptStreamConnection(self._control_fd, socket.AF_UNIX, ctl)
        os.close(self._control_fd)
        try:
            self.service.startService()
        except StartError:  # its message is on stderr already
            boot.fail()

    def _say_ready(self) -> None:
        proto = self.control
        if proto is not None:
            proto.callRemote(control.Ready, pid=os.getpid())
            self._heartbeat()

    def _heartbeat(self) -> None:
        proto = self.control
        if proto is None:
            return
        status = self.service.status()
        rss = self.memory.read() if self.memory is not None else 0
        stats = {**status, "connections": 0, "in_flight": 0, "rss": rss}
        proto.callRemote(control.Heartbeat, stats=json.dumps(stats))
        self._check_recycling(rss)
        self.reactor.callLater(1.0, self._heartbeat)

    def _check_recycling(self, rss: int) -> None:
        """Asked once a second (with the heartbeat), not after every response: the per-request
        path stays as it is, and a handler that is over its RSS while idle is replaced too. The
        master starts the replacement first, then sends TERM: this worker drains (its unstarted
        requests go back to the front, started ones finish), so no request fails."""
        served = sum(session.served for session in self.service.sessions)
        decision = self.recycling.after_response(served, rss)
        if decision is not None and self.control is not None:
            log.info(
                "asking to be replaced ({reason}{detail}) after {served} requests",
                reason=decision.reason,
                detail=f": {decision.detail}" if decision.detail else "",
                served=served,
            )
            self.control.callRemote(control.Retire, reason=decision.reason, detail=decision.detail)

    def describe(self) -> str:
        """This worker's sessions, for the master's USR1 dump."""
        head = f"handler worker {self.slot} pid {os.getpid()} generation {self.generation}: "
        return head + self.service.describe()

    def master_lost(self) -> None:
        if self.reactor.running:
            log.warn("the master went away: draining")
            self.service.drain()

    def rebalance(self, share: float) -> int:
        # A handler has no client connections: its work comes by credit from the fronts.
        return 0


def main() -> None:
    from twisted.internet import reactor

    spec = boot.read_spec("catalyzer.split.worker", "twistd catalyzer-handler --procs N")
    keep_large_blocks()
    worker = HandlerWorker(spec, reactor)
    boot.run(
        reactor,
        worker.start,
        {
            signal.SIGTERM: worker.service.drain,
            signal.SIGINT: worker.service.quick,
            signal.SIGQUIT: worker.service.quick,
        },
        worker.service.stopService,
        lambda: 0 if worker.service.clean_exit else 1,
    )


if __name__ == "__main__":
    main()
