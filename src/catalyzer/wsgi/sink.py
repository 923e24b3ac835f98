"""What a response needs from the outside, as interfaces: where its bytes go (:class:`ResponseSink`),
the per-process services it uses (:class:`ResponseServices`) and what it reports when it is over
(:class:`ResponseOutcome`, passed to the one completion callback).

The connection implements the sink; the response never sees the connection itself, so it can be
driven by anything that takes bytes and back-pressure (a test double, a later HTTP/2 stream).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from twisted.internet import interfaces
from twisted.logger import Logger, LogLevel

from catalyzer.http.reader import Request
from catalyzer.wsgi.types import Environ, WSGIApp

__all__ = [
    "AppScoreboard",
    "CallInThread",
    "OnDone",
    "RateLimitedLog",
    "Responder",
    "ResponderFactory",
    "ResponseCounter",
    "ResponseOutcome",
    "ResponseServices",
    "ResponseSink",
]


class ResponseSink(Protocol):
    """The connection as a response sees it."""

    @property
    def keep_alive_allowed(self) -> bool:
        """Whether the connection may carry another request: read when the head is built, so a
        drain that starts while the app runs still turns the response into the last one."""
        ...

    def write(self, data: bytes) -> None: ...

    def write_sequence(self, data: list[bytes]) -> None:
        """Queue several pieces in the transport without joining them (a large body behind its
        head). Always queued, never sent eagerly: a pull producer is resumed once they are flushed."""
        ...

    def register_producer(self, producer: Any, streaming: bool) -> None:
        """Back-pressure: ``producer`` is paused and resumed as the client reads (``streaming``),
        or resumed whenever the output buffer is empty (a pull producer)."""
        ...

    def unregister_producer(self) -> None: ...

    def start_writing(self) -> None:
        """Have a pull producer resumed once the socket can take more."""
        ...

    def abort_connection(self) -> None: ...

    def sendfile_socket(self) -> socket.socket | None:
        """The plain (not TLS) socket under the connection, for ``os.sendfile``; None if none."""
        ...

    def resume_when_writable(self) -> None:
        """The registered push producer paused itself with bytes of its own still to send:
        have it resumed (``resumeProducing``) once the socket can take more."""
        ...

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        """Send ``pieces`` on the plain socket in one ``sendmsg`` if nothing is queued ahead of
        them: the bytes the socket took (0 when it is full). None when something is queued or
        there is no plain socket (see :meth:`sendfile_socket`). Raises the socket's ``OSError``."""
        ...


class AppScoreboard(Protocol):
    """Where a prefork worker publishes the request it is running (see process.scoreboard)."""

    def enter(self, now: float, what: str) -> None: ...

    def leave(self) -> None: ...

    def leave_if(self, entered: float) -> None: ...


class ResponseCounter(Protocol):
    """Where a response is counted (:class:`catalyzer.ops.metrics.RequestMetrics`)."""

    def observe(self, status: int, duration: float, bytes_out: int, app: bool = False) -> None: ...


class CallInThread(Protocol):
    """A thread pool, as far as a response uses one."""

    def callInThread(self, f: Callable[..., object], /, *args: Any) -> None: ...


class RateLimitedLog(Protocol):
    """Where the log lines a client can trigger at will go: at most one per kind per interval
    (:class:`catalyzer.ops.floodlog.FloodLog`)."""

    def emit(
        self, kind: str, logger: Logger, level: LogLevel, format: str, **fields: Any
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ResponseServices:
    """What every response of one process shares: made once per process, passed to each one.

    ``threadpool`` and ``call_from_thread`` are set together, in thread-pool mode only.
    ``handoff`` is the one condition every threaded response of the process waits on and
    notifies (see :class:`~catalyzer.wsgi.response.ThreadedWSGIResponse`)."""

    app: WSGIApp
    clock: interfaces.IReactorTime
    write_timeout: float
    date: Callable[[], str]
    date_line: Callable[[], bytes]
    scoreboard: AppScoreboard | None = None
    threadpool: CallInThread | None = None
    call_from_thread: Callable[..., None] | None = None
    flood: RateLimitedLog | None = None
    metrics: ResponseCounter | None = None
    handoff: threading.Condition = field(default_factory=threading.Condition)


class ResponseOutcome(NamedTuple):
    """What the completion callback is told, once, when a response has ended in any way."""

    status: int
    bytes_sent: int
    keep_alive: bool  # the connection may carry the next request
    started: float  # clock time when the response began
    counted: bool = False  # already given to ResponseServices.metrics, before its last bytes


OnDone = Callable[[ResponseOutcome], None]


class Responder(Protocol):
    """What answers one request on the HTTP face: :class:`~catalyzer.wsgi.response.WSGIResponse`
    (the app in this process), or split mode's front response (the app in a handler process,
    :mod:`catalyzer.split.front`). It writes to its :class:`ResponseSink` and reports its end
    once through ``on_done``; the connection only starts it, aborts it and reads these fields for
    the access log and the state dump."""

    request: Request
    environ: Environ
    started: float

    def run(self) -> None: ...

    def abort(self, why: str) -> None: ...


ResponderFactory = Callable[[ResponseServices, ResponseSink, Request, Environ, OnDone], Responder]
"""How a connection makes the :class:`Responder` of each request."""
