"""A handler worker: ``python -m catalyzer.split.worker``, spawned by the prefork master of
``catalyzer-handler --procs N`` (never by hand).

It speaks the prefork master's control contract (:mod:`catalyzer.prefork.control`): Ready once
every front has welcomed it (so a HUP's new generation replaces the old one only when it can
take work), a heartbeat every second, and its stack on SIGUSR2 (``--timeout``). The request it
runs is published in the scoreboard the master passes. TERM drains it like a standalone handler
and it exits 0, or 1 if die-timeout had to cut.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import amp

from catalyzer.prefork import control
from catalyzer.process.children import set_title
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server.channel import ServerState
from catalyzer.settings import Config
from catalyzer.split.handlerservice import HandlerService, HandlerSetupError
from catalyzer.split.zmqio import KeyFileError, keep_message_buffers
from catalyzer.wsgi.appspec import AppSpecError, load_app

log = Logger(namespace="catalyzer.split.worker")


class _Control(control.QuietAMP):
    def __init__(self, worker: HandlerWorker) -> None:
        amp.AMP.__init__(self)
        self.worker = worker

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        self.worker.control = self

    @control.Dump.responder
    def dump(self) -> dict[str, str]:
        return {"text": json.dumps(self.worker.service.status())}

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.worker.master_lost()


class HandlerWorker:
    def __init__(self, spec: dict[str, Any], reactor: Any) -> None:
        self.reactor = reactor
        self.slot = int(spec["slot"])
        self.generation = int(spec["generation"])
        config = Config.from_values(spec["settings"])
        set_title(f"catalyzer handler {self.slot} [{config.app}]")
        try:
            app = load_app(config.app, os.getcwd())
        except AppSpecError as e:
            sys.stderr.write(f"{e}\n")  # the master prefixes it with which worker failed
            sys.stderr.flush()
            os._exit(3)
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
        try:
            self.service = HandlerService.build(
                config, self.server, reactor, generation=self.generation
            )
        except (HandlerSetupError, KeyFileError) as e:
            sys.stderr.write(f"{e}\n")
            sys.stderr.flush()
            os._exit(3)
        self.service.on_ready = self._say_ready
        self.control: amp.AMP | None = None
        self._control_fd = int(spec["control_fd"])

    def start(self) -> None:
        ctl = protocol.Factory()
        ctl.buildProtocol = lambda addr: _Control(self)  # type: ignore[method-assign]
        self.reactor.adoptStreamConnection(self._control_fd, socket.AF_UNIX, ctl)
        os.close(self._control_fd)
        self.service.startService()

    def _say_ready(self) -> None:
        proto = self.control
        if proto is not None:
            proto.callRemote(control.Ready, pid=os.getpid())
            self._heartbeat()

    def _heartbeat(self) -> None:
        proto = self.control
        if proto is None:
            return
        stats = {**self.service.status(), "connections": 0, "in_flight": 0}
        proto.callRemote(control.Heartbeat, stats=json.dumps(stats))
        self.reactor.callLater(1.0, self._heartbeat)

    def master_lost(self) -> None:
        if self.reactor.running:
            log.warn("the master went away: draining")
            self.service.drain()


def main() -> None:
    if control.ENV_KEY not in os.environ:
        raise SystemExit(
            "catalyzer.split.worker is started by the master (twistd catalyzer-handler "
            f"--procs N), not by hand (it reads its settings from {control.ENV_KEY})"
        )
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from catalyzer.ops.logfmt import plain_observer
    from catalyzer.process import signals

    spec = json.loads(os.environ.pop(control.ENV_KEY))
    keep_message_buffers()
    globalLogBeginner.beginLoggingTo([plain_observer(sys.stderr)], redirectStandardIO=False)
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    worker = HandlerWorker(spec, reactor)
    reactor.callWhenRunning(worker.start)
    reactor.callWhenRunning(
        signals.install,
        reactor,
        {
            signal.SIGTERM: worker.service.drain,
            signal.SIGINT: worker.service.quick,
            signal.SIGQUIT: worker.service.quick,
            signal.SIGHUP: lambda: None,  # reloads are the master's business
            signal.SIGUSR1: lambda: None,
        },
    )
    stopped: list[bool] = []

    def stop_service() -> Any:
        if stopped:
            return None
        stopped.append(True)
        return worker.service.stopService()

    reactor.addSystemEventTrigger("before", "shutdown", stop_service)
    reactor.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if worker.service.clean_exit else 1)


if __name__ == "__main__":
    main()
