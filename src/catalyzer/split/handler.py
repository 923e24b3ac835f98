"""The split-mode handler: a WSGI host whose requests come from a front over ZeroMQ.

A handler is a WSGI server like any other catalyzer process: the environ is built by
:func:`catalyzer.wsgi.environ.build_environ` from the request as the front received it (what the front's
:func:`~catalyzer.wsgi.forwarded.apply_forwarded` made of its proxy headers travels with it), the app runs in a :class:`~catalyzer.wsgi.response.ThreadedWSGIResponse` (one pool
thread per slot, so the reactor keeps heartbeating and granting credit while the app works; a
session also runs an app given to it in line, as the tests do, spooling a large body first), with
the same strict ``start_response`` and ``wsgi.file_wrapper``, and each response is written to a
:class:`~catalyzer.wsgi.sink.ResponseSink`: :class:`SplitSink`, which turns the framed bytes into
HEAD/DATA/END messages within the window the front grants.

One :class:`HandlerSession` per front: HELLO (repeated each heartbeat until WELCOME), START for
each request before its app is called (and, for methods the front does not retry, a wait for GO),
heartbeats while idle, and a new HELLO when the front is silent past liveness, says RESET, or a
sequence number is missing. On drain: DRAIN, the requests not started are RETURNed, the started
ones finish, then BYE.

Prefetch: a session takes up to ``prefetch`` requests beyond its slots (its threads), which wait
here for a slot, so that a slot that finishes starts the next request at once instead of waiting
a round trip to the front for it. A session whose slots are all busy and none has finished or
started for ``prefetch_stall`` is *stalled*: it takes its prefetch credit back from the front
(CREDIT with a negative count) and gives the waiting requests back (RETURN), so nothing waits
behind a slow call for longer than that while another handler could run it; the next request to
finish grants the prefetch again.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any, Final

from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure

from catalyzer.http.framing import simple_response
from catalyzer.http.reader import Request
from catalyzer.ops.accesslog import FileAccessLog
from catalyzer.split.frames import (
    FORWARDED_RESULT,
    FROM_FRONT,
    Frame,
    FrameError,
    Kind,
    Message,
    Meta,
    decode,
    encode_parts,
)
from catalyzer.split.router import PING, RETRYABLE_METHODS
from catalyzer.split.zmqio import SendResult, ZmqConnection
from catalyzer.wsgi.environ import BadTarget, ConnectionInfo, base_environ, build_environ
from catalyzer.wsgi.filewrapper import FileWrapper
from catalyzer.wsgi.forwarded import PROXY_KEYS
from catalyzer.wsgi.response import WSGIResponse, response_class
from catalyzer.wsgi.sink import ResponseOutcome, ResponseServices

__all__ = ["HandlerSession", "SplitSink"]

log = Logger(namespace="catalyzer.split")

# Response bytes per HEAD, DATA or REPLY message at most (its frames are views of the app's
# pieces, each under the peer's MAXMSGSIZE). A response of up to this size with its head goes
# in one REPLY when the window allows it: every extra message is a wake-up of both sides' I/O
# threads and, while the window is used up, a round trip.
DATA_FRAME: Final = 2 * 1024 * 1024
# A REPLY smaller than this goes as one frame (joined: cheaper than a frame per piece).
JOIN_BELOW: Final = 16 * 1024
# Request bodies past this are kept in a temporary file rather than memory.
BODY_IN_MEMORY: Final = 1024 * 1024
# A retried request's START is sent only if its response has not begun this long after it came.
START_DELAY: Final = 0.02
# END's metadata for a request dropped before it ran (cancelled, or past its start deadline).
CANCELLED: Final = ((b"r", b"cancelled"),)


class SplitSink:
    """Where one request's response goes: HEAD, then DATA within the granted window, then END.

    The response (a push producer) is paused when the window is used up and resumed when WIN
    grants more; bytes written past the window wait here (at most one app chunk)."""

    def __init__(
        self, session: HandlerSession, rid: int, epoch: int, window: int, keep_alive: bool
    ) -> None:
        self.session = session
        self.rid = rid
        self.epoch = epoch
        self.window = window
        self._keep_alive = keep_alive
        self.response: WSGIResponse | None = None
        self.producer: Any = None
        self.head_sent = False
        self.pending: list[Frame] = []
        self.end_owed: ResponseOutcome | None = None
        self.aborted = False
        self.cancelled = False
        self.closed = False
        self._paused = False
        self._held = 0  # bytes of a complete response kept for one REPLY

    # -- ResponseSink

    @property
    def keep_alive_allowed(self) -> bool:
        return self._keep_alive

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.pending.append(data)
        if not self.head_sent and self._whole():
            # The response is complete in what was written: finish() follows, and sends it
            # all as one REPLY instead of HEAD and END (one message, one wake-up each side).
            self._held += len(data)
            if self._held <= min(self.window, DATA_FRAME):
                if self.producer is not None:
                    # An iterable's last piece: finish() waits for the app to end the
                    # iteration (and close it), which may take a while; the bytes do not.
                    self.session.release_later(self)
                return
        self._flush()

    def release(self) -> None:
        """Send what is held for a REPLY now, as HEAD (END follows when the response ends)."""
        if not self.closed and not self.head_sent and self.pending:
            self._flush()

    def _whole(self) -> bool:
        response = self.response
        framer = response.framer if response is not None else None
        return framer is not None and (not framer.has_body or framer.remaining == 0)

    def write_sequence(self, data: list[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def register_producer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def start_writing(self) -> None:
        """Only a sendfile producer asks for this, and a handler has no socket for it."""

    def abort_connection(self) -> None:
        # The response failed part-way (or stalled): the front must cut its client, and what
        # waits for window will never go.
        self.aborted = True
        if self.end_owed is not None and not self.closed:
            self._send_end(self.end_owed)

    def sendfile_socket(self) -> socket.socket | None:
        return None

    def send_direct(self, pieces: list[memoryview]) -> int | None:
        return None  # the bytes must go inside DATA messages

    def resume_when_writable(self) -> None:
        raise AssertionError("a split response never holds bytes of its own")

    # -- the front's grants

    def grant(self, n: int) -> None:
        self.window += n
        self._flush()

    def _flush(self) -> None:
        # As much as the window allows goes in one message (the head with the first body bytes),
        # and a piece larger than that is sent as views of the app's bytes, never sliced copies.
        session = self.session
        pending = self.pending
        while pending and self.window > 0 and not self.closed:
            room = min(self.window, DATA_FRAME)
            frames: list[Frame] = []
            size = 0
            while pending and size < room:
                data = pending[0]
                n = min(len(data), room - size)
                if n == len(data):
                    frames.append(data)
                    del pending[0]
                else:
                    view = memoryview(data)
                    frames.append(view[:n])
                    pending[0] = view[n:]
                size += n
            self.window -= size
            if not self.head_sent:
                self.head_sent = True
                status = self.response.status if self.response is not None else 0
                session.send_for(self, Kind.HEAD, ((b"st", b"%d" % (status or 500)),), frames)
            else:
                session.send_for(self, Kind.DATA, (), frames)
        if self.pending:
            if not self._paused and self.producer is not None:
                self._paused = True
                self.producer.pauseProducing()
        elif self._paused:
            self._paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        if not self.pending and self.end_owed is not None and not self.closed:
            self._send_end(self.end_owed)

    def finish(self, outcome: ResponseOutcome) -> None:
        """The response is over: END once every byte before it has gone."""
        if self.closed:
            return
        if (
            not self.head_sent
            and self.pending
            and not (self.aborted or self.cancelled)
            and self._held <= min(self.window, DATA_FRAME)
        ):
            self._send_reply(outcome)
            return
        if self.pending and not (self.aborted or self.cancelled):
            self.end_owed = outcome
            self._flush()
            return
        self._send_end(outcome)

    def _send_reply(self, outcome: ResponseOutcome) -> None:
        self.closed = True
        self.head_sent = True
        frames: tuple[Frame, ...] = tuple(self.pending)
        if len(frames) > 1 and self._held < JOIN_BELOW:
            # One frame fewer to send, receive and write (the head and a small body).
            frames = (b"".join(frames),)
        self.pending.clear()
        self.window -= self._held
        meta = (
            (b"st", b"%d" % outcome.status),
            (b"ka", b"1" if outcome.keep_alive else b"0"),
            (b"bs", b"%d" % outcome.bytes_sent),
        )
        self.session.send_for(self, Kind.REPLY, meta, frames)
        self.session.request_over(self.rid)

    def _send_end(self, outcome: ResponseOutcome) -> None:
        self.closed = True
        self.pending.clear()
        meta: list[tuple[bytes, bytes]] = [
            (b"st", b"%d" % outcome.status),
            (b"ka", b"1" if outcome.keep_alive else b"0"),
            (b"ran", b"1"),
            (b"bs", b"%d" % outcome.bytes_sent),
        ]
        if self.aborted or (not self.head_sent and outcome.status):
            meta.append((b"ab", b"1"))
        self.session.send_for(self, Kind.END, tuple(meta))
        self.session.request_over(self.rid)


# Body bytes asked for at a time as the app reads a body the front did not send whole.
BODY_CHUNK: Final = 256 * 1024


class BodyCancelled(OSError):
    """The request's body can no longer arrive: the front cancelled it or the session is gone."""


class StreamedBody(io.RawIOBase):
    """``wsgi.input`` for a body pulled from the front as the app reads it.

    The app's pool thread calls :meth:`readinto`, which asks the front for the next piece
    (BODYREQ, sent from the reactor thread through ``call_from_thread``) and waits for
    :meth:`feed` (the reactor thread, on BODY). Only one piece is ever in memory."""

    def __init__(self, length: int, ask: Callable[[int, int], None], call: Callable[..., None]):
        super().__init__()
        self.length = length
        self.position = 0
        self._ask = ask
        self._call = call
        self._cond = threading.Condition()
        self._piece = b""
        self._piece_at = 0
        self._waiting = False
        self._failed: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position >= self.length or not len(view):
            return 0
        with self._cond:
            if not self._piece:
                want = min(BODY_CHUNK, self.length - self.position)
                self._waiting = True
                self._call(self._ask, self.position, want)
                while not self._piece and self._failed is None:
                    self._cond.wait()
                self._waiting = False
            if self._failed is not None and not self._piece:
                raise BodyCancelled(self._failed)
            n = min(len(view), len(self._piece))
            view[:n] = self._piece[:n]
            self._piece = self._piece[n:]
            self.position += n
            return n

    def feed(self, offset: int, data: bytes) -> None:
        """Body bytes from the front (reactor thread)."""
        with self._cond:
            if offset != self.position or not data:
                self._failed = f"the front sent body bytes at {offset}, wanted {self.position}"
            else:
                self._piece = data
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            self._failed = why
            self._cond.notify_all()


# The environ entries that are the front's to decide (the handler's own environ builder would
# derive them from the request's headers): set as the REQ says, or removed.
_FRONT_DECIDES: Final = ("HTTPS", "HTTP_HOST", "SCRIPT_NAME")
# Client connections whose environ base a session keeps (then it starts again).
CONNECTIONS_KEPT: Final = 1024


class _ClientConnection:
    """A client connection as the front described it: the environ every request on it starts
    from, the entries its requests must not have, and those the front set."""

    __slots__ = ("base", "dropped", "overrides")

    def __init__(self, base: dict[str, Any], dropped: tuple[str, ...], overrides: dict[str, str]):
        self.base = base
        self.dropped = dropped
        self.overrides = overrides


class _Waiting:
    """A request sent to us whose app has not been called: waiting for GO, or for a thread."""

    def __init__(self, rid: int, request: Request, environ: dict[str, Any], sink: SplitSink):
        self.rid = rid
        self.request = request
        self.environ = environ
        self.sink = sink
        self.response: WSGIResponse | None = None
        self.stream: StreamedBody | None = None
        self.spool: IO[bytes] | None = None  # the body being spooled (an app run in line)
        self.spooled = 0
        self.go = False  # the app may be called once the body is in
        self.start_by = float("inf")  # the reactor's time after which it must not start


class HandlerSession:
    """This process's session with one front."""

    def __init__(
        self,
        connection: ZmqConnection,
        reactor: Any,
        services: ResponseServices,
        *,
        slots: int,
        prefetch: int = 0,
        prefetch_stall: float = 0.05,
        hello: Meta,
        heartbeat: float,
        liveness: float,
        access_log: FileAccessLog | None = None,
        errors: IO[str] | None = None,
        multiprocess: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.connection = connection
        connection.on_message = self.received
        connection.on_send_failure = self._send_failed
        self.reactor = reactor
        self.services = services
        self.slots = slots
        self.prefetch = prefetch
        self.prefetch_stall = prefetch_stall
        self.hello_meta = hello
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.access_log = access_log
        self.errors = errors
        self.multiprocess = multiprocess
        self.on_idle = on_idle
        self.on_welcome: Callable[[], None] | None = None
        self.epoch = 0
        self.welcomed = False
        self.draining = False
        self.left = False
        self.seq_out = 0
        self.seq_in = 0
        self.last_sent = 0.0
        self.last_heard = 0.0
        self.requests: dict[int, _Waiting] = {}
        # Retried requests whose START has not gone (see _request), and the one timer for them.
        self._starts_owed: set[int] = set()
        self._start_timer: interfaces.IDelayedCall | None = None
        # Responses held for a REPLY whose iterable has not ended yet, and their one timer.
        self._held: set[SplitSink] = set()
        self._release_timer: interfaces.IDelayedCall | None = None
        # Requests whose app may run, waiting for a slot (oldest first; entries of requests over
        # meanwhile are skipped), the ones running, and when a slot last started or finished one.
        self._ready: deque[_Waiting] = deque()
        self._connections: dict[tuple[bytes | None, ...], _ClientConnection] = {}
        self._running: set[_Waiting] = set()
        self._progress_at = 0.0
        self._stall_timer: interfaces.IDelayedCall | None = None
        # Stalled: the prefetch credit is taken back until a request finishes.
        self.stalled = False
        self.stalls = 0
        self.served = 0
        self.sessions = 0
        self._timer: interfaces.IDelayedCall | None = None

    # -- life

    def start(self) -> None:
        self.connection.start()
        self._hello()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for timer in (self._start_timer, self._release_timer, self._stall_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._start_timer = self._release_timer = self._stall_timer = None
        self.connection.close()

    def drain(self) -> None:
        """Leave in order: no new work, the unstarted requests back to the front, the started
        ones finished, then BYE (``on_idle`` is called once BYE is sent)."""
        if self.draining:
            return
        self.draining = True
        if not self.welcomed:
            self._leave()
            return
        self._send(Kind.DRAIN)
        for waiting in list(self.requests.values()):
            if waiting.response is None:
                self._give_back(waiting, Kind.RETURN)
        self._maybe_leave()

    def _maybe_leave(self) -> None:
        if self.draining and not self.requests and not self.left:
            self._leave()

    def _leave(self) -> None:
        self.left = True
        if self.welcomed:
            self._send(Kind.BYE)
        if self.on_idle is not None:
            self.on_idle()

    # -- sending

    def _send(self, kind: Kind, rid: int = 0, meta: Meta = (), body: Sequence[Frame] = ()) -> None:
        frames = encode_parts(kind, self.seq_out, rid, meta, body)
        self.seq_out += 1
        self.last_sent = self.reactor.seconds()
        result = self.connection.send(frames)
        if result is not SendResult.SENT:
            self._send_failed(None, result)

    def _send_failed(self, peer: bytes | None, result: SendResult) -> None:
        if self.welcomed:
            # Nothing reaches the front now; it will count us lost and we will say HELLO again.
            log.warn("cannot send to the front: {why}", why=result.value)

    def send_for(self, sink: SplitSink, kind: Kind, meta: Meta, body: Sequence[Frame] = ()) -> None:
        """A message about ``sink``'s request, unless its session has been replaced since."""
        if sink.epoch == self.epoch:
            self._starts_owed.discard(sink.rid)  # any message about it implies its START
            self._send(kind, sink.rid, meta, body)

    def release_later(self, sink: SplitSink) -> None:
        """Send ``sink``'s held response START_DELAY from now if it has not ended by then."""
        self._held.add(sink)
        if self._release_timer is None:
            self._release_timer = self.reactor.callLater(START_DELAY, self._release_held)

    def _release_held(self) -> None:
        self._release_timer = None
        held, self._held = self._held, set()
        for sink in held:
            if sink.epoch == self.epoch:
                sink.release()

    def _owe_start(self, rid: int) -> None:
        self._starts_owed.add(rid)
        if self._start_timer is None:
            self._start_timer = self.reactor.callLater(START_DELAY, self._send_starts)

    def _send_starts(self) -> None:
        self._start_timer = None
        owed, self._starts_owed = self._starts_owed, set()
        for rid in sorted(owed):
            if rid in self.requests:
                self._send(Kind.START, rid)

    def _hello(self) -> None:
        self.epoch += 1
        self.sessions += 1
        self.welcomed = False
        self.seq_out = 0
        self.seq_in = 0
        now = self.reactor.seconds()
        self.last_heard = now
        meta = self._hello_meta()
        self._send(Kind.HELLO, meta=meta)
        self._arm()

    def _hello_meta(self) -> Meta:
        return (*self.hello_meta, (b"slots", b"%d" % self.slots), (b"pf", b"%d" % self.prefetch))

    def _new_session(self, why: str) -> None:
        """The front lost us (or we it): what we had is abandoned, and we join again."""
        log.warn("session with the front lost ({why}); joining again", why=why)
        for waiting in self.requests.values():
            waiting.sink.closed = True
            if waiting.stream is not None:
                waiting.stream.fail(f"the front's session was lost ({why})")
            if waiting.response is not None:
                waiting.response.abort(f"the front's session was lost ({why})")
            else:
                self._close_body(waiting.request)
        self.requests.clear()
        self._starts_owed.clear()
        # A new HELLO grants the slots and the prefetch afresh.
        self._ready.clear()
        self._running.clear()
        self.stalled = False
        if self.draining:
            self._leave()
            return
        self._hello()

    # -- timers

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(self.heartbeat, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.left:
            return
        now = self.reactor.seconds()
        if not self.welcomed:
            if now - self.last_heard >= self.liveness:
                self._hello()  # a fresh session: the front may have been restarted
                return
            meta = self._hello_meta()
            self.seq_out = 0
            self._send(Kind.HELLO, meta=meta)
        elif now - self.last_heard >= self.liveness:
            self._new_session(f"the front was silent for {self.liveness:g}s")
            return
        elif now - self.last_sent >= self.heartbeat * 0.5:
            self._send(Kind.HB)
        self._arm()

    # -- receiving

    def received(self, frames: list[Frame]) -> None:
        try:
            msg = decode(frames)
        except FrameError as e:
            self._new_session(f"malformed message: {e}")
            return
        if msg.kind not in FROM_FRONT:
            self._new_session(f"the front sent {msg.kind.name}")
            return
        self.last_heard = self.reactor.seconds()
        if msg.kind is Kind.RESET:
            # RESETs answer messages of an older session; those that arrive while we are
            # joining again were sent before our HELLO reached the front (one pipe, in order).
            if self.welcomed and not self.left:
                self._new_session("the front does not know this session")
            return
        if msg.kind is Kind.WELCOME:
            if self.welcomed:
                return
            self.welcomed = True
            self.seq_in = msg.seq + 1
            log.info(
                "joined the front ({slots} slots, {prefetch} prefetched)",
                slots=self.slots,
                prefetch=self.prefetch,
            )
            if self.on_welcome is not None:
                self.on_welcome()
            if self.draining:
                self._leave()
            return
        if not self.welcomed:
            return  # from a session before our HELLO: ignored
        if msg.seq != self.seq_in:
            self._new_session(f"sequence gap: expected {self.seq_in}, got {msg.seq}")
            return
        self.seq_in += 1
        try:
            self._handle(msg)
        except FrameError as e:
            self._new_session(f"malformed {msg.kind.name}: {e}")

    def _handle(self, msg: Message) -> None:
        kind = msg.kind
        if kind is Kind.HB:
            stamp = msg.get(PING)
            if stamp is not None:
                # The front times its round trips with this: answer now, from this thread.
                self._send(Kind.HB, meta=((PING, stamp),))
            return
        if kind is Kind.REQ:
            self._request(msg)
            return
        waiting = self.requests.get(msg.rid)
        if waiting is None:
            return  # a request already over
        if kind is Kind.GO:
            if waiting.response is None:
                self._go(waiting)
        elif kind is Kind.WIN:
            waiting.sink.grant(msg.get_int(b"n"))
        elif kind is Kind.BODY:
            if waiting.stream is not None:
                waiting.stream.feed(msg.get_int(b"o"), b"".join(msg.body))
            elif waiting.spool is not None:
                self._spool(waiting, msg.get_int(b"o"), msg.body)
        elif kind is Kind.CANCEL:
            if waiting.stream is not None:
                waiting.stream.fail("cancelled by the front")
            if waiting.response is not None:
                waiting.sink.cancelled = True
                waiting.response.abort("cancelled by the front")
            else:
                self._give_back(waiting, Kind.END, CANCELLED)
                self._maybe_leave()

    def _request(self, msg: Message) -> None:
        rid = msg.rid
        if self.draining:
            self._send(Kind.RETURN, rid)
            return
        request = Request()
        request.method = msg.get_text(b"m")
        request.target = msg.get(b"t") or b"/"
        request.version = msg.get_text(b"v", "1.1")
        request.keep_alive = msg.get(b"ka") == b"1"
        request.chunked = msg.get(b"ch") == b"1"
        headers = []
        for lines in msg.get_all(b"h"):  # a header per line
            for raw in lines.split(b"\n"):
                field, colon, value = raw.partition(b":")
                if not colon:
                    raise FrameError(f"REQ: header without a name: {raw[:40]!r}")
                headers.append((field, value))
        request.headers = headers
        request.body_length = msg.body_length
        request.body = None
        connection = self._connection(msg)
        sink = SplitSink(self, rid, self.epoch, msg.get_int(b"w"), request.keep_alive)
        start_within = msg.get_float(b"dl", float("inf"))
        length = msg.get_int(b"bl", 0)
        stream: StreamedBody | None = None
        spool: IO[bytes] | None = None
        if length > msg.body_length and self.services.threadpool is None:
            # The app runs in the reactor (in line), which must not wait for body pieces:
            # the body is spooled here first (memory, then a file), as the HTTP face spools it.
            spool = tempfile.SpooledTemporaryFile(max_size=BODY_IN_MEMORY)  # noqa: SIM115
            for frame in msg.body:
                spool.write(frame)
            request.body_length = length
            request.body = spool
        elif length > msg.body_length:
            stream = StreamedBody(
                length,
                lambda offset, n: self._ask_body(sink, stream, offset, n),
                self.services.call_from_thread or (lambda f, *a: f(*a)),
            )
            request.body_length = length
            request.body = io.BufferedReader(stream, buffer_size=BODY_CHUNK)
        elif msg.body:
            request.body = self._body(msg.body)
        try:
            environ = build_environ(request, connection.base)
        except BadTarget as e:
            self._refuse(sink, request, 400, "Bad Request", str(e))
            return
        # What the front's forwarded-allow-ips judgement made of the proxy headers, as it is.
        for key in connection.dropped:
            environ.pop(key, None)
        environ.update(connection.overrides)
        waiting = _Waiting(rid, request, environ, sink)
        waiting.start_by = self.reactor.seconds() + start_within
        waiting.stream = stream
        self.requests[rid] = waiting
        if spool is not None:
            waiting.spool = spool
            waiting.spooled = msg.body_length
            self._ask_body(sink, None, msg.body_length, min(BODY_CHUNK, length - msg.body_length))
        if request.method in RETRYABLE_METHODS:
            self._go(waiting)
        else:
            # Other methods wait for GO: the front may have given it to another handler.
            self._send(Kind.START, rid)

    def _connection(self, msg: Message) -> _ClientConnection:
        """What a REQ says of its client's connection, made once per connection: the requests
        of one keep-alive connection carry the same entries."""
        key = (msg.get(b"sn"), msg.get(b"pk"), *msg.get_all(b"e"))
        connection = self._connections.get(key)
        if connection is not None:
            return connection
        final: dict[str, str] = {}
        for lines in msg.get_all(b"e"):  # an entry per line
            for pair in lines.decode("latin-1").split("\n"):
                name, sep, text = pair.partition("=")
                if not sep or name not in FORWARDED_RESULT:
                    raise FrameError(f"REQ: bad environ entry {pair[:40]!r}")
                final[name] = text
        info = ConnectionInfo(
            final.get("SERVER_NAME", ""),
            final.get("SERVER_PORT", ""),
            final.get("REMOTE_ADDR", ""),
            final.get("REMOTE_PORT", ""),
            final.get("wsgi.url_scheme", "http"),
        )
        base = base_environ(
            info,
            script_name=msg.get_text(b"sn"),
            errors=self.errors,
            multithread=self.services.threadpool is not None,
            multiprocess=self.multiprocess,
            file_wrapper=FileWrapper,
        )
        kept = set(msg.get_text(b"pk").split(","))
        connection = _ClientConnection(
            base,
            tuple(key for key in PROXY_KEYS if key not in kept)
            + tuple(key for key in _FRONT_DECIDES if key not in final),
            {key: final[key] for key in _FRONT_DECIDES if key in final},
        )
        if len(self._connections) >= CONNECTIONS_KEPT:
            self._connections.clear()
        self._connections[key] = connection
        return connection

    def _ask_body(self, sink: SplitSink, stream: StreamedBody | None, offset: int, n: int) -> None:
        if sink.closed or sink.epoch != self.epoch or sink.rid not in self.requests:
            if stream is not None:
                stream.fail("the request is over (cancelled, or its session lost)")
            return
        self.send_for(sink, Kind.BODYREQ, ((b"o", b"%d" % offset), (b"n", b"%d" % n)))

    def _refuse(
        self, sink: SplitSink, request: Request, status: int, reason: str, detail: str
    ) -> None:
        log.info(
            "{status} for {target!r}: {detail}", status=status, target=request.target, detail=detail
        )
        body = f"{status} {reason}\n".encode()
        sink.head_sent = True
        sink.closed = True
        self._send(
            Kind.REPLY,
            sink.rid,
            ((b"st", b"%d" % status), (b"ka", b"0")),
            (simple_response(status, reason, self.services.date(), body),),
        )
        self._close_body(request)

    def _body(self, frames: tuple[Frame, ...]) -> IO[bytes]:
        size = sum(len(f) for f in frames)
        body: IO[bytes]
        if size <= BODY_IN_MEMORY:
            body = io.BytesIO(frames[0] if len(frames) == 1 else b"".join(frames))
        else:
            body = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the response ends)
            for frame in frames:
                body.write(frame)
            body.seek(0)
        return body

    @staticmethod
    def _close_body(request: Request) -> None:
        if request.body is not None:
            request.body.close()

    def _spool(self, waiting: _Waiting, offset: int, frames: tuple[Frame, ...]) -> None:
        """Body bytes for a request spooled before its app runs in the reactor."""
        spool = waiting.spool
        assert spool is not None
        data = b"".join(frames)
        length = waiting.request.body_length
        if offset != waiting.spooled or not data or waiting.spooled + len(data) > length:
            raise FrameError(f"BODY: {len(data)} bytes at {offset}, wanted {waiting.spooled}")
        spool.write(data)
        waiting.spooled += len(data)
        if waiting.spooled < length:
            n = min(BODY_CHUNK, length - waiting.spooled)
            self._ask_body(waiting.sink, None, waiting.spooled, n)
            return
        spool.seek(0)
        waiting.spool = None
        if waiting.go:
            self._ready.append(waiting)
            self._start_ready()

    def _go(self, waiting: _Waiting) -> None:
        """The app may be called: once its body is spooled and a slot is free."""
        waiting.go = True
        if waiting.spool is None:
            self._ready.append(waiting)
            self._start_ready()

    def _start_ready(self) -> None:
        """Start waiting requests while slots are free; watch for a stall if some must wait."""
        ready = self._ready
        running = self._running
        while ready and len(running) < self.slots:
            waiting = ready.popleft()
            if self.requests.get(waiting.rid) is not waiting:
                continue  # cancelled, returned or abandoned while it waited
            if self.reactor.seconds() > waiting.start_by:
                # The front has given it to another handler by now (start-timeout).
                self._give_back(waiting, Kind.END, CANCELLED)
                self._maybe_leave()
                continue
            self._run(waiting)
        if ready and self._stall_timer is None:
            delay = self._progress_at + self.prefetch_stall - self.reactor.seconds()
            self._stall_timer = self.reactor.callLater(max(0.0, delay), self._check_stall)

    def _check_stall(self) -> None:
        self._stall_timer = None
        waiting = [w for w in self._ready if self.requests.get(w.rid) is w]
        self._ready.clear()
        if not waiting:
            return
        due = self._progress_at + self.prefetch_stall
        now = self.reactor.seconds()
        if now < due:
            self._ready.extend(waiting)
            self._stall_timer = self.reactor.callLater(due - now, self._check_stall)
            return
        # Every slot has been busy for prefetch_stall without finishing: the prefetch credit
        # goes back to the front, so that it sends us no more than our slots until one
        # finishes, and then what waits here (each RETURN gives its credit back). In that
        # order: credit given back first would send the front's next request straight back here.
        if not self.stalled:
            self.stalled = True
            self.stalls += 1
            if self.prefetch:
                self._send(Kind.CREDIT, meta=((b"n", b"%d" % -self.prefetch),))
        for w in waiting:
            self._give_back(w, Kind.RETURN, ((b"r", b"stalled"),))
        self._maybe_leave()

    def _give_back(self, waiting: _Waiting, kind: Kind, meta: Meta = ()) -> None:
        """``waiting`` never ran and is no longer ours: tell the front with ``kind`` (RETURN:
        run it elsewhere; END: it is over)."""
        del self.requests[waiting.rid]
        waiting.sink.closed = True
        self._close_body(waiting.request)
        self._send(kind, waiting.rid, meta)

    def _run(self, waiting: _Waiting) -> None:
        def done(outcome: ResponseOutcome) -> None:
            self._response_done(waiting, outcome)

        self._running.add(waiting)
        self._progress_at = self.reactor.seconds()
        if waiting.request.method in RETRYABLE_METHODS:
            # The front may run these again whether or not they started, so START only tells it
            # the first-byte timeout applies: it is sent only for a response that has not begun
            # within START_DELAY (most answer sooner, and their reply implies it).
            self._owe_start(waiting.rid)

        response = response_class(self.services)(
            self.services, waiting.sink, waiting.request, waiting.environ, done
        )
        waiting.response = response
        waiting.sink.response = response
        response.run()

    def _response_done(self, waiting: _Waiting, outcome: ResponseOutcome) -> None:
        now = self.reactor.seconds()
        self.served += 1
        waiting.sink.finish(outcome)
        self._close_body(waiting.request)
        access_log = self.access_log
        if access_log is not None:
            try:
                access_log.log_exchange(
                    waiting.request.method,
                    waiting.environ,
                    outcome.status,
                    outcome.bytes_sent,
                    outcome.started,
                    now,
                )
            except Exception:
                log.failure("the access log could not be written", Failure())
        if waiting not in self._running:
            return  # abandoned with its session
        self._running.discard(waiting)
        self._progress_at = now
        if self.stalled:
            self.stalled = False
            if self.prefetch and not self.draining:
                self._send(Kind.CREDIT, meta=((b"n", b"%d" % self.prefetch),))
        self._start_ready()

    def request_over(self, rid: int) -> None:
        """END has gone for ``rid``: its slot is free (the front counts the credit back)."""
        self.requests.pop(rid, None)
        self._maybe_leave()

    def status(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "welcomed": self.welcomed,
            "draining": self.draining,
            "in_flight": len(self.requests),
            "running": len(self._running),
            "stalls": self.stalls,
            "served": self.served,
            "sessions": self.sessions,
        }
