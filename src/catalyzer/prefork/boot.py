"""How a worker process the prefork master spawned starts and ends, whatever it serves: an HTTP
worker (:mod:`catalyzer.prefork.worker`) or a split-mode handler worker
(:mod:`catalyzer.split.worker`).

:func:`read_spec` refuses to run outside the master, reads the settings the master passed, sends
the log to stderr (which the master reads and tags) and arms SIGUSR2 for stack dumps
(``--timeout``); :func:`run` installs the signal handlers, runs the reactor, stops the service
once, and exits with the status the worker gives.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from catalyzer.prefork import control
from catalyzer.process.supervision import BOOT_FAILURE

__all__ = ["fail", "read_spec", "run"]


def read_spec(module: str, command: str) -> dict[str, Any]:
    """The master's spec for this worker; exits with a line naming ``command`` if there is none
    (someone ran ``python -m module`` by hand)."""
    if control.ENV_KEY not in os.environ:
        raise SystemExit(
            f"{module} is started by the master ({command}), not by hand (it reads its "
            f"settings from {control.ENV_KEY})"
        )
    from twisted.logger import globalLogBeginner

    from catalyzer.ops.logfmt import plain_observer

    spec: dict[str, Any] = json.loads(os.environ.pop(control.ENV_KEY))
    globalLogBeginner.beginLoggingTo([plain_observer(sys.stderr)], redirectStandardIO=False)
    # The master asks for our stack with SIGUSR2 when a request hangs past --timeout.
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
    return spec


def fail(message: str | None = None) -> NoReturn:
    """End a worker that cannot boot with the status the master reads as a boot failure (it
    halts if no worker ever booted), after ``message``, if it was not written already, on
    stderr: the master prefixes it with which worker failed."""
    if message is not None:
        sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    os._exit(BOOT_FAILURE)


def run(
    reactor: Any,
    start: Callable[[], object],
    actions: Mapping[signal.Signals, Callable[[], object]],
    stop_service: Callable[[], Any],
    exit_status: Callable[[], int],
    at_once: Mapping[signal.Signals, Callable[[], object]] | None = None,
    then: Callable[[], object] | None = None,
) -> None:
    """Start the worker once the reactor runs, route ``actions`` (HUP and USR1 are ignored
    unless given: reloads and dumps are the master's business), stop the service once before
    shutdown (``then`` runs once the signal handlers are in place), and exit with ``exit_status()`` without running the interpreter's exit (threads
    stuck in the app must not hold the process)."""
    from catalyzer.process import signals

    handlers: dict[signal.Signals, Callable[[], object]] = {
        signal.SIGHUP: lambda: None,
        signal.SIGUSR1: lambda: None,
        **actions,
    }
    reactor.callWhenRunning(start)
    signals.take_over(reactor, handlers, at_once)
    if then is not None:
        reactor.callWhenRunning(then)
    stopped: list[bool] = []

    def stop_once() -> Any:
        if stopped:
            return None
        stopped.append(True)
        return stop_service()

    reactor.addSystemEventTrigger("before", "shutdown", stop_once)
    reactor.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status())
