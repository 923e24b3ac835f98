"""The split-mode front's decisions, without sockets: events in, commands out (pure: no Twisted,
no ZeroMQ).

:class:`Router` keeps the handlers (one per session: a DEALER's routing identity), the bounded
queue of requests waiting for credit, and every request's state. The Twisted shell
(:mod:`catalyzer.split.front`) feeds it handler messages, client requests and departures, the
client's draining, and clock ticks, and carries out what it returns: messages to handlers
(:class:`Send`), answers of the front's own (:class:`Reply`: 503, 502, 504), response bytes for a
client (:class:`Head`, :class:`Data`, :class:`End`), cut client connections (:class:`Abort`) and
log lines (:class:`Log`). Times are plain numbers on the caller's clock.

A request's states at the front, and what each failure does (docs/split.md has the same table)::

    queued      lost: -               gone: drop     deadline: queue timeout, 503 + Retry-After
    sent        lost: re-dispatch     gone: CANCEL   deadline: start timeout, CANCEL + re-dispatch
    started     lost: re-dispatch if  gone: CANCEL   deadline: first-byte timeout, 504 + CANCEL
    (retryable)       tries remain, else 502
    go          lost: 502             gone: CANCEL   deadline: first-byte timeout, 504 + CANCEL
    responding  lost: abort client    gone: CANCEL   deadline: stall (window open, no DATA): abort

Every dispatch has its own request id on the wire, so a reply to an earlier dispatch of the same
request (a late START from a handler the request was taken back from) can never be mistaken for
the current one: it is dropped and counted.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from catalyzer.split.frames import FROM_HANDLER, Frame, FrameError, Kind, Message, Meta, decode

__all__ = [
    "Abort",
    "Command",
    "Data",
    "End",
    "HandlerState",
    "Head",
    "Log",
    "ReadBody",
    "Reply",
    "Router",
    "RouterSettings",
    "Send",
]

QUEUED: Final = "queued"
SENT: Final = "sent"
STARTED: Final = "started"
GO: Final = "go"
RESPONDING: Final = "responding"

RETRYABLE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

# The front's heartbeats carry its clock under this key; a handler sends the stamp straight back.
PING: Final = b"p"
# How much a new round-trip sample moves the smoothed figure (as TCP's SRTT: 1/8).
RTT_WEIGHT: Final = 0.125


@dataclass(frozen=True)
class RouterSettings:
    queue_length: int = 1024
    queue_timeout: float = 30.0
    start_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    stall_timeout: float = 30.0
    retries: int = 1
    window: int = 2 * 1024 * 1024
    budget: int = 0  # response bytes ahead of clients, all responses together (0: no limit)
    heartbeat: float = 1.0
    liveness: float = 5.0
    no_handler_grace: float = 2.0
    retryable: frozenset[str] = RETRYABLE_METHODS


# -- commands


@dataclass(frozen=True)
class Send:
    """Send ``message`` (its sequence number filled in) to the handler ``identity``."""

    identity: bytes
    message: Message


@dataclass(frozen=True)
class Reply:
    """Answer the client with the front's own response (no handler will)."""

    cid: int
    status: int
    detail: str
    retry_after: int | None = None


@dataclass(frozen=True)
class Head:
    """The response begins: ``body`` holds its first bytes (the head, framed by the handler)."""

    cid: int
    status: int
    body: tuple[Frame, ...]


@dataclass(frozen=True)
class Data:
    cid: int
    body: tuple[Frame, ...]


@dataclass(frozen=True)
class End:
    """The response is complete; ``keep_alive`` is the handler's framing decision. ``body_bytes``
    is the body the app's response sent, as the handler counted it (-1 from a handler that does
    not say), for the front's access log and metrics, which count bodies as the HTTP face does."""

    cid: int
    status: int
    keep_alive: bool
    body_bytes: int = -1


@dataclass(frozen=True)
class Abort:
    """Cut the client's connection: its response cannot be completed."""

    cid: int
    why: str


@dataclass(frozen=True)
class ReadBody:
    """The handler running ``cid`` wants ``n`` body bytes from ``offset``: read them from the
    request's spooled body and pass them to :meth:`Router.body_chunk`."""

    cid: int
    offset: int
    n: int


@dataclass(frozen=True)
class Log:
    level: str
    text: str


Command = Send | Reply | Head | Data | End | Abort | ReadBody | Log

# The most body bytes one BODYREQ may ask for.
MAX_BODY_CHUNK: Final = 1024 * 1024


# -- state


@dataclass
class Pending:
    """One client request, from its arrival until its answer (or its client's departure)."""

    cid: int
    method: str
    meta: Meta
    body: tuple[Frame, ...]
    arrived: float
    body_length: int = 0  # the whole body's, which the handler pulls past what REQ carried
    state: str = QUEUED
    rid: int = 0  # the wire id of its current dispatch
    handler: bytes | None = None
    tries: int = 0  # re-dispatches after a start
    unstarted_losses: int = 0  # handlers lost holding it before its START (retried methods)
    window_left: int = 0
    exposure: int = 0  # bytes granted to its handler that its client has not taken yet
    wanted: int = 0  # window the budget withheld: granted once bytes drain elsewhere
    deadline: float | None = None
    token: int = 0  # which heap entry is current


@dataclass
class HandlerState:
    identity: bytes
    host: str
    pid: int
    tag: str
    generation: int
    slots: int
    weight: float
    joined: float
    last_heard: float
    last_sent: float
    credit: int = 0
    # Requests it takes beyond its slots, to wait there for a slot (see split.handler).
    prefetch: int = 0
    seq_in: int = 0  # the next sequence number expected from it
    seq_out: int = 0
    draining: bool = False
    # wire request id -> client id, or None once the client is gone (its END is still owed).
    in_flight: dict[int, int | None] = field(default_factory=dict)
    last_dispatch: float = 0.0
    last_ping: float = 0.0  # when the last timed heartbeat went to it
    rtt: float | None = None  # round trip time (seconds), smoothed; None until measured
    served: int = 0
    redispatched: int = 0
    errors: int = 0

    def load(self) -> float:
        return len(self.in_flight) / (max(self.slots, 1) * max(self.weight, 1e-9))

    def row(self, now: float) -> dict[str, object]:
        return {
            "host": self.host,
            "pid": self.pid,
            "tag": self.tag,
            "generation": self.generation,
            "state": "draining" if self.draining else "ready",
            "slots": self.slots,
            "prefetch": self.prefetch,
            "weight": self.weight,
            "credit": self.credit,
            "in_flight": len(self.in_flight),
            "served": self.served,
            "redispatched": self.redispatched,
            "errors": self.errors,
            "rtt": None if self.rtt is None else round(self.rtt, 6),
            "last_seen": round(now - self.last_heard, 3),
        }


class Router:
    """Decides what the front does. Times are seconds on the caller's clock."""

    def __init__(self, settings: RouterSettings = RouterSettings()) -> None:
        self.settings = settings
        self.handlers: dict[bytes, HandlerState] = {}
        self.requests: dict[int, Pending] = {}  # client id -> request
        self.queue: deque[int] = deque()
        self.tag_weights: dict[str, float] = {}
        self.counters: dict[str, int] = {
            "requests": 0,
            "dispatched": 0,
            "redispatched": 0,
            "returned_stalled": 0,
            "late_dropped": 0,
            "malformed": 0,
            "handlers_lost": 0,
            "queue_full": 0,
            "queue_timeout": 0,
            "no_handler": 0,
            "start_timeout": 0,
            "first_byte_timeout": 0,
            "stall_timeout": 0,
            "lost_after_go": 0,
            "lost_responding": 0,
            "retries_exhausted": 0,
        }
        self._rids = itertools.count(1)
        self._tokens = itertools.count(1)
        self._heap: list[tuple[float, int, int]] = []  # (deadline, token, cid)
        # The front-wide budget: bytes granted to handlers that clients have not taken, and the
        # responses waiting for a share of it, first come first served.
        self.exposed = 0
        self.starved: deque[int] = deque()

    # -- queries

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        heap = self._heap
        while heap:
            _when, token, cid = heap[0]
            pending = self.requests.get(cid)
            if pending is not None and pending.token == token:
                break
            heapq.heappop(heap)
        earliest = heap[0][0] if heap else None
        s = self.settings
        for h in self.handlers.values():
            when = min(h.last_heard + s.liveness, h.last_ping + s.heartbeat)
            if earliest is None or when < earliest:
                earliest = when
        return earliest

    def status(self, now: float) -> dict[str, object]:
        return {
            "handlers": [h.row(now) for h in self.handlers.values()],
            "queued": len(self.queue),
            "in_flight": len(self.requests) - len(self.queue),
            "buffered": self.exposed,
            "budget": self.settings.budget,
            "waiting_for_budget": len(self.starved),
            "counters": dict(self.counters),
        }

    # -- client events

    def request(
        self,
        now: float,
        cid: int,
        method: str,
        meta: Meta,
        body: tuple[Frame, ...] = (),
        body_length: int = 0,
    ) -> list[Command]:
        """A complete request from a client, to be answered exactly once. ``body`` travels with
        the request; past it, up to ``body_length``, the handler asks for the body (BODYREQ)."""
        self.counters["requests"] += 1
        if len(self.queue) >= self.settings.queue_length:
            self.counters["queue_full"] += 1
            return [Reply(cid, 503, "the front's queue is full", self._retry_after())]
        pending = Pending(cid, method, meta, body, now, body_length)
        self.requests[cid] = pending
        self._enqueue(now, pending)
        return self._dispatch(now)

    def client_gone(self, now: float, cid: int) -> list[Command]:
        """The client left (or its connection was cut): nothing more is sent for it."""
        pending = self.requests.pop(cid, None)
        if pending is None:
            return []
        if pending.state == QUEUED:
            self.queue.remove(cid)
            return []
        self._release(pending)
        return self._cancel_dispatch(now, pending) + self._dispatch(now)

    def drained(self, now: float, cid: int, n: int) -> list[Command]:
        """The client took ``n`` more bytes of its response: the handler may send ``n`` more."""
        pending = self.requests.get(cid)
        if pending is None or pending.handler is None or n <= 0:
            return []
        handler = self.handlers.get(pending.handler)
        if handler is None:
            return []
        taken = min(n, pending.exposure)
        pending.exposure -= taken
        self.exposed -= taken
        if not self.settings.budget:
            pending.exposure += n
            self.exposed += n
            pending.window_left += n
            if pending.state == RESPONDING:
                self._arm(pending, now + self.settings.stall_timeout)
            return [self._send(now, handler, Kind.WIN, pending.rid, ((b"n", b"%d" % n),))]
        # Within the budget: this window is renewed in its turn, behind those already waiting.
        if not pending.wanted:
            self.starved.append(cid)
        pending.wanted += taken
        if pending.state == RESPONDING and pending.window_left <= 0:
            self._arm(pending, None)  # nothing may be sent: no stall until it may
        return self._feed(now)

    def body_chunk(self, now: float, cid: int, offset: int, data: bytes) -> list[Command]:
        """Body bytes for the handler running ``cid`` (a :class:`ReadBody` carried out)."""
        pending = self.requests.get(cid)
        if pending is None or pending.handler is None or pending.state == QUEUED:
            return []
        handler = self.handlers.get(pending.handler)
        if handler is None:
            return []
        meta = ((b"o", b"%d" % offset),)
        return [self._send(now, handler, Kind.BODY, pending.rid, meta, (data,))]

    def drain_tag(self, now: float, tag: str) -> list[Command]:
        """Send no more work to the handlers tagged ``tag`` (they finish what they have and stay
        connected: stop them when their in-flight count is 0)."""
        out: list[Command] = []
        for h in self.handlers.values():
            if h.tag == tag and not h.draining:
                h.draining = True
                out.append(Log("info", f"handler {h.host} pid {h.pid} (tag {tag}): drained"))
        return out

    def set_tag_weight(self, now: float, tag: str, weight: float) -> list[Command]:
        self.tag_weights[tag] = weight
        for h in self.handlers.values():
            if h.tag == tag:
                h.weight = weight
        return self._dispatch(now)

    # -- handler events

    def message(self, now: float, identity: bytes, frames: Sequence[Frame]) -> list[Command]:
        """Frames from the handler ``identity`` (the ROUTER's routing id)."""
        try:
            msg = decode(frames)
        except FrameError as e:
            self.counters["malformed"] += 1
            handler = self.handlers.get(identity)
            if handler is None:
                return [Log("warn", f"malformed message from an unknown handler: {e}")]
            return self._lose(now, handler, f"malformed message: {e}")
        if msg.kind not in FROM_HANDLER:
            self.counters["malformed"] += 1
            return [Log("warn", f"a handler sent {msg.kind.name}, which only a front sends")]
        handler = self.handlers.get(identity)
        if msg.kind is Kind.HELLO:
            out: list[Command] = []
            if handler is not None:
                # A new session: what the old one held is lost (a HELLO repeated before our
                # WELCOME reached it holds nothing, and is logged as a plain rejoin).
                out += self._lose(
                    now,
                    handler,
                    "it said HELLO again (a new session)",
                    orderly=not handler.in_flight,
                )
            try:
                out += self._hello(now, identity, msg)
            except FrameError as e:
                self.counters["malformed"] += 1
                out.append(Log("warn", f"refused a handler's HELLO: {e}"))
            return out
        if handler is None:
            # A session this front does not know: one it already gave up on (partitioned,
            # frozen), or one from before a front restart. What it says is late: dropped.
            self.counters["late_dropped"] += 1
            if msg.kind is Kind.BYE:
                return []
            return [Send(identity, Message(Kind.RESET))]
        if msg.seq != handler.seq_in:
            return self._lose(
                now, handler, f"sequence gap: expected {handler.seq_in}, got {msg.seq}"
            )
        handler.seq_in += 1
        handler.last_heard = now
        try:
            return self._handle(now, handler, msg)
        except FrameError as e:
            self.counters["malformed"] += 1
            return self._lose(now, handler, f"malformed {msg.kind.name}: {e}")

    def tick(self, now: float) -> list[Command]:
        """Time has passed: heartbeats, lost handlers and request deadlines."""
        out: list[Command] = []
        s = self.settings
        for handler in list(self.handlers.values()):
            if now >= handler.last_heard + s.liveness:
                out += self._lose(now, handler, f"silent for {s.liveness:g}s")
            elif now >= handler.last_ping + s.heartbeat:
                out.append(self._ping(now, handler))
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token, cid = heapq.heappop(heap)
            pending = self.requests.get(cid)
            if pending is not None and pending.token == token:
                out += self._expired(now, pending)
        return out + self._dispatch(now)

    def handler_lost(self, now: float, identity: bytes, why: str) -> list[Command]:
        """The shell found the handler unreachable (ROUTER_MANDATORY: no route to it)."""
        handler = self.handlers.get(identity)
        return [] if handler is None else self._lose(now, handler, why)

    # -- internals

    def _retry_after(self) -> int:
        return max(1, round(self.settings.no_handler_grace))

    def _arm(self, pending: Pending, when: float | None) -> None:
        pending.token = next(self._tokens)
        pending.deadline = when
        if when is not None:
            heap = self._heap
            heapq.heappush(heap, (when, pending.token, pending.cid))
            if len(heap) > 4 * len(self.requests) + 64:
                # Stale entries leave only as they reach the top: keep the live ones.
                requests = self.requests
                heap[:] = [
                    e for e in heap if (p := requests.get(e[2])) is not None and p.token == e[1]
                ]
                heapq.heapify(heap)

    def _enqueue(self, now: float, pending: Pending, front: bool = False) -> None:
        self._release(pending)  # a dispatch again: a new window
        pending.state = QUEUED
        pending.handler = None
        pending.rid = 0
        s = self.settings
        if self.handlers:
            self._arm(pending, pending.arrived + s.queue_timeout)
        else:
            self._arm(pending, min(pending.arrived + s.queue_timeout, now + s.no_handler_grace))
        if front:
            self.queue.appendleft(pending.cid)
        else:
            self.queue.append(pending.cid)

    def _send(
        self,
        now: float,
        handler: HandlerState,
        kind: Kind,
        rid: int = 0,
        meta: Meta = (),
        body: tuple[Frame, ...] = (),
    ) -> Send:
        seq = handler.seq_out
        handler.seq_out += 1
        handler.last_sent = now
        return Send(handler.identity, Message(kind, seq, rid, meta, body))

    def _ping(self, now: float, handler: HandlerState) -> Send:
        """A heartbeat every interval, busy or idle, stamped with our clock: the handler echoes
        the stamp at once from its reactor thread, so the round trip is the hop's (both
        sockets, the network, both reactors' turns) and never the app's."""
        handler.last_ping = now
        return self._send(now, handler, Kind.HB, meta=((PING, repr(now).encode()),))

    def _rtt_sample(self, now: float, handler: HandlerState, msg: Message) -> None:
        try:
            sent = msg.get_float(PING, math.nan)
        except FrameError:
            return  # a stamp we cannot read: no sample (the session goes on)
        sample = now - sent  # nan without a stamp
        if not 0 <= sample <= self.settings.liveness:
            return  # not one of this session's stamps
        old = handler.rtt
        handler.rtt = sample if old is None else old + RTT_WEIGHT * (sample - old)

    def _release(self, pending: Pending) -> None:
        """``pending``'s dispatch is over: what it held of the budget is free."""
        self.exposed -= pending.exposure
        pending.exposure = 0
        pending.wanted = 0

    def _feed(self, now: float) -> list[Command]:
        """Renew the windows the budget withheld, first come first served, while it lasts."""
        out: list[Command] = []
        starved = self.starved
        budget = self.settings.budget
        while starved:
            pending = self.requests.get(starved[0])
            if pending is None or not pending.wanted or pending.state == QUEUED:
                starved.popleft()
                continue
            free = budget - self.exposed
            if free <= 0:
                break
            handler = self.handlers.get(pending.handler) if pending.handler is not None else None
            if handler is None:
                starved.popleft()
                continue
            grant = min(pending.wanted, free)
            pending.wanted -= grant
            pending.exposure += grant
            self.exposed += grant
            pending.window_left += grant
            if pending.state == RESPONDING:
                self._arm(pending, now + self.settings.stall_timeout)
            out.append(self._send(now, handler, Kind.WIN, pending.rid, ((b"n", b"%d" % grant),)))
            if pending.wanted:
                break  # the budget is spent
            starved.popleft()
        return out

    def _pick(self) -> HandlerState | None:
        best: HandlerState | None = None
        best_key: tuple[float, float] | None = None
        for h in self.handlers.values():
            if h.draining or h.credit <= 0 or h.weight <= 0:
                continue
            key = (h.load(), h.last_dispatch)
            if best_key is None or key < best_key:
                best, best_key = h, key
        return best

    def _dispatch(self, now: float) -> list[Command]:
        # Windows waiting for the budget come before new responses.
        out: list[Command] = self._feed(now) if self.starved else []
        queue = self.queue
        while queue:
            handler = self._pick()
            if handler is None:
                break
            cid = queue.popleft()
            pending = self.requests[cid]
            rid = next(self._rids)
            handler.credit -= 1
            handler.in_flight[rid] = cid
            handler.last_dispatch = now
            pending.state = SENT
            pending.rid = rid
            pending.handler = handler.identity
            window = self.settings.window
            budget = self.settings.budget
            if budget:
                # A new response's first window comes out of the budget too; what is missing
                # is granted as bytes drain (before that, not even its head can come).
                share = min(window, max(0, budget - self.exposed))
                if share < window:
                    pending.wanted = window - share
                    self.starved.append(cid)
                window = share
            pending.window_left = window
            pending.exposure = window
            self.exposed += window
            start = self.settings.start_timeout
            self._arm(pending, now + start)
            self.counters["dispatched"] += 1
            meta = (*pending.meta, (b"dl", b"%g" % start), (b"w", b"%d" % window))
            out.append(self._send(now, handler, Kind.REQ, rid, meta, pending.body))
        return out

    def _cancel_dispatch(self, now: float, pending: Pending) -> list[Command]:
        """Tell the handler to drop ``pending``'s current dispatch. Its END (which returns the
        credit) is still awaited; anything else it sends for it is dropped."""
        rid = pending.rid
        handler = self.handlers.get(pending.handler) if pending.handler is not None else None
        if handler is None or rid not in handler.in_flight:
            return []
        handler.in_flight[rid] = None
        return [self._send(now, handler, Kind.CANCEL, rid)]

    def _answer(self, pending: Pending) -> None:
        """``pending`` has had (or is getting) its one answer: forget it."""
        self.requests.pop(pending.cid, None)
        pending.token = 0
        self._release(pending)

    def _hello(self, now: float, identity: bytes, msg: Message) -> list[Command]:
        s = self.settings
        slots = msg.get_int(b"slots")
        if slots < 1:
            raise FrameError("HELLO: slots must be 1 or more")
        prefetch = msg.get_int(b"pf", 0)
        if prefetch < 0:
            raise FrameError("HELLO: pf must be 0 or more")
        tag = msg.get_text(b"tag")
        weight = self.tag_weights.get(tag, msg.get_float(b"weight", 1.0))
        handler = HandlerState(
            identity=identity,
            host=msg.get_text(b"host", "?"),
            pid=msg.get_int(b"pid", 0),
            tag=tag,
            generation=msg.get_int(b"gen", 0),
            slots=slots,
            weight=weight,
            joined=now,
            last_heard=now,
            last_sent=now,
            last_ping=now,
            credit=slots + prefetch,
            prefetch=prefetch,
            seq_in=msg.seq + 1,
        )
        self.handlers[identity] = handler
        welcome = self._send(
            now,
            handler,
            Kind.WELCOME,
            meta=(
                (b"hb", b"%g" % s.heartbeat),
                (b"live", b"%g" % s.liveness),
                (b"w", b"%d" % s.window),
            ),
        )
        line = Log(
            "info",
            f"handler {handler.host} pid {handler.pid} tag {tag or '-'} joined with {slots} slots"
            + (f" and {prefetch} prefetched" if prefetch else ""),
        )
        # Requests queued with the short no-handler deadline now wait the full queue timeout.
        for cid in self.queue:
            pending = self.requests[cid]
            self._arm(pending, pending.arrived + s.queue_timeout)
        return [line, welcome, *self._dispatch(now)]

    def _handle(self, now: float, handler: HandlerState, msg: Message) -> list[Command]:
        kind = msg.kind
        if kind is Kind.HB:
            if msg.meta:
                self._rtt_sample(now, handler, msg)
            return []
        if kind is Kind.CREDIT:
            handler.credit += msg.get_int(b"n")
            return self._dispatch(now)
        if kind is Kind.DRAIN:
            handler.draining = True
            return [Log("info", f"handler {handler.host} pid {handler.pid} is draining")]
        if kind is Kind.BYE:
            return self._lose(now, handler, "it left (BYE)", orderly=True)
        rid = msg.rid
        if rid not in handler.in_flight:
            self.counters["late_dropped"] += 1
            return []
        cid = handler.in_flight[rid]
        over = kind is Kind.END or kind is Kind.RETURN or kind is Kind.REPLY
        # Read before the request is over for the handler, so a bad one loses it with the rest.
        status = msg.get_int(b"st") if kind is Kind.REPLY else 0
        if over:
            del handler.in_flight[rid]
            handler.credit += 1
        pending = self.requests.get(cid) if cid is not None else None
        if pending is None or pending.rid != rid:
            # The client left, or the request was taken back (start timeout): drop the rest.
            if not over:
                self.counters["late_dropped"] += 1
            return self._dispatch(now) if over else []
        s = self.settings
        if kind is Kind.REPLY:
            # A whole response in one message (it implies START, HEAD and END).
            self._answer(pending)
            handler.served += 1
            keep_alive = msg.get(b"ka") == b"1"
            first: Command = (
                Data(pending.cid, msg.body)
                if pending.state == RESPONDING
                else Head(pending.cid, status, msg.body)
            )
            end = End(pending.cid, status, keep_alive, msg.get_int(b"bs", -1))
            return [first, end, *self._dispatch(now)]
        if kind is Kind.START:
            if pending.state != SENT:
                return []
            if pending.method in s.retryable:
                pending.state = STARTED
                self._arm(pending, now + s.first_byte_timeout)
                return []
            pending.state = GO
            self._arm(pending, now + s.first_byte_timeout)
            return [self._send(now, handler, Kind.GO, rid)]
        if kind is Kind.BODYREQ:
            offset, n = msg.get_int(b"o"), msg.get_int(b"n")
            if not (0 <= offset <= pending.body_length and 0 < n <= MAX_BODY_CHUNK):
                raise FrameError(
                    f"BODYREQ: {n} bytes at {offset} of a {pending.body_length}-byte body"
                )
            return [ReadBody(pending.cid, offset, min(n, pending.body_length - offset))]
        if kind is Kind.HEAD:
            status = msg.get_int(b"st")
            pending.state = RESPONDING
            pending.window_left -= msg.body_length
            self._arm(pending, now + s.stall_timeout if pending.window_left > 0 else None)
            return [Head(pending.cid, status, msg.body)]
        if kind is Kind.DATA:
            if pending.state != RESPONDING:
                return self._lose(now, handler, "DATA before HEAD")
            pending.window_left -= msg.body_length
            self._arm(pending, now + s.stall_timeout if pending.window_left > 0 else None)
            return [Data(pending.cid, msg.body)]
        if kind is Kind.RETURN or (kind is Kind.END and pending.state in (SENT, GO, STARTED)):
            # Given back without a response: the app never ran (a RETURN, or an END that says
            # the deadline passed or the handler is leaving) or it did not answer (END: no HEAD).
            ran = kind is Kind.END and msg.get(b"ran") == b"1"
            if ran:
                handler.errors += 1
                self._answer(pending)
                return [
                    Reply(pending.cid, 502, "the handler ended the request without a response"),
                    *self._dispatch(now),
                ]
            handler.redispatched += 1
            self.counters["redispatched"] += 1
            if kind is Kind.RETURN and msg.get(b"r") == b"stalled":
                self.counters["returned_stalled"] += 1
            self._enqueue(now, pending, front=True)
            return self._dispatch(now)
        # END after HEAD
        self._answer(pending)
        if msg.get(b"ab") == b"1":
            # The response failed part-way at the handler (the app's iterable raised, a length
            # that does not match): the client must not take what it got as whole.
            handler.errors += 1
            return [
                Abort(pending.cid, "the handler cut the response (see its log)"),
                *self._dispatch(now),
            ]
        handler.served += 1
        status = msg.get_int(b"st")
        return [
            End(pending.cid, status, msg.get(b"ka") == b"1", msg.get_int(b"bs", -1)),
            *self._dispatch(now),
        ]

    def _expired(self, now: float, pending: Pending) -> list[Command]:
        s = self.settings
        state = pending.state
        if state == QUEUED:
            self.queue.remove(pending.cid)
            self._answer(pending)
            if not self.handlers:
                self.counters["no_handler"] += 1
                return [Reply(pending.cid, 503, "no handler is connected", self._retry_after())]
            self.counters["queue_timeout"] += 1
            return [
                Reply(
                    pending.cid,
                    503,
                    f"no handler took the request within {s.queue_timeout:g}s",
                    self._retry_after(),
                )
            ]
        if state == SENT:
            self.counters["start_timeout"] += 1
            out = self._cancel_dispatch(now, pending)
            self.counters["redispatched"] += 1
            self._enqueue(now, pending, front=True)
            return out
        if state in (STARTED, GO):
            self.counters["first_byte_timeout"] += 1
            out = self._cancel_dispatch(now, pending)
            self._answer(pending)
            return [
                *out,
                Reply(pending.cid, 504, f"no response began within {s.first_byte_timeout:g}s"),
            ]
        # responding: the window is open and the handler sent nothing for stall_timeout
        self.counters["stall_timeout"] += 1
        out = self._cancel_dispatch(now, pending)
        self._answer(pending)
        return [
            *out,
            Abort(pending.cid, f"the handler sent nothing for {s.stall_timeout:g}s"),
        ]

    def _lose(
        self, now: float, handler: HandlerState, why: str, orderly: bool = False
    ) -> list[Command]:
        """The handler is gone: every request it held is re-dispatched, answered or cut, per
        its state."""
        del self.handlers[handler.identity]
        if not orderly:
            self.counters["handlers_lost"] += 1
        out: list[Command] = [
            Log(
                "info" if orderly else "warn",
                f"handler {handler.host} pid {handler.pid} lost: {why}"
                if not orderly
                else f"handler {handler.host} pid {handler.pid} left",
            )
        ]
        retries = self.settings.retries
        requeue: list[Pending] = []
        for rid, cid in handler.in_flight.items():
            if cid is None:
                continue
            pending = self.requests.get(cid)
            if pending is None or pending.rid != rid:
                continue
            state = pending.state
            if state == SENT and pending.method in self.settings.retryable:
                # A retried method sends START only when its response is slow to begin, so it
                # may have run, and killed the handler: past retries + 1 such losses it is not
                # sent to another one (a request that kills every handler would go round them).
                pending.unstarted_losses += 1
                if pending.unstarted_losses <= retries + 1:
                    requeue.append(pending)
                else:
                    self.counters["retries_exhausted"] += 1
                    self._answer(pending)
                    out.append(
                        Reply(
                            cid,
                            502,
                            f"the handler was lost ({why}), the {pending.unstarted_losses}th "
                            "to be lost holding this request",
                        )
                    )
            elif state == SENT:
                requeue.append(pending)
            elif state == STARTED and pending.tries < retries:
                pending.tries += 1
                requeue.append(pending)
            elif state == STARTED:
                self.counters["retries_exhausted"] += 1
                self._answer(pending)
                out.append(Reply(cid, 502, f"the handler was lost ({why}) and no tries remain"))
            elif state == GO:
                self.counters["lost_after_go"] += 1
                self._answer(pending)
                out.append(Reply(cid, 502, f"the handler was lost ({why}) after it was told to go"))
            else:
                self.counters["lost_responding"] += 1
                self._answer(pending)
                out.append(Abort(cid, f"the handler was lost mid-response ({why})"))
        for pending in reversed(requeue):  # in their original order, ahead of the queue
            self.counters["redispatched"] += 1
            self._enqueue(now, pending, front=True)
        if not self.handlers:
            # Nobody left: what waits gets the short no-handler grace.
            for cid in self.queue:
                p = self.requests[cid]
                grace = now + self.settings.no_handler_grace
                if p.deadline is None or grace < p.deadline:
                    self._arm(p, grace)
        return out + self._dispatch(now)
