"""What every connection a face accepts shares, the HTTP face (:mod:`catalyzer.server.channel`)
and the gateway faces (:mod:`catalyzer.server.gateway`) alike: a state that changes only through
:meth:`ServerConnection._enter`, which checks the transition table in
:mod:`catalyzer.server.connstate`; the waits the connection arms, each made on first use; and
closing: flush what was written, then abort a peer that does not read it within
``write-timeout``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import interfaces
from twisted.internet.address import IPv4Address, IPv6Address

from catalyzer.ops import trace
from catalyzer.server import twistedprivate
from catalyzer.server.connstate import ConnState, check_transition
from catalyzer.server.timer import Timer, started
from catalyzer.server.transportsink import TransportSink
from catalyzer.wsgi.environ import ConnectionInfo

if TYPE_CHECKING:
    from catalyzer.http.progress import ProgressTracker
    from catalyzer.http.reader import Request
    from catalyzer.server.channel import ServerState
    from catalyzer.wsgi.sink import Responder, ResponseOutcome
    from catalyzer.wsgi.types import Environ

__all__ = ["ServerConnection", "connection_info", "header_wait", "retire"]

# Answers an upload-progress query with its entry.
SendProgress = Callable[[dict[str, object]], None]

# A keep-alive wait this close to its end when its timer fires counts as ended (the clock's
# rounding is not a reason to arm a timer again for a microsecond).
_IDLE_SLACK = 0.001

_OPEN = ConnState.OPEN
_AWAITING = ConnState.AWAITING
_RESPONDING = ConnState.RESPONDING
_CLOSING = ConnState.CLOSING
_CLOSED = ConnState.CLOSED


class ServerConnection(TransportSink):
    """The base of a face's protocol: its state, its waits and its closing. A subclass reads
    requests and answers them, and says what a peer that stopped reading is (``peer``)."""

    # Who is at the other end, in "... did not read" when a closing connection is aborted.
    peer: ClassVar[str] = "client"

    def __init__(self, server: ServerState) -> None:
        self.server = server
        self.state = _OPEN
        self.info: ConnectionInfo | None = None
        self.requests = 0
        self.opened = 0.0
        # When the last response ended: a prefork worker's watchdog thread reads it to tell the
        # connection the app is serving from the others (catalyzer.prefork.handoff.movable).
        self.ended_at = 0.0
        self.response: Responder | None = None
        self._socket = None
        self._environ_base: dict[str, Any] | None = None  # ServerState.environ_base, once
        self._in_next = False
        self._reading_paused = False
        self._got_data = False
        # Each wait is made when first armed (timer.started): most connections arm few of them.
        self._header_timer: Timer | None = None
        self._body_timer: Timer | None = None
        self._body_mark = 0
        self._idle_timer: Timer | None = None
        self._linger_timer: Timer | None = None
        self._drain_timer: Timer | None = None

    def _enter(self, new: ConnState) -> None:
        # check_transition inlined: this runs twice a request.
        if new not in self.state.successors:  # type: ignore[attr-defined]
            check_transition(self.state, new)  # raises IllegalTransition
        self.state = new

    @property
    def closing(self) -> bool:
        """No further request is taken: the connection is closing or closed."""
        return self.state is _CLOSING or self.state is _CLOSED

    @property
    def disconnected(self) -> bool:
        return self.state is _CLOSED

    def abort(self, why: str) -> None:
        raise NotImplementedError

    def _next(self) -> None:
        """Act on what the parser has ready (the subclass's request loop)."""
        raise NotImplementedError

    def _ended(self, outcome: ResponseOutcome, request: Request, environ: Environ) -> None:
        """A response ended (sent, failed or abandoned): counted, cleared, the state back to OPEN,
        the server told, the request's body closed and the exchange logged.

        Counted first: the last bytes may have reached the peer already (``write`` sends
        straight away), and until then a SIGKILL would lose the response's counts."""
        server = self.server
        now = server.clock.seconds()
        if not outcome.counted:  # the response counts itself before its last write when it can
            server.metrics.observe(
                outcome.status, now - outcome.started, outcome.bytes_sent, app=True
            )
        # Set before the response is cleared: another thread (a prefork worker's watchdog,
        # catalyzer.prefork.handoff.movable) that sees no response sees this too.
        self.ended_at = now
        self.response = None
        if self.state is _RESPONDING:
            self._enter(_OPEN)
        if trace.ENABLED:
            trace.emit(
                "request-end",
                method=request.method,
                status=outcome.status,
                bytes=outcome.bytes_sent,
                keep_alive=outcome.keep_alive,
            )
        if server.on_response is not None:
            server.on_response()
        if request.body is not None:
            request.body.close()
        access_log = server.access_log
        if access_log is not None:
            access_log.log_exchange(
                request.method, environ, outcome.status, outcome.bytes_sent, outcome.started, now
            )

    def _answer_progress(
        self, upload_id: str | None, progress: ProgressTracker, send: SendProgress
    ) -> None:
        """An upload-progress query: the entry from this process's registry, or (prefork) from
        the master, while the connection waits (AWAITING); ``send`` answers it."""
        source = self.server.progress_source
        if upload_id is None:
            send({"state": "error", "received": 0, "size": None, "status": 400})
        elif source is None:
            send(progress.registry.get(upload_id, self.server.clock.seconds()))
        else:
            self._enter(_AWAITING)
            d = source(upload_id)
            d.addErrback(lambda f: {"state": "error", "received": 0, "size": None, "status": 503})
            d.addCallback(self._progress_arrived, send)

    def _progress_arrived(self, entry: dict[str, object], send: SendProgress) -> None:
        if self.state is _CLOSED:
            return
        if self.state is _AWAITING:
            self._enter(_OPEN)
        send(entry)
        if self.state is _OPEN:
            self._next()

    def _pause_reading(self) -> None:
        transport: Any = self.transport
        if not self._reading_paused and self.state is not _CLOSED and not transport.disconnecting:
            self._reading_paused = True
            transport.pauseProducing()

    def _close(self) -> None:
        """Close after what has been written is flushed; abort if the peer won't take it."""
        if self.state is _CLOSED:
            return
        if self.state is not _CLOSING:
            self._enter(_CLOSING)
        for timer in (self._header_timer, self._body_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        transport: Any = self.transport
        if transport.disconnecting:  # already aborted
            return
        if self.close_now():  # nothing to flush: closed, connectionLost has run
            return
        self._pause_reading()
        transport.loseConnection()
        self._linger_timer = started(
            self._linger_timer,
            self.server.clock,
            self._linger_expired,
            self.server.config.write_timeout,
        )

    def _busy(self) -> bool:
        """A request is under way: arriving, queued, waiting for its answer (AWAITING) or being
        answered."""
        raise NotImplementedError

    def _arm_idle(self) -> None:
        # The wait is armed once and never pushed back: when it fires, _idle looks at when the
        # last response ended (ended_at) and waits out the rest. Moving a timer after every
        # response cost a reactor call per request.
        timer = self._idle_timer
        if self.requests and (timer is None or timer.pending is None):
            self._idle_timer = started(
                timer, self.server.clock, self._idle, self.server.config.keepalive_timeout
            )

    def _quiet(self) -> bool:
        """Nothing under way and nothing unread: a request in the socket is read this turn, and
        closing before would make the kernel reset it."""
        return not self._busy() and not self.unread_bytes()

    def _idle(self) -> None:
        if not self._quiet():
            return  # _arm_idle starts a new wait after its response
        rest = self.ended_at + self.server.config.keepalive_timeout - self.server.clock.seconds()
        if rest > _IDLE_SLACK and self._idle_timer is not None:
            self._idle_timer.start(rest)
        else:
            self._close()

    def _drain_idle(self) -> None:
        """A draining connection's grace is over: closed unless a request came meanwhile or is
        in the socket, read this turn (its response then closes the connection)."""
        if self._quiet():
            self._close()

    def _linger_expired(self) -> None:
        self.abort(f"{self.peer} did not read")

    def _lost(self) -> tuple[Timer | None, ...]:
        """``connectionLost`` begins: the state is CLOSED and every wait is cancelled; the waits
        are returned for :func:`retire` once the subclass has let go of what it held."""
        self._enter(_CLOSED)
        timers = (
            self._header_timer,
            self._body_timer,
            self._idle_timer,
            self._linger_timer,
            self._drain_timer,
        )
        for timer in timers:
            if timer is not None:
                timer.cancel()
        return timers


def retire(timers: tuple[Timer | None, ...]) -> None:
    """The connection is gone: its waits drop their callbacks (bound methods of the connection),
    so no reference cycle is left through it and it is freed at once, not by the garbage
    collector (~30 objects a connection, 9% of a Connection: close request's instructions)."""
    for timer in timers:
        if timer is not None:
            timer.retire()


def header_wait(timer: Timer | None, server: ServerState, timeout: Callable[[], object]) -> Timer:
    """A connection's wait for a request head, made on first use and armed unless it is armed
    already: the HTTP and gateway faces wait the same way."""
    return started(timer, server.clock, timeout, server.config.header_timeout)


def connection_info(transport: Any) -> ConnectionInfo:
    """The addresses of ``transport``'s connection as the environ gives them to the app."""
    addresses = twistedprivate.tcp4_addresses(transport)
    if addresses is not None:  # the common case, without two address objects
        (host_name, host_port), (peer_name, peer_port) = addresses
        return ConnectionInfo(host_name, str(host_port), peer_name, str(peer_port), "http")
    host = transport.getHost()
    peer = transport.getPeer()
    scheme = "https" if interfaces.ISSLTransport.providedBy(transport) else "http"
    if isinstance(host, IPv4Address | IPv6Address):
        server_name, server_port = host.host, str(host.port)
    else:
        server_name, server_port = "localhost", ""
    if isinstance(peer, IPv4Address | IPv6Address):
        remote_addr, remote_port = peer.host, str(peer.port)
    else:
        remote_addr, remote_port = "", ""
    return ConnectionInfo(server_name, server_port, remote_addr, remote_port, scheme)
