"""A WSGI app with a task dispatcher of its own in each process that imports it (a catalyzer
worker): run with ``--threads N``, each request waits for a task with blockingCallFromThread."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread

from catalyzer.dispatch import PreforkDispatcher
from tests.dispatch import tasks

dispatcher = PreforkDispatcher(max_forks=1, pre_fork=1, fork_name="app jobs", reactor=reactor)
reactor.callWhenRunning(dispatcher.startService)  # type: ignore[attr-defined]
reactor.addSystemEventTrigger("before", "shutdown", dispatcher.stopService)  # type: ignore[attr-defined]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    result = blockingCallFromThread(reactor, dispatcher.dispatch, tasks.pid)
    body = str(result.unwrap()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
