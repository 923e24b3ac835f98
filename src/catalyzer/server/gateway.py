"""The Twisted side of the gateway faces (``--uwsgi``, ``--fastcgi``): bytes from the web server
in front into a sans-I/O parser (:mod:`catalyzer.http.uwsgi`, :mod:`catalyzer.http.fastcgi`), each
complete request to the same :class:`~catalyzer.wsgi.response.WSGIResponse` the HTTP face uses,
written to a :class:`~catalyzer.wsgi.sink.ResponseSink` of the face's own.

The response frames an HTTP/1.0-style response that ends with its connection or record stream
(never chunked). uwsgi carries it as it is (nginx's ``uwsgi_pass`` reads an HTTP status line and
headers, then the body until the connection closes); FastCGI's sink turns the status line into a
CGI ``Status:`` header and wraps everything in ``FCGI_STDOUT`` records.

Timers, as on the HTTP face: the variables must arrive within ``header-timeout`` (counted from
the connection's start for the first request), every ``body-timeout`` window of a body must bring
``body-min-rate`` bytes/s, a kept FastCGI connection with nothing to do closes after
``keepalive-timeout``, and a closing connection that does not drain within ``write-timeout`` is
aborted. A late or malformed peer gets one log line and a closed connection; nothing is answered
to a peer that broke the protocol.
"""

from __future__ import annotations

import functools
import json
import socket
from typing import Any, ClassVar

from twisted.internet import interfaces, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

from catalyzer.http.cgi import CGIRequest, Malformed, Refused
from catalyzer.http.fastcgi import Abort, FastCGIParser, Reply, end_request, stdout_records
from catalyzer.http.framing import simple_response
from catalyzer.http.progress import upload_id_from
from catalyzer.http.reader import STATUS_REASONS
from catalyzer.http.uwsgi import UwsgiParser
from catalyzer.ops import trace
from catalyzer.server import twistedprivate
from catalyzer.server.channel import (
    DRAIN_IDLE_GRACE,
    ServerFactory,
    ServerState,
    _proxy_header_note,
    read_target,
)
from catalyzer.server.connection import ServerConnection, connection_info, header_wait, retire
from catalyzer.server.connstate import ConnState
from catalyzer.server.timer import started
from catalyzer.server.transportsink import send_now
from catalyzer.wsgi.environ import build_cgi_environ
from catalyzer.wsgi.forwarded import apply_forwarded
from catalyzer.wsgi.response import WSGIResponse
from catalyzer.wsgi.sink import ResponseOutcome, ResponseSink

__all__ = [
    "FastCGIChannel",
    "FastCGIStdout",
    "GatewayChannel",
    "GatewayFactory",
    "UwsgiChannel",
]

log = Logger(namespace="catalyzer.gateway")

_OPEN = ConnState.OPEN
_RESPONDING = ConnState.RESPONDING
_AWAITING = ConnState.AWAITING
_CLOSED = ConnState.CLOSED


class GatewayChannel(ServerConnection):
    """One connection from the web server: one request at a time, each answered through the sink
    :meth:`_sink_for` makes. Subclasses give the parser, the sink and what ends a request."""

    face: ClassVar[str] = "gateway"
    peer: ClassVar[str] = "web server"
    # Whether a plain TCP connection reads into the server's shared buffer (the parser must
    # take memoryviews and keep none) rather than Twisted's new bytes per read.
    reads_into_buffer: ClassVar[bool] = False

    def __init__(self, server: ServerState) -> None:
        ServerConnection.__init__(self, server)  # not super(): a lookup per connection
        self.parser: Any = self._new_parser()
        self.response: WSGIResponse | None = None

    # -- for subclasses

    def _new_parser(self) -> Any:
        raise NotImplementedError

    def _sink_for(self, request_id: int) -> ResponseSink:
        raise NotImplementedError

    def _request_over(self, request_id: int, keep_conn: bool, ok: bool) -> None:
        """The response to ``request_id`` is complete (``ok``) or was cut: end it on the wire and
        close the connection or wait for the next request."""
        raise NotImplementedError

    def _other_event(self, event: object) -> None:
        raise NotImplementedError

    # -- state

    @property
    def receiving(self) -> bool:
        """A request is arriving (for the connection list in the state dump)."""
        return bool(self.parser.in_head or self.parser.in_body)

    # -- Protocol

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.opened = self.server.clock.seconds()
        self.info = connection_info(transport)
        if isinstance(transport, tcp.Server) and not interfaces.ISSLTransport.providedBy(transport):
            self._socket = transport.socket
            self._prepare_socket()
            if self.reads_into_buffer:
                target = functools.partial(read_target, self.server, self.parser)
                twistedprivate.read_into_target(transport, target, self._read, self._read_piece)
        self.server.connection_made(self)
        if self._socket is not None and self.state is _OPEN:
            # The web server writes its request as soon as it is connected: often it is in
            # already, and reading it in this turn saves a wake-up (one per request behind
            # nginx's uwsgi_pass).
            twistedprivate.read_waiting(transport)
            if not (self.closing or self._reading_paused):  # a response may be running
                transport.startReading()  # GatewayFactory.starts_reading: not registered yet
        if self.state is _OPEN and not self._got_data:
            self._header_timer = header_wait(self._header_timer, self.server, self._header_timeout)

    def _prepare_socket(self) -> None:
        """A plain TCP connection was accepted: set its socket options (before any write)."""

    def _read(self, size: int) -> None:
        self.dataReceived(self.server.read_buffer[:size])  # type: ignore[arg-type]

    def _read_piece(self, data: bytes) -> None:
        """A read for a body kept in memory (``body_room``): the body keeps it as it is."""
        self._got_data = True
        self.server.metrics.received(len(data))
        self.parser.received_piece(data)
        self._after_read()

    def dataReceived(self, data: bytes) -> None:
        self._got_data = True
        self.server.metrics.received(len(data))
        self.parser.receive_data(data)
        self._after_read()

    def connectionLost(self, reason: Failure | None = None) -> None:
        timers = self._lost()
        if self.response is not None:
            self.response.abort("the web server closed the connection before the response ended")
        self.parser.receive_eof()
        while (event := self.parser.next_event()) is not None:
            if isinstance(event, CGIRequest) and event.request.body is not None:
                event.request.body.close()
        self.server.connection_lost(self)
        retire(timers)  # freed at once: one connection per request behind uwsgi_pass
        if self._socket is not None and self.reads_into_buffer:
            twistedprivate.forget_read_into(self.transport)

    # -- reading

    def _after_read(self) -> None:
        parser = self.parser
        config = self.server.config
        if parser.in_head:
            self._header_timer = header_wait(self._header_timer, self.server, self._header_timeout)
        elif self._header_timer is not None:
            self._header_timer.cancel()
        timer = self._body_timer
        if parser.in_body:
            if timer is None or not timer.armed:
                self._body_mark = 0
                self._body_timer = started(
                    timer, self.server.clock, self._body_check, config.body_timeout
                )
        elif timer is not None:
            timer.cancel()
        self._next()

    def _header_timeout(self) -> None:
        if self.response is None and not self.parser.in_body:
            self._broken(
                f"{self.face} request not received within {self.server.config.header_timeout:g}s"
            )

    def _body_check(self) -> None:
        parser = self.parser
        if not parser.in_body:
            return
        received = parser.body_received - self._body_mark
        window = self.server.config.body_timeout
        wanted = max(1, int(self.server.config.body_min_rate * window))
        if received < wanted:
            self._broken(f"{self.face} request body slower than {wanted} bytes in {window:g}s")
            return
        self._body_mark = parser.body_received
        self._body_timer = started(self._body_timer, self.server.clock, self._body_check, window)

    def _next(self) -> None:
        if self._in_next:
            return
        self._in_next = True
        try:
            while not self.closing:
                event = self.parser.next_event()
                if event is None:
                    return
                if isinstance(event, CGIRequest):
                    self._start(event)
                elif isinstance(event, Refused):
                    self._refuse(event)
                elif isinstance(event, Malformed):
                    self._broken(event.detail)
                else:
                    self._other_event(event)
        finally:
            self._in_next = False

    # -- requests

    def _start(self, cgi: CGIRequest) -> None:
        self.requests += 1
        server = self.server
        request = cgi.request
        assert self.info is not None
        base = self._environ_base
        if base is None:
            base = self._environ_base = server.environ_base(self.info)
        environ = build_cgi_environ(cgi, base)
        # REMOTE_ADDR is the web server's word for the client: --forwarded-allow-ips judges
        # whether that client's X-Forwarded-* / Forwarded headers are believed, as on HTTP.
        apply_forwarded(environ, server.trusted_proxies, _proxy_header_note)
        if server.progress is not None and (
            request.target.partition(b"?")[0] == server.progress_path
        ):
            self._answer_progress(
                upload_id_from(cgi.request.target, cgi.request.headers),
                server.progress,
                functools.partial(self._send_progress, cgi),
            )
            return
        if trace.ENABLED:
            trace.emit("request-start", method=request.method, target=request.target)
        self._enter(_RESPONDING)
        sink = self._sink_for(cgi.request_id)

        def done(outcome: ResponseOutcome) -> None:
            self._response_done(cgi, environ, outcome)

        response = self.response = server.response_class(
            server.response_services, sink, request, environ, done
        )
        response.run()

    def _response_done(
        self, cgi: CGIRequest, environ: dict[str, Any], outcome: ResponseOutcome
    ) -> None:
        response = self.response
        assert response is not None
        self._ended(outcome, cgi.request, environ)
        if self.state is _CLOSED:
            return
        framer = response.framer
        ok = response.status != 0 and (framer is None or framer.error is None)
        # A response cut short (the app failed mid-body) has aborted the connection already.
        self._request_over(cgi.request_id, cgi.keep_conn, ok and not self.transport.disconnecting)  # type: ignore[union-attr]

    def _respond_directly(
        self,
        request_id: int,
        keep_conn: bool,
        status: int,
        body: bytes,
        extra: str = "",
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
    ) -> None:
        sink = self._sink_for(request_id)
        reason = STATUS_REASONS.get(status, "OK" if status == 200 else "Bad Request")
        sink.write(
            simple_response(
                status,
                reason,
                self.server.date(),
                body,
                close=True,
                extra=extra,
                content_type=content_type,
                head_only=head_only,
            )
        )
        self.server.metrics.observe(status, 0.0, len(body))
        self._request_over(request_id, keep_conn, status < 400)

    def _refuse(self, refused: Refused) -> None:
        peer = self.info.remote_addr if self.info else "?"
        log.info(
            "{face}: {status} to {peer}: {detail}",
            face=self.face,
            status=refused.status,
            peer=peer,
            detail=refused.detail,
        )
        reason = STATUS_REASONS.get(refused.status, "Bad Request")
        body = f"{refused.status} {reason}\n".encode()
        self._respond_directly(refused.request_id, False, refused.status, body)

    def _send_progress(self, cgi: CGIRequest, entry: dict[str, object]) -> None:
        self._respond_directly(
            cgi.request_id,
            cgi.keep_conn,
            200,
            json.dumps(entry).encode(),
            "Cache-Control: no-store\r\n",
            content_type="application/json",
            head_only=cgi.request.method == "HEAD",
        )

    # -- closing

    def _broken(self, detail: str) -> None:
        """The peer broke the protocol or is too slow: one log line, and the connection goes."""
        peer = self.info.remote_addr if self.info else "?"
        log.info(
            "{face}: closing the connection from {peer}: {detail}",
            face=self.face,
            peer=peer,
            detail=detail,
        )
        if self.response is not None:
            self.response.abort(f"{self.face} connection closed: {detail}")
        self._close()

    def _busy(self) -> bool:
        return self.response is not None or self.receiving or self.state is _AWAITING

    def drain(self) -> None:
        """Server shutdown: finish the request in hand and close an idle connection, but give a
        new one (no request yet) until DRAIN_IDLE_GRACE after it opened, and any connection
        until bytes waiting in its socket are read. The web server opened the connection to
        send a request that may not be read yet: closing a socket with unread bytes resets it,
        and nginx answers the client 502 (``uwsgi_pass`` opens a connection per request)."""
        if self._busy():
            return
        wait = DRAIN_IDLE_GRACE - (self.server.clock.seconds() - self.opened)
        if self.unread_bytes() or (self.requests == 0 and wait > 0):
            self._drain_timer = started(
                self._drain_timer, self.server.clock, self._drain_idle, max(wait, 0.0)
            )
        else:
            self._close()

    def shedding_candidate(self) -> None:
        """Never shed at max-connections: a proxy's connection carries many clients' requests
        (the proxy, not us, faces the slow clients)."""
        return None

    def abort(self, why: str) -> None:
        if self.state is not _CLOSED:
            log.info(
                "aborting {face} connection from {peer}: {why}",
                face=self.face,
                peer=self.info.remote_addr if self.info else "?",
                why=why,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]

    # -- the sink for faces that write the response as it is (uwsgi): TransportSink's, and

    @property
    def keep_alive_allowed(self) -> bool:
        # The HTTP-level answer: the response is framed to end with the connection or record
        # stream; whether the connection carries another request is the face's business.
        return False


class UwsgiChannel(GatewayChannel):
    """``--uwsgi``: one request per connection (nginx keeps no uwsgi connection alive), the
    response written as it is, closing the connection ends it."""

    face = "uwsgi"
    reads_into_buffer = True

    def _new_parser(self) -> Any:
        return UwsgiParser(self.server.limits, self.server.progress)

    def _after_read(self) -> None:
        super()._after_read()
        if self.parser.stopped and not self.closing:
            # Nothing follows a uwsgi request: read no more (the response's writes still see
            # the web server go).
            self._pause_reading()

    def _sink_for(self, request_id: int) -> ResponseSink:
        return self

    def _request_over(self, request_id: int, keep_conn: bool, ok: bool) -> None:
        self._close()

    def _other_event(self, event: object) -> None:
        raise AssertionError(f"unexpected uwsgi event {event!r}")


class FastCGIStdout:
    """The :class:`~catalyzer.wsgi.sink.ResponseSink` of one FastCGI request: the response's
    bytes as ``FCGI_STDOUT`` records, its status line turned into a CGI ``Status:`` header."""

    __slots__ = ("_head_sent", "_socket", "closed", "registered", "request_id", "transport")

    def __init__(self, transport: Any, sock: socket.socket | None, request_id: int) -> None:
        self.transport = transport
        self._socket = sock
        self.request_id = request_id
        self._head_sent = False
        self.registered = False
        self.closed = False  # the request ended: late writes (a thread's) are dropped

    @property
    def keep_alive_allowed(self) -> bool:
        return False

    def _records(self, data: bytes) -> list[bytes]:
        if not self._head_sent:
            self._head_sent = True
            data = cgi_head(data)
        return stdout_records(self.request_id, data)

    def write(self, data: bytes) -> None:
        if not self.closed and data:
            records = self._records(data)
            if len(records) == 2 and len(data) <= 16384:
                send_now(self.transport, self._socket, records[0] + records[1])
            else:
                self.transport.writeSequence(records)

    def write_sequence(self, data: list[bytes]) -> None:
        if not self.closed:
            records: list[bytes] = []
            for piece in data:
                if piece:
                    records += self._records(piece)
            self.transport.writeSequence(records)

    def register_producer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)
        self.registered = True

    def unregister_producer(self) -> None:
        if self.registered:
            self.registered = False
            self.transport.unregisterProducer()

    def start_writing(self) -> None:
        self.transport.startWriting()

    def abort_connection(self) -> None:
        self.transport.abortConnection()

    def sendfile_socket(self) -> socket.socket | None:
        return None  # the file's bytes must go inside records

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        return None  # the bytes must go inside records

    def resume_when_writable(self) -> None:
        raise AssertionError("a FastCGI response never holds bytes of its own")


def cgi_head(data: bytes) -> bytes:
    """``HTTP/1.1 200 OK\r\n...`` -> ``Status: 200 OK\r\n...``: a CGI response head."""
    if not data.startswith(b"HTTP/1."):
        raise AssertionError(f"a response head must come first, not {data[:20]!r}")
    return b"Status:" + data[8:]


class FastCGIChannel(GatewayChannel):
    """``--fastcgi``: requests one at a time, the connection kept when the web server asks
    (``FCGI_KEEP_CONN``), each response ended by ``FCGI_END_REQUEST``."""

    face = "fastcgi"

    def __init__(self, server: ServerState) -> None:
        super().__init__(server)
        self._sink: FastCGIStdout | None = None

    def _prepare_socket(self) -> None:
        # A response ends with a second small write (FCGI_END_REQUEST) right behind its body on
        # a connection that stays open: with Nagle's algorithm it would wait for the web
        # server's delayed ACK (40 ms on Linux), which the web server delays because it is
        # waiting for that very record.
        transport: Any = self.transport
        transport.setTcpNoDelay(True)

    def _new_parser(self) -> Any:
        return FastCGIParser(
            self.server.limits, self.server.progress, self.server.config.max_connections
        )

    def _sink_for(self, request_id: int) -> ResponseSink:
        self._sink = FastCGIStdout(self.transport, self._socket, request_id)
        return self._sink

    def _request_over(self, request_id: int, keep_conn: bool, ok: bool) -> None:
        sink = self._sink
        self._sink = None
        if sink is not None:
            sink.closed = True
            # An abandoned response (FCGI_ABORT_REQUEST) leaves its producer registered.
            sink.unregister_producer()
        self.parser.request_done()
        if self.state is _CLOSED or self.transport.disconnecting:  # type: ignore[union-attr]
            return
        self.write(end_request(request_id))
        if keep_conn and ok and not self.server.draining and not self.closing:
            self._arm_idle()
            self._next()
        else:
            self._close()

    def _other_event(self, event: object) -> None:
        if isinstance(event, Reply):
            self.write(event.data)
            if event.close and self.response is None:
                self._close()
        elif isinstance(event, Abort):
            if self.response is not None:
                self.response.abort("the web server aborted the request (FCGI_ABORT_REQUEST)")
        else:
            raise AssertionError(f"unexpected FastCGI event {event!r}")


class GatewayFactory(ServerFactory):
    def __init__(self, server: ServerState, channel: type[GatewayChannel]) -> None:
        super().__init__(server)
        self.channel = channel

    def buildProtocol(self, addr: object) -> GatewayChannel:
        channel = self.channel(self.server)
        channel.factory = self
        return channel
