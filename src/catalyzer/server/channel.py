"""The Twisted side of an HTTP connection: bytes from the transport into a :class:`RequestReader`,
complete requests to a :class:`~catalyzer.wsgi.sink.Responder` (a
:class:`~catalyzer.wsgi.response.WSGIResponse` unless split mode's front gives another), one at
a time and in order, and every wait bounded by a named timer. The connection's states and their transitions are in
:mod:`catalyzer.server.connstate`.

Timers (each one :class:`~catalyzer.server.timer.Timer` armed on entering a state and cancelled on leaving it):

- ``header``: a request's line and headers must arrive within ``header-timeout``, counted from
  the connection's start for the first request and from the first byte for later ones -> 408.
- ``body``: every ``body-timeout`` window of a body must bring ``body-min-rate`` bytes/s -> 408.
- ``idle``: a keep-alive connection with nothing to do closes after ``keepalive-timeout``.
- ``linger``: a connection we are closing that does not drain its output within
  ``write-timeout`` is aborted.
- ``drain``: on a graceful stop, a just-idle keep-alive connection's grace (DRAIN_IDLE_GRACE).
- the response's own ``stall`` timer (``write-timeout``) lives in :mod:`catalyzer.wsgi.response`.
"""

from __future__ import annotations

import functools
import io
import json
import socket
import typing
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from twisted.internet import interfaces, tcp
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from catalyzer.http.framing import simple_response
from catalyzer.http.progress import ProgressRegistry, ProgressTracker, upload_id_from
from catalyzer.http.reader import SEND_CONTINUE, Limits, ProtocolError, Request, RequestReader
from catalyzer.ops import trace
from catalyzer.ops.accesslog import FileAccessLog
from catalyzer.ops.floodlog import FloodLog
from catalyzer.ops.metrics import RequestMetrics
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server import twistedprivate
from catalyzer.server.acceptguard import AcceptGuard
from catalyzer.server.connection import ServerConnection, connection_info, header_wait, retire
from catalyzer.server.connstate import ConnState
from catalyzer.server.holding import HeadWatch
from catalyzer.server.roommaker import RoomMaker, Sheddable, log_shed
from catalyzer.server.shedding import Candidate, Standing
from catalyzer.server.startchecks import StartError
from catalyzer.server.timer import started
from catalyzer.settings import Config
from catalyzer.wsgi.environ import BadTarget, ConnectionInfo, base_environ, build_environ
from catalyzer.wsgi.filewrapper import FileWrapper
from catalyzer.wsgi.forwarded import PROXY_KEYS, TrustedProxies, apply_forwarded
from catalyzer.wsgi.response import response_class
from catalyzer.wsgi.sink import Responder, ResponderFactory, ResponseOutcome, ResponseServices
from catalyzer.wsgi.threads import AppThreads, ThreadStartError
from catalyzer.wsgi.types import WSGIApp

__all__ = [
    "BodyReader",
    "Connection",
    "HTTPChannel",
    "HTTPFactory",
    "ServerFactory",
    "ServerState",
    "read_target",
]

log = Logger(namespace="catalyzer.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Bytes per read of a plain connection (Twisted's own size), and while a body is arriving.
_READ = 65536
_BODY_READ = 1024 * 1024
# On drain, a keep-alive connection idle for less than this may have a request on its way: it is
# given this long to send one (answered with Connection: close) before it is closed. Clients
# that send on a just-closed idle connection see an error (wrk does); this makes it rare.
DRAIN_IDLE_GRACE = 1.0
_OPTIONS_ALLOW = "Allow: OPTIONS, GET, HEAD, POST, PUT, PATCH, DELETE\r\n"


class WSGIErrors(io.StringIO):
    """``wsgi.errors``: each line the application writes becomes one log event."""

    _log = Logger(namespace="catalyzer.app")

    def __init__(self) -> None:
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.warn("{line}", line=line)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            line, self._partial = self._partial, ""
            self._log.warn("{line}", line=line)


class Connection(typing.Protocol):
    """A client connection as :class:`ServerState` counts, drains and lists it: the HTTP face's
    :class:`HTTPChannel` and the gateway faces' channels (:mod:`catalyzer.server.gateway`)."""

    info: ConnectionInfo | None
    opened: float
    requests: int

    @property
    def response(self) -> Responder | None:
        """What is answering the connection's current request, if any."""
        ...

    @property
    def receiving(self) -> bool:
        """A request is arriving."""
        ...

    def drain(self) -> None: ...

    def abort(self, why: str) -> None: ...

    def shedding_candidate(self) -> Candidate[Sheddable] | None:
        """How far this connection is from an answer, if it may be shed at max-connections."""
        ...


class ServerState:
    """Everything the connections of one process share: the app, settings, clock, open
    connections and the listening ports (paused while at ``max-connections``).

    Its collaborators are all given here, never assigned later: ``scoreboard`` (prefork workers:
    where the master watches for requests stuck in the app), ``on_response`` (called after each
    response; prefork workers count towards max-requests), ``progress_source`` (prefork workers:
    upload progress polls are answered from the master's view, a Deferred entry),
    ``share_progress`` (report this process's uploads for the master to collect) and
    ``responder`` (what answers each request of the HTTP face instead of the app in this
    process: split mode's front)."""

    def __init__(
        self,
        app: WSGIApp,
        config: Config,
        clock: interfaces.IReactorTime,
        *,
        call_from_thread: Callable[..., None] | None = None,
        threadpool: AppThreads | None = None,
        access_log: FileAccessLog | None = None,
        multiprocess: bool = False,
        scoreboard: Scoreboard | None = None,
        on_response: Callable[[], None] | None = None,
        progress_source: Callable[[str], Deferred[dict[str, object]]] | None = None,
        share_progress: bool = False,
        responder: ResponderFactory | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.call_from_thread = call_from_thread
        self.threadpool = threadpool
        self.access_log = access_log
        self.multiprocess = multiprocess
        self.limits = Limits(
            max_request_line=config.max_request_line,
            max_headers=config.max_headers,
            max_header_bytes=config.max_header_bytes,
            max_body=config.max_body,
            max_chunk_line=config.max_chunk_line,
            body_spool_threshold=config.body_spool_threshold,
            spool_dir=config.spool_dir or None,
        )
        self.errors = WSGIErrors()
        # Every plain connection of this process reads into this one buffer (the reactor thread
        # handles one read at a time, and the reader copies what it keeps): no new bytes object
        # per read. Its pages are touched only as far as reads fill it.
        self.read_buffer = memoryview(bytearray(_BODY_READ))
        self.head_buffer = self.read_buffer[:_READ]  # the reads between bodies
        self.trusted_proxies = TrustedProxies.parse(config.forwarded_allow_ips)
        self.progress: ProgressTracker | None = None
        if config.progress_path:
            registry = ProgressRegistry(config.progress_ttl, config.progress_entries)
            self.progress = ProgressTracker(registry, clock, share=share_progress)
        self.progress_path = config.progress_path.encode("latin-1")
        self.progress_source = progress_source
        self.scoreboard = scoreboard
        self.on_response = on_response
        self.channels: set[Connection] = set()
        self.ports: list[Any] = []
        # Lines a client can cause at will (bad requests, timeouts, aborts, accept errors) are
        # logged once per kind per interval, with a count.
        self.flood = FloodLog(clock)
        self.accept_guards: list[AcceptGuard] = []
        # At max-connections: which connections to shed, when to accept again.
        self.room = RoomMaker(
            self.channels,
            config.max_connections,
            clock,
            self.flood,
            accepting=lambda: self.accepting,
            stopping=lambda: self.draining,
            set_accepting=self._set_accepting,
        )
        self.accepting = True
        # A --threads prefork worker whose every app thread is stuck in a long call stops
        # accepting too (catalyzer.prefork.poolrescue), whatever max-connections says.
        self.pool_stuck = False
        self.draining = False
        self.heads: HeadWatch | None = None  # connections held at the limit, once there are any
        # A prefork worker counts in its scoreboard, where the master reads the counters even
        # after this process is gone (see catalyzer.ops.metrics).
        self.metrics = RequestMetrics(scoreboard.counters() if scoreboard is not None else None)
        self._drained: list[Deferred[None]] = []
        self._date_second = -1
        self._date = ""
        self._date_line = b""
        if threadpool is not None and call_from_thread is None:
            raise ValueError("a threadpool needs call_from_thread")
        # What each response is handed: made once, shared by every request of the process.
        self.response_services = ResponseServices(
            app=app,
            clock=clock,
            write_timeout=config.write_timeout,
            date=self.date,
            date_line=self.date_line,
            scoreboard=scoreboard,
            threadpool=threadpool,
            call_from_thread=call_from_thread,
            flood=self.flood,
            metrics=self.metrics,
        )
        self.response_class = response_class(self.response_services)
        self.responder: ResponderFactory = responder or self.response_class

    @classmethod
    def from_config(
        cls,
        app: WSGIApp,
        config: Config,
        reactor: Any,
        *,
        multiprocess: bool = False,
        scoreboard: Scoreboard | None = None,
        on_response: Callable[[], None] | None = None,
        progress_source: Callable[[str], Deferred[dict[str, object]]] | None = None,
        share_progress: bool = False,
        responder: ResponderFactory | None = None,
    ) -> ServerState:
        """The state of a process that serves ``app``: its access log opened (OSError if it
        cannot be) and, with ``threads``, its thread pool made."""
        threadpool = None
        call_from_thread = None
        if config.threads:
            threadpool = AppThreads(config.threads, reactor.callFromThread)
            call_from_thread = threadpool.call_from_thread
        return cls(
            app,
            config,
            reactor,
            call_from_thread=call_from_thread,
            threadpool=threadpool,
            access_log=FileAccessLog.from_setting(config.access_log),
            multiprocess=multiprocess,
            scoreboard=scoreboard,
            on_response=on_response,
            progress_source=progress_source,
            share_progress=share_progress,
            responder=responder,
        )

    def date(self) -> str:
        now = int(self.clock.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True)
            self._date_line = f"Date: {self._date}\r\n".encode("ascii")
        return self._date

    def date_line(self) -> bytes:
        """``Date: ...\r\n``, computed once a second."""
        if int(self.clock.seconds()) != self._date_second:
            self.date()
        return self._date_line

    # -- connection accounting

    def connection_made(self, channel: Connection) -> None:
        self.channels.add(channel)
        if self.room.open_count() >= self.config.max_connections:
            self.room.make_room()

    def connection_lost(self, channel: Connection) -> None:
        self.channels.discard(channel)
        self.room.forget(channel)
        if (
            not self.accepting
            and not self.draining
            and self.room.open_count() < self.config.max_connections
        ):
            self._set_accepting(True)
        if not self.channels and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def listening_on(self, ports: list[Any]) -> None:
        """The ports whose accepting ``max-connections`` toggles (none once they are closed)."""
        self.ports = list(ports)
        for port in self.ports:
            twistedprivate.accept_lightly(port)
        for guard in self.accept_guards:
            guard.cancel()
        self.accept_guards = [
            AcceptGuard(port, self.flood, self.clock, lambda: self.takes_connections)
            for port in self.ports
            if twistedprivate.has_accept_log(port)
        ]

    @property
    def takes_connections(self) -> bool:
        return self.accepting and not self.pool_stuck

    def _set_accepting(self, on: bool) -> None:
        self.accepting = on
        self._toggle_ports()

    def set_pool_stuck(self, stuck: bool) -> None:
        """Stop (True) or go back to (False) accepting while every app thread is stuck: the
        shared accept queue then gives new connections to the other workers."""
        self.pool_stuck = stuck
        self._toggle_ports()

    def _toggle_ports(self) -> None:
        on = self.takes_connections
        for port in self.ports:
            # tcp and unix ports are FileDescriptors: not reading means not calling accept().
            toggle = getattr(port, "startReading" if on else "stopReading", None)
            if toggle is not None:
                toggle()

    def start_threads(self, reactor: Any, command: str = "catalyzer") -> None:
        """Start the ``--threads`` pool, if there is one. Where ``reactor`` can say when it is
        about to wait for events, calls queued while it runs wake a thread only then. A pool the
        system refuses is a :class:`StartError` whose line begins with ``command``."""
        pool = self.threadpool
        if pool is None:
            return
        try:
            pool.start()
        except ThreadStartError as e:
            raise StartError(f"{command}: cannot start: {e}") from None
        pool.woken_at_poll = twistedprivate.before_each_poll(reactor, pool.poll_begins)

    # -- graceful stop

    def stop_keep_alive(self) -> None:
        """The process is stopping: from now on every response whose head is not sent yet says
        ``Connection: close`` and ends its connection. Called as soon as the stop is known,
        before the listeners are closed and :meth:`drain` runs."""
        self.draining = True

    def drain(self) -> Deferred[None]:
        """Close idle connections now and the others after the response in hand. Fires when no
        connection is left; the caller bounds the wait."""
        self.draining = True
        d: Deferred[None] = Deferred()
        if not self.channels:
            d.callback(None)
            return d
        self._drained.append(d)
        for channel in list(self.channels):
            channel.drain()
        return d

    def environ_base(self, info: ConnectionInfo) -> dict[str, Any]:
        """The environ entries every request on a connection shares (a connection keeps it)."""
        return base_environ(
            info,
            script_name=self.config.script_name,
            errors=self.errors,
            multithread=self.threadpool is not None,
            multiprocess=self.multiprocess,
            file_wrapper=FileWrapper,
        )

    @property
    def requests_served(self) -> int:
        """Requests the app answered in this process (what ``max-requests`` counts)."""
        return self.metrics.requests

    def status(self) -> dict[str, Any]:
        """This process's numbers (the ``--stats`` status, and a prefork worker's heartbeat)."""
        return {
            "requests": self.metrics.requests,
            "connections": len(self.channels),
            "in_flight": sum(1 for c in self.channels if c.response is not None),
            "metrics": self.metrics.snapshot(),
        }

    def abort_all(self) -> None:
        for channel in list(self.channels):
            channel.abort("die-timeout reached")


# How the flood log counts the errors a client can cause (see ops.floodlog).
# A body the spool directory cannot hold is the operator's problem (a full disk): an error.
_ERROR_KINDS = {
    408: ("timeouts", LogLevel.info),
    503: ("spool failures", LogLevel.error),
    507: ("spool failures", LogLevel.error),
}

_OPEN = ConnState.OPEN
_RESPONDING = ConnState.RESPONDING
_AWAITING = ConnState.AWAITING
_CLOSING = ConnState.CLOSING
_CLOSED = ConnState.CLOSED


@implementer(interfaces.IHalfCloseableProtocol)
class HTTPChannel(ServerConnection):
    """One client connection: the :class:`~catalyzer.wsgi.sink.ResponseSink` of its responses.
    Its state, waits and closing are :class:`~catalyzer.server.connection.ServerConnection`'s."""

    def __init__(self, server: ServerState) -> None:
        ServerConnection.__init__(self, server)  # not super(): a lookup per connection
        self.reader = RequestReader(server.limits, server.progress)
        self._proxied = False

    @property
    def receiving(self) -> bool:
        return self.reader.in_headers or self.reader.in_body

    @property
    def between_requests(self) -> bool:
        """Idle between requests with nothing read: no response running, nothing of the next
        request parsed or queued, reading not paused (the next request, if any, is still in the
        kernel's buffer)."""
        return (
            self.state is _OPEN
            and self.response is None
            and not self._reading_paused
            and self.reader.between_requests
        )

    # -- Protocol

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.opened = self.server.clock.seconds()
        self.info = connection_info(transport)
        # Behind a PROXY protocol wrapper the addresses are known once the header is in (the
        # first dataReceived); the socket is the wrapped transport's.
        self._proxied = isinstance(transport, twistedprivate.HAProxyProtocolWrapper)
        inner = transport.transport if self._proxied else transport
        direct = False
        if isinstance(inner, tcp.Server) and not interfaces.ISSLTransport.providedBy(inner):
            self._socket = inner.socket
            if not self._proxied:
                twistedprivate.read_into_target(
                    inner,
                    functools.partial(read_target, self.server, self.reader),
                    self._read_done,
                    self._read_piece,
                )
                direct = True
        if trace.ENABLED:
            trace.emit("accept", peer=f"{self.info.remote_addr}:{self.info.remote_port}")
        self.server.connection_made(self)
        if direct and self.state is _OPEN:
            # The request is often in already: read it in this turn, not the next.
            twistedprivate.read_waiting(transport)
            if not (self.closing or self._reading_paused):  # a response may be running
                transport.startReading()  # HTTPFactory.starts_reading: not registered yet
        if self.state is _OPEN and not self._got_data:
            self._header_timer = header_wait(self._header_timer, self.server, self._header_timeout)

    def _read_done(self, size: int) -> None:
        self._got_data = True
        self.server.metrics.received(size)
        self.reader.receive_data(self.server.read_buffer[:size])
        self._after_read()

    def _read_piece(self, data: bytes) -> None:
        """A read for a body kept in memory (``body_room``): the body keeps it as it is."""
        self._got_data = True
        self.server.metrics.received(len(data))
        self.reader.received_piece(data)
        self._after_read()

    def dataReceived(self, data: bytes) -> None:
        if not self._got_data:
            self._got_data = True
            if self._proxied:
                self.info = connection_info(self.transport)
        self.server.metrics.received(len(data))
        self.reader.receive_data(data)
        self._after_read()

    def readConnectionLost(self) -> None:
        # The client half-closed: answer what it sent, then close.
        self.reader.receive_eof()
        self._after_read()

    def writeConnectionLost(self) -> None:
        self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        timers = self._lost()
        if self.response is not None:
            self.response.abort("client disconnected before the response was complete")
        # close(), not receive_eof(): with retire() below, no reference cycle is left.
        self.reader.close()
        while (event := self.reader.next_event()) is not None:
            if isinstance(event, Request) and event.body is not None:
                event.body.close()
        self.server.connection_lost(self)
        retire(timers)
        if self._socket is not None and not self._proxied:
            twistedprivate.forget_read_into(self.transport)

    # -- ResponseSink (the rest is TransportSink's)

    @property
    def keep_alive_allowed(self) -> bool:
        state = self.state
        return (
            state is not _CLOSING
            and state is not _CLOSED
            and not self.server.draining
            and (self.server.config.keepalive_timeout > 0)
        )

    # -- reading side

    def _after_read(self) -> None:
        # Twice per request: the timers are usually not made or not armed: test before calling.
        reader = self.reader
        if reader.in_headers:
            self._header_timer = header_wait(self._header_timer, self.server, self._header_timeout)
        elif self._got_data and (timer := self._header_timer) is not None and timer.pending:
            timer.cancel()
        timer = self._body_timer
        if reader.in_body:
            if timer is None or timer.pending is None:
                self._body_mark = 0
                self._body_timer = started(
                    timer, self.server.clock, self._body_check, self.server.config.body_timeout
                )
        elif timer is not None and timer.pending is not None:
            timer.cancel()
        if self.response is None:
            self._next()
        elif reader.queued >= self.server.config.max_pipeline or reader.stopped:
            self._pause_reading()

    def _header_timeout(self) -> None:
        if self.reader.in_headers:
            self.reader.fail(408, "request headers not received in time")
            self._after_read()
        elif not self._got_data:
            self._close()  # connected and never sent a byte

    def _body_check(self) -> None:
        request = self.reader.current
        if request is None or not self.reader.in_body:
            return
        received = request.body_length - self._body_mark
        window = self.server.config.body_timeout
        wanted = max(1, int(self.server.config.body_min_rate * window))
        # While an earlier response is still going out, a client waiting for "100 Continue"
        # is not late; judge the rate only when this request is the one being served.
        if received < wanted and self.response is None:
            self.reader.fail(408, f"request body slower than {wanted} bytes in {window:g}s")
            self._after_read()
            return
        self._body_mark = request.body_length
        self._body_timer = started(self._body_timer, self.server.clock, self._body_check, window)

    def _resume_reading(self) -> None:
        if self._reading_paused and self.state is not _CLOSED:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # -- acting on events, strictly in order

    def _next(self) -> None:
        if self._in_next:
            return
        self._in_next = True
        try:
            while self.state is _OPEN:
                event = self.reader.next_event()
                if event is None:
                    if self.reader.stopped:
                        self._close()
                    else:
                        self._resume_reading()
                        if not (self.reader.in_headers or self.reader.in_body):
                            self._arm_idle()
                    return
                if event is SEND_CONTINUE:
                    self.write(_CONTINUE)
                elif isinstance(event, ProtocolError):
                    self._protocol_error(event)
                elif isinstance(event, Request):
                    self._start(event)
        finally:
            self._in_next = False

    def _start(self, request: Request) -> None:
        self.requests += 1
        server = self.server
        if server.progress is not None and (
            request.target.partition(b"?")[0] == server.progress_path
        ):
            self._answer_progress(
                upload_id_from(request.target, request.headers),
                server.progress,
                functools.partial(self._send_progress, request),
            )
            return
        if request.target == b"*":
            if request.method == "OPTIONS":
                self._respond_directly(request, 200, "OK", b"", _OPTIONS_ALLOW)
            else:
                self._protocol_error(ProtocolError(400, f"'*' target with {request.method}"))
            return
        assert self.info is not None
        try:
            base = self._environ_base
            if base is None:  # built at the first request: the PROXY header has been read
                base = self._environ_base = server.environ_base(self.info)
            environ = build_environ(request, base)
        except BadTarget as e:
            self._protocol_error(ProtocolError(400, str(e)))
            return
        if not environ.keys().isdisjoint(PROXY_KEYS):  # apply_forwarded's own fast path, inlined
            apply_forwarded(environ, server.trusted_proxies, _proxy_header_note)
        if trace.ENABLED:
            trace.emit("request-start", method=request.method, target=request.target)
        self._enter(_RESPONDING)
        response = self.response = server.responder(
            server.response_services, self, request, environ, self._response_done
        )
        response.run()

    def _send_progress(self, request: Request, entry: dict[str, object]) -> None:
        self._respond_directly(
            request,
            200,
            "OK",
            json.dumps(entry).encode(),
            "Cache-Control: no-store\r\n",
            content_type="application/json",
        )

    def _respond_directly(
        self,
        request: Request,
        status: int,
        reason: str,
        body: bytes,
        extra: str = "",
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        keep_alive = request.keep_alive and self.keep_alive_allowed
        self.server.metrics.observe(status, 0.0, len(body))  # before it can reach the client
        self.write(
            simple_response(
                status,
                reason,
                self.server.date(),
                body,
                close=not keep_alive,
                extra=extra,
                content_type=content_type,
                head_only=request.method == "HEAD",
            )
        )
        if not keep_alive:
            self._close()

    def _protocol_error(self, error: ProtocolError) -> None:
        peer = self.info.remote_addr if self.info else "?"
        kind, level = _ERROR_KINDS.get(error.status, ("bad requests", LogLevel.info))
        self.server.flood.emit(
            kind,
            log,
            level,
            "{status} to {peer}: {detail}",
            status=error.status,
            peer=peer,
            detail=error.detail,
        )
        body = f"{error.status} {error.reason}\n".encode()
        self.server.metrics.observe(error.status, 0.0, len(body))
        self.write(simple_response(error.status, error.reason, self.server.date(), body))
        self._close()

    def _response_done(self, outcome: ResponseOutcome) -> None:
        """The response's completion callback: it has sent its last byte, failed or been
        abandoned."""
        response = self.response
        assert response is not None
        self._ended(outcome, response.request, response.environ)
        state = self.state
        if state is _CLOSED:
            return
        if state is not _OPEN or not outcome.keep_alive:
            self._close()
            return
        self._next()
        if self.server.draining and self.response is None and self.state is _OPEN:
            # Its head promised keep-alive (the drain began while it was being sent: a TERM is
            # seen inside its signal handler, between any two lines): the client may be sending
            # its next request already. Closing now would cut that request; drain it as an
            # idle connection instead (the next request, if any comes, is the last).
            self.drain()

    # -- keep-alive, closing, draining

    def _busy(self) -> bool:
        reader = self.reader
        return (
            self.response is not None
            or reader.in_headers
            or reader.in_body
            or reader.queued > 0
            or self.state is _AWAITING  # an upload-progress entry on its way from the master
        )

    def shedding_candidate(self) -> Candidate[Sheddable] | None:
        """How far this connection is from an answer, if it may be shed to make room."""
        reader = self.reader
        if self.state is not _OPEN or self.response is not None:
            return None
        if reader.in_body or reader.queued:
            return None
        if not self._got_data:
            return Candidate(self, Standing.SILENT, self.opened)
        if reader.in_headers:
            return Candidate(self, Standing.HEADERS, self.ended_at or self.opened)
        return Candidate(self, Standing.IDLE, self.ended_at)

    def shed(self) -> None:
        """Closed to make room at max-connections: a request still arriving is cut (the client
        may have been trying for a while: it is the least advanced), an idle one is closed."""
        if self.state is _CLOSED:
            return
        waiting = not self.requests or self.reader.in_headers
        log_shed(self.server.flood, waiting, self.info.remote_addr if self.info else "?")
        if waiting:
            self._enter(_CLOSING)
            self.transport.abortConnection()  # type: ignore[union-attr]
        else:
            self._close()

    def drain(self) -> None:
        """Server shutdown: finish the request in hand (announcing Connection: close); close an
        idle connection once it has been idle for DRAIN_IDLE_GRACE (a new one: since it was
        opened) and has nothing unread.

        Closing a connection the moment it looks idle races with its client: a request may be in
        the socket's receive buffer, not read yet (a connection accepted just before the drain
        has sent its first request, a keep-alive client its next one), and closing a socket with
        unread bytes makes the kernel answer with a reset, which the client sees as an error."""
        if self._busy():
            return  # keep_alive_allowed is now false: the response closes the connection
        since = self.ended_at if self.requests else self.opened
        idle_for = self.server.clock.seconds() - since
        if idle_for >= DRAIN_IDLE_GRACE and not self.unread_bytes():
            self._close()
        else:
            self._drain_timer = started(
                self._drain_timer,
                self.server.clock,
                self._drain_idle,
                max(0.0, DRAIN_IDLE_GRACE - idle_for),
            )

    def abort(self, why: str) -> None:
        if self.state is not _CLOSED:
            self.server.flood.emit(
                "aborted connections",
                log,
                LogLevel.info,
                "aborting connection from {peer}: {why}",
                peer=self.info.remote_addr if self.info else "?",
                why=why,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]


def _proxy_header_note(text: str) -> None:
    log.debug("{text}", text=text)


def describe_connections(server: ServerState) -> str:
    """A process's own view of its connections, for the state dump and the manhole."""
    now = server.clock.seconds()
    lines = [f"{server.requests_served} requests, {len(server.channels)} connections"]
    for channel in sorted(server.channels, key=lambda c: c.opened):
        info = channel.info
        peer = f"{info.remote_addr}:{info.remote_port}" if info else "?"
        response = channel.response
        if response is not None:
            state = (
                f"responding to {response.request.method} {response.environ['RAW_URI']} "
                f"for {now - response.started:.1f}s"
            )
        elif channel.receiving:
            state = "receiving a request"
        else:
            state = "idle"
        lines.append(
            f"  {peer}: {state}; {channel.requests} requests, open {now - channel.opened:.1f}s"
        )
    return "\n".join(lines)


class BodyReader(typing.Protocol):
    """What :func:`read_target` asks of a connection's parser (the HTTP reader, uwsgi's)."""

    @property
    def in_body(self) -> bool: ...

    @property
    def body_room(self) -> int: ...


def read_target(server: ServerState, parser: BodyReader) -> memoryview | int:
    """Where the next read of a plain connection goes (twistedprivate.read_into_target): while
    a body kept in memory arrives, the number of bytes to ``recv`` for its next piece (the
    parser's ``body_room``: the body keeps the read's ``bytes`` as they are); else the server's
    shared buffer, whose bytes the parser copies if it keeps them: in large reads while a body
    arrives (a chunked or spooled one; fewer wake-ups), 64 KiB otherwise."""
    if not parser.in_body:
        return server.head_buffer
    return parser.body_room or server.read_buffer


class ServerFactory(Factory):
    """What the accept loop (twistedprivate.accept_lightly) asks of every face's factory."""

    noisy = False
    # A plain TCP connection's channel registers its transport for reading itself, once it has
    # read what was there at accept (twistedprivate.accept_lightly, AcceptedServer).
    starts_reading = True

    def __init__(self, server: ServerState) -> None:
        self.server = server

    def paused(self) -> bool:
        """Accepting is paused (max-connections, or every app thread stuck): the accept loop
        stops taking connections."""
        return not self.server.takes_connections


# The protocol named to a TLS client that offers ALPN, as browsers and curl always do. Twisted
# answers every offer from the factory's list and refuses the handshake (a TLS "internal error"
# alert) when the list is empty, so a factory that names nothing serves no browser over TLS.
ALPN_PROTOCOLS = (b"http/1.1",)


@implementer(interfaces.IProtocolNegotiationFactory)
class HTTPFactory(ServerFactory):
    def acceptableProtocols(self) -> list[bytes]:
        return list(ALPN_PROTOCOLS)

    def hold(self, sock: socket.socket, address: Any, port: Any) -> bool:
        """At max-connections, keep a connection whose head has not arrived as a bare socket
        (:mod:`catalyzer.server.holding`); False: serve it now. Asked by the accept loop of a
        plain TCP port (twistedprivate.accept_lightly)."""
        server = self.server
        if server.room.open_count() < server.config.max_connections or server.draining:
            return False
        heads = server.heads
        if heads is None:
            heads = server.heads = HeadWatch(server, port.reactor)
        return heads.hold(sock, address, port)

    def buildProtocol(self, addr: object) -> HTTPChannel:
        channel = HTTPChannel(self.server)
        channel.factory = self
        return channel
