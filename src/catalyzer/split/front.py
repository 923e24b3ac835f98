"""The split-mode front: the HTTP engine's connections, with each request answered by a handler.

The HTTP face is the one every catalyzer server runs (:class:`~catalyzer.server.channel.HTTPChannel`:
parsing, limits, spooling, timeouts, access log); only what answers a request changes. The channel
asks its :class:`~catalyzer.server.channel.ServerState` for a
:class:`~catalyzer.wsgi.sink.Responder` per request, and here that is a :class:`FrontResponse`,
which hands the request to the pure :class:`~catalyzer.split.router.Router` and writes what comes
back to the same :class:`~catalyzer.wsgi.sink.ResponseSink` a WSGI response would.

:class:`SplitFront` carries out the router's commands: messages to handlers over the ROUTER
socket, response bytes to clients, the front's own 502/503/504 answers. It keeps one timer, armed
at the router's next deadline after every event.

Back-pressure: a :class:`FrontResponse` is a push producer on its connection. Response bytes the
client has taken are granted back to the handler (WIN) in batches of a quarter window; while the
transport has paused us nothing is granted, so a handler can never be more than one window ahead
of a slow client.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Final

from twisted.internet import interfaces
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from catalyzer.http.framing import simple_response
from catalyzer.http.reader import Request
from catalyzer.split.describe import describe_front
from catalyzer.split.frames import FORWARDED_RESULT, Frame, Meta, encode
from catalyzer.split.router import (
    Abort,
    Command,
    Data,
    End,
    Head,
    Log,
    ReadBody,
    Reply,
    Router,
    Send,
)
from catalyzer.split.zmqio import SendResult, ZmqConnection
from catalyzer.wsgi.forwarded import PROXY_KEYS
from catalyzer.wsgi.sink import OnDone, ResponseOutcome, ResponseServices, ResponseSink
from catalyzer.wsgi.types import Environ

__all__ = ["FRAME_SIZE", "FrontResponse", "SplitFront", "closing_head", "request_meta"]

log = Logger(namespace="catalyzer.split")

# Request bodies travel in frames of at most this many bytes.
FRAME_SIZE: Final = 256 * 1024
# A body up to this size goes with its request; a larger one is pulled by the handler as the app
# reads it (BODYREQ/BODY), so neither side holds it whole in memory.
INLINE_BODY: Final = 256 * 1024

_REASONS: Final = {
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def request_meta(request: Request, environ: Environ, keep_alive: bool, script_name: str) -> Meta:
    """What a handler needs to build the request's environ with the same code as the HTTP face:
    the request as it arrived, the ``script-name`` it was built with, and what the front's
    judgement of proxy headers (``forwarded-allow-ips``) made of it: the entries it sets, and
    which proxy headers were believed (the others are not shown to the app)."""
    meta: list[tuple[bytes, bytes]] = [
        (b"m", request.method.encode("latin-1")),
        (b"t", request.target),
        (b"v", request.version.encode("latin-1")),
        (b"ka", b"1" if keep_alive else b"0"),
        (b"sn", script_name.encode("latin-1")),
    ]
    if request.chunked:
        meta.append((b"ch", b"1"))
    # The environ entries and the headers go as one pair each, a line per item: the HTTP
    # parser refuses CR, LF and NUL in a request head, so no name or value holds a newline,
    # and two pairs cost far less to encode and decode than twenty.
    forwarded = [
        f"{key}={value}" for key in FORWARDED_RESULT if (value := environ.get(key)) is not None
    ]
    if forwarded:
        meta.append((b"e", "\n".join(forwarded).encode("latin-1")))
    kept = [key for key in PROXY_KEYS if key in environ]
    meta.append((b"pk", ",".join(kept).encode("latin-1")))
    if request.headers:
        meta.append((b"h", b"\n".join([name + b":" + value for name, value in request.headers])))
    return tuple(meta)


def _body_frames(request: Request) -> tuple[bytes, ...]:
    body = request.body
    if body is None or not request.body_length or request.body_length > INLINE_BODY:
        return ()
    body.seek(0)
    frames = []
    while chunk := body.read(FRAME_SIZE):
        frames.append(chunk)
    return tuple(frames)


def closing_head(body: Sequence[Frame]) -> tuple[Frame, ...] | None:
    """A HEAD message's frames with the head made to say ``Connection: close``; None when its
    first frame does not hold the whole head (a window smaller than the head: the connection
    still closes after the response) or the head says close already."""
    first = bytes(body[0]) if body else b""
    end = first.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, rest = first[: end + 2], first[end + 2 :]
    if b"\r\nConnection: close\r\n" in head:
        return None
    # The handler's framing writes this line only for an HTTP/1.0 keep-alive (the app cannot
    # set hop-by-hop headers); HTTP/1.1 keeps alive without it.
    head = head.replace(b"\r\nConnection: keep-alive\r\n", b"\r\n")
    return (head + b"Connection: close\r\n" + rest, *body[1:])


@implementer(interfaces.IPushProducer)
class FrontResponse:
    """One request's answer from a handler, written to the client's connection."""

    def __init__(
        self,
        front: SplitFront,
        services: ResponseServices,
        sink: ResponseSink,
        request: Request,
        environ: Environ,
        on_done: OnDone,
    ) -> None:
        self.front = front
        self.services = services
        self.sink = sink
        self.request = request
        self.environ = environ
        self.on_done = on_done
        self.started = services.clock.seconds()
        self.cid = front.new_cid()
        self.status = 0
        self.bytes_sent = 0
        self.done = False
        self._registered = False
        self._paused = False
        self._owed = 0  # bytes the client took that are not granted back to the handler yet
        self._promised_keep_alive = False  # what the REQ told the handler
        self._closing = False  # the head was made to say Connection: close here

    # -- Responder

    def run(self) -> None:
        keep_alive = self.request.keep_alive and self.sink.keep_alive_allowed
        self._promised_keep_alive = keep_alive
        meta = request_meta(self.request, self.environ, keep_alive, self.front.script_name)
        length = self.request.body_length if self.request.body is not None else 0
        if length:
            meta = (*meta, (b"bl", b"%d" % length))
        self.front.submit(self, meta, _body_frames(self.request), length)

    def read_body(self, offset: int, n: int) -> bytes:
        body = self.request.body
        if body is None:
            return b""
        body.seek(offset)
        return body.read(n)

    def abort(self, why: str) -> None:
        """The client left or its connection is being cut."""
        if self.done:
            return
        fields = {"method": self.request.method, "path": self.environ.get("PATH_INFO"), "why": why}
        flood = self.services.flood
        if flood is None:
            log.info("{method} {path}: {why}", **fields)
        else:
            flood.emit("aborted responses", log, LogLevel.info, "{method} {path}: {why}", **fields)
        self._end(False, connection_gone=True)
        self.front.client_gone(self.cid)

    # -- what the router decided

    def head(self, status: int, body: Sequence[Frame]) -> None:
        self.status = status
        if self._promised_keep_alive and not self.sink.keep_alive_allowed:
            # The process began stopping after the handler framed this head for keep-alive: as
            # for a response made here, the head says the connection ends with it, so that the
            # client sends no next request into the close.
            closing = closing_head(body)
            if closing is not None:
                self._closing = True
                # The handler is granted back what it sent, not the bytes added here.
                self._owed -= sum(len(p) for p in closing) - sum(len(p) for p in body)
                body = closing
        self.sink.register_producer(self, True)
        self._registered = True
        self._write(body)

    def data(self, body: Sequence[Frame]) -> None:
        self._write(body)

    def end(self, status: int, keep_alive: bool, body_bytes: int = -1) -> None:
        self.status = status
        if body_bytes >= 0:
            # What was written includes the head and any chunk framing; the access log and the
            # metrics count the body, as for a response made in this process.
            self.bytes_sent = body_bytes
        self._end(keep_alive)

    def reply(self, status: int, detail: str, retry_after: int | None) -> None:
        fields = {
            "method": self.request.method,
            "path": self.environ.get("PATH_INFO"),
            "status": status,
            "detail": detail,
        }
        text = "{method} {path}: {status}: {detail}"
        flood = self.services.flood
        if flood is None:
            log.info(text, **fields)
        else:  # a burst of clients with no handler to take them: one line per interval
            flood.emit(f"split {status}s", log, LogLevel.info, text, **fields)
        keep_alive = self.request.keep_alive and self.sink.keep_alive_allowed
        body = f"{status} {_REASONS.get(status, 'Error')}\n".encode()
        extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
        self.status = status
        out = simple_response(
            status,
            _REASONS.get(status, "Error"),
            self.services.date(),
            body,
            close=not keep_alive,
            extra=extra,
            head_only=self.request.method == "HEAD",
        )
        self.bytes_sent = len(out)
        self.sink.write(out)
        self._end(keep_alive)

    def cut(self, why: str) -> None:
        """The response cannot be completed: the client must not take what it got as whole."""
        log.warn(
            "{method} {path}: {why}; closing the connection",
            method=self.request.method,
            path=self.environ.get("PATH_INFO"),
            why=why,
        )
        if self.status == 0:
            self.status = 502
        self.sink.abort_connection()
        self._end(False)

    # -- IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._owed and not self.done:
            owed, self._owed = self._owed, 0
            self.front.drained(self.cid, owed)

    def stopProducing(self) -> None:
        self.abort("client disconnected before the response was complete")

    # -- internals

    def _write(self, body: Sequence[Frame]) -> None:
        size = 0
        for piece in body:
            size += len(piece)
        if not size or self.done:
            return
        self.bytes_sent += size
        self._send(body, size)
        self._owed += size
        if (
            not self._paused
            and not self.done
            # While responses wait for the budget, every byte taken counts at once: a window
            # smaller than a batch (a share of what was left) must not wait for a batch.
            and (self._owed >= self.front.grant_batch or self.front.router.starved)
        ):
            owed, self._owed = self._owed, 0
            self.front.drained(self.cid, owed)

    def _send(self, body: Sequence[Frame], size: int) -> None:
        """Write ``body`` to the client: straight from the received frames (views of ZeroMQ's
        buffers for large ones) with one ``sendmsg`` when nothing is queued ahead of them, as
        the engine writes a response in memory; only what the socket does not take is copied
        into the transport's buffer (which pauses us, as any write past its limit does)."""
        try:
            sent = self.sink.send_direct([memoryview(piece) for piece in body])
        except OSError:
            sent = None  # the transport meets the error when it writes, and reports it its way
        if sent is None:
            rest = list(body)
        elif sent == size:
            return
        else:
            rest = []
            for piece in body:
                n = len(piece)
                if sent >= n:
                    sent -= n
                    continue
                rest.append(piece[sent:] if sent else piece)
                sent = 0
        if len(rest) == 1:
            self.sink.write(bytes(rest[0]))
        else:
            self.sink.write_sequence([bytes(piece) for piece in rest])

    def _end(self, keep_alive: bool, connection_gone: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.front.forget(self.cid)
        if self._registered and not connection_gone:
            self.sink.unregister_producer()
        self._registered = False
        keep_alive = keep_alive and not self._closing
        self.on_done(ResponseOutcome(self.status, self.bytes_sent, keep_alive, self.started))


class SplitFront:
    """The router's shell: ZeroMQ messages in and out, client responses, one deadline timer."""

    def __init__(self, router: Router, reactor: Any, script_name: str = "") -> None:
        self.router = router
        self.script_name = script_name
        self.reactor = reactor
        self.connection: ZmqConnection | None = None
        self.responses: dict[int, FrontResponse] = {}
        self.grant_batch = max(1, router.settings.window // 4)
        self._cids = itertools.count(1)
        self._timer: interfaces.IDelayedCall | None = None
        self.send_failures = 0

    def attach(self, connection: ZmqConnection) -> None:
        self.connection = connection
        connection.on_message = self.received
        connection.on_send_failure = self._send_failed

    def new_cid(self) -> int:
        return next(self._cids)

    def responder(
        self,
        services: ResponseServices,
        sink: ResponseSink,
        request: Request,
        environ: Environ,
        on_done: OnDone,
    ) -> FrontResponse:
        """The :data:`~catalyzer.wsgi.sink.ResponderFactory` of the front's HTTP face."""
        return FrontResponse(self, services, sink, request, environ, on_done)

    # -- events

    def submit(
        self, response: FrontResponse, meta: Meta, body: tuple[bytes, ...], body_length: int
    ) -> None:
        self.responses[response.cid] = response
        now = self.reactor.seconds()
        method = response.request.method
        self._run(self.router.request(now, response.cid, method, meta, body, body_length))

    def client_gone(self, cid: int) -> None:
        self.responses.pop(cid, None)
        self._run(self.router.client_gone(self.reactor.seconds(), cid))

    def drained(self, cid: int, n: int) -> None:
        self._run(self.router.drained(self.reactor.seconds(), cid, n))

    def forget(self, cid: int) -> None:
        self.responses.pop(cid, None)

    def received(self, frames: list[Frame]) -> None:
        if len(frames) < 2:
            log.warn("a message without a routing identity: dropped")
            return
        identity = frames[0]
        if type(identity) is not bytes:
            identity = bytes(identity)
        self._run(self.router.message(self.reactor.seconds(), identity, frames[1:]))

    def tick(self) -> None:
        self._timer = None
        self._run(self.router.tick(self.reactor.seconds()))

    def status(self) -> dict[str, object]:
        return self.router.status(self.reactor.seconds())

    def describe(self) -> str:
        """The handler rows and the queue as text (the USR1 dump, the manhole)."""
        return describe_front(self.status())

    def drain_tag(self, tag: str) -> int:
        """Operator command: no new work for the handlers tagged ``tag``; how many there are."""
        self._run(self.router.drain_tag(self.reactor.seconds(), tag))
        return sum(1 for h in self.router.handlers.values() if h.tag == tag)

    def set_weight(self, tag: str, weight: float) -> int:
        """Operator command: the share of new work the handlers tagged ``tag`` get (0: none).
        Raises ValueError for a weight that is negative or not a finite number."""
        if not 0 <= weight < float("inf"):
            raise ValueError(f"a weight is a number, 0 or more: {weight!r}")
        self._run(self.router.set_tag_weight(self.reactor.seconds(), tag, weight))
        return sum(1 for h in self.router.handlers.values() if h.tag == tag)

    # -- carrying out

    def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                self._send(command)
                continue
            if isinstance(command, Log):
                log.emit(LogLevel.levelWithName(command.level), "{text}", text=command.text)
                continue
            response = self.responses.get(command.cid)
            if response is None:
                continue
            if isinstance(command, Head):
                response.head(command.status, command.body)
            elif isinstance(command, Data):
                response.data(command.body)
            elif isinstance(command, End):
                response.end(command.status, command.keep_alive, command.body_bytes)
            elif isinstance(command, Reply):
                response.reply(command.status, command.detail, command.retry_after)
            elif isinstance(command, Abort):
                response.cut(command.why)
            elif isinstance(command, ReadBody):
                data = response.read_body(command.offset, command.n)
                now = self.reactor.seconds()
                self._run(self.router.body_chunk(now, command.cid, command.offset, data))
        self._arm()

    def _send(self, command: Send) -> None:
        connection = self.connection
        if connection is None:
            return
        result = connection.send([command.identity, *encode(command.message)])
        if result is not SendResult.SENT:
            self._send_failed(command.identity, result)

    def _send_failed(self, identity: bytes | None, result: SendResult) -> None:
        """A message could not be sent (now, or at the end of the turn it was batched in)."""
        self.send_failures += 1
        if identity is not None:
            self._run(self.router.handler_lost(self.reactor.seconds(), identity, result.value))

    def _arm(self) -> None:
        deadline = self.router.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None and timer.getTime() <= deadline:
            # Early is harmless (tick finds nothing due and arms again), and moving the timer
            # later on every message would cost more than the rare early tick.
            return
        delay = max(0.0, deadline - self.reactor.seconds())
        if timer is None:
            self._timer = self.reactor.callLater(delay, self.tick)
        else:
            timer.reset(delay)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
