"""The split-mode router as a plain object: every cell of the failure table, credit accounting,
sequence gaps and late replies, with plain numbers for time."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from catalyzer.split.frames import Kind, Message, encode
from catalyzer.split.router import (
    Abort,
    Command,
    Data,
    End,
    Head,
    Log,
    Reply,
    Router,
    RouterSettings,
    Send,
)

SETTINGS = RouterSettings(
    queue_length=4,
    queue_timeout=30.0,
    start_timeout=5.0,
    first_byte_timeout=60.0,
    stall_timeout=20.0,
    retries=1,
    window=1000,
    heartbeat=1.0,
    liveness=5.0,
    no_handler_grace=2.0,
)


class Peer:
    """A handler session, as the router hears it."""

    def __init__(self, router: Router, name: bytes, slots: int = 2, **hello: str) -> None:
        self.router = router
        self.identity = name
        self.seq = 0
        self.slots = slots
        self.hello_meta = hello

    def say(
        self,
        now: float,
        kind: Kind,
        rid: int = 0,
        meta: tuple[tuple[bytes, bytes], ...] = (),
        body: tuple[bytes, ...] = (),
    ) -> list[Command]:
        frames = encode(Message(kind, self.seq, rid, meta, body))
        self.seq += 1
        return self.router.message(now, self.identity, frames)

    def hello(self, now: float = 0.0) -> list[Command]:
        self.seq = 0
        meta = [(b"slots", b"%d" % self.slots), (b"host", b"h"), (b"pid", b"7")]
        meta += [(k.encode(), v.encode()) for k, v in self.hello_meta.items()]
        return self.say(now, Kind.HELLO, meta=tuple(meta))


def sends(commands: Sequence[Command], kind: Kind, to: bytes | None = None) -> list[Message]:
    return [
        c.message
        for c in commands
        if isinstance(c, Send) and c.message.kind is kind and (to is None or c.identity == to)
    ]


def reqs_to(commands: Sequence[Command], peer: Peer) -> list[int]:
    return [m.rid for m in sends(commands, Kind.REQ, peer.identity)]


def only(commands: Sequence[Command], kind: type) -> list[object]:
    return [c for c in commands if isinstance(c, kind)]


def new(settings: RouterSettings = SETTINGS) -> Router:
    return Router(settings)


def get(router: Router, cid: int, now: float = 0.0, method: str = "GET") -> list[Command]:
    return router.request(now, cid, method, ((b"m", method.encode()),), (b"body",))


# -- credit routing


def test_hello_welcomes_and_grants_credit() -> None:
    router = new()
    a = Peer(router, b"a", slots=3)
    out = a.hello()
    (welcome,) = sends(out, Kind.WELCOME)
    assert welcome.get_int(b"w") == 1000
    assert router.handlers[b"a"].credit == 3


def test_requests_go_to_the_least_loaded_handler_with_credit() -> None:
    router = new()
    a, b = Peer(router, b"a"), Peer(router, b"b")
    a.hello()
    b.hello()
    out: list[Command] = []
    for cid in range(1, 5):
        out += get(router, cid)
    assert len(reqs_to(out, a)) == 2
    assert len(reqs_to(out, b)) == 2
    # No credit left: the fifth waits in the queue, not behind a busy handler.
    assert reqs_to(get(router, 5), a) == reqs_to(get(router, 6), b) == []
    assert list(router.queue) == [5, 6]
    rid = reqs_to(out, b)[0]
    b.say(0, Kind.START, rid)
    b.say(0, Kind.HEAD, rid, ((b"st", b"200"),), (b"HTTP/1.1 200 OK\r\n\r\n",))
    done = b.say(0, Kind.END, rid, ((b"st", b"200"), (b"ka", b"1")))
    assert [(e.status, e.keep_alive) for e in only(done, End)] == [(200, True)]  # type: ignore[attr-defined]
    assert reqs_to(done, b) != []  # the credit came back: the queue's head goes there
    assert list(router.queue) == [6]


def test_request_body_and_deadline_travel_with_the_request() -> None:
    router = new()
    a = Peer(router, b"a")
    a.hello()
    (req,) = sends(get(router, 1, method="POST"), Kind.REQ)
    assert req.body == (b"body",)
    assert req.get(b"m") == b"POST"
    assert req.get_float(b"dl", 0) == 5.0
    assert req.get_int(b"w") == 1000


def test_weight_zero_gets_no_work_and_tag_weights_apply() -> None:
    router = new()
    a = Peer(router, b"a", tag="v42")
    b = Peer(router, b"b", tag="v43")
    a.hello()
    b.hello()
    router.set_tag_weight(0, "v43", 0.0)
    out = get(router, 1) + get(router, 2)
    assert reqs_to(out, b) == []
    assert len(reqs_to(out, a)) == 2
    assert reqs_to(router.set_tag_weight(0, "v43", 1.0), b) == []  # nothing waiting
    assert reqs_to(get(router, 3), b) != []


def test_credit_message_adds_credit() -> None:
    router = new()
    a = Peer(router, b"a", slots=1)
    a.hello()
    get(router, 1)
    assert reqs_to(get(router, 2), a) == []
    assert reqs_to(a.say(0, Kind.CREDIT, meta=((b"n", b"1"),)), a) != []


def test_prefetch_adds_credit_but_idle_slots_come_first() -> None:
    router = new()
    a = Peer(router, b"a", slots=1, pf="2")
    b = Peer(router, b"b", slots=1)
    a.hello()
    b.hello()
    assert router.handlers[b"a"].credit == 3
    assert router.handlers[b"a"].row(0)["prefetch"] == 2
    # One each while a slot is idle somewhere, then the prefetch: a request waits at a busy
    # handler only when no handler has a slot free.
    out = get(router, 1) + get(router, 2)
    assert len(reqs_to(out, a)) == len(reqs_to(out, b)) == 1
    out = get(router, 3) + get(router, 4) + get(router, 5)
    assert len(reqs_to(out, a)) == 2
    assert list(router.queue) == [5]


def test_negative_credit_takes_the_prefetch_back_until_given_again() -> None:
    router = new()
    a = Peer(router, b"a", slots=1, pf="2")
    a.hello()
    out = get(router, 1)
    (rid,) = reqs_to(out, a)
    # A stalled handler: its slot is busy, and it wants no more than its slot.
    assert a.say(0.1, Kind.CREDIT, meta=((b"n", b"-2"),)) == []
    assert reqs_to(get(router, 2, 0.2), a) == []
    assert list(router.queue) == [2]
    done = a.say(
        0.3, Kind.REPLY, rid, ((b"st", b"200"), (b"ka", b"1")), (b"HTTP/1.1 200 OK\r\n\r\n",)
    )
    assert only(done, End)
    assert len(reqs_to(done, a)) == 1  # the slot's credit came back with the reply
    assert len(reqs_to(a.say(0.4, Kind.CREDIT, meta=((b"n", b"2"),)), a)) == 0  # none waiting
    assert router.handlers[b"a"].credit == 2
    # What a stalled handler gives back goes first to whichever handler has credit.
    (rid,) = reqs_to(get(router, 3, 0.5), a)
    again = a.say(0.6, Kind.RETURN, rid, ((b"r", b"stalled"),))
    assert reqs_to(again, a) == [rid + 1]
    assert router.counters["returned_stalled"] == 1
    assert router.handlers[b"a"].redispatched == 1


def test_a_stalled_handlers_requests_wait_at_the_front_not_sent_back_to_it() -> None:
    router = new()
    a = Peer(router, b"a", slots=1, pf="2")
    a.hello()
    (busy,) = reqs_to(get(router, 1), a)
    (waiting,) = reqs_to(get(router, 2), a)
    # A stall, as the handler says it: its prefetch back first, then what waited.
    assert a.say(0.1, Kind.CREDIT, meta=((b"n", b"-2"),)) == []
    assert reqs_to(a.say(0.1, Kind.RETURN, waiting, ((b"r", b"stalled"),)), a) == []
    assert list(router.queue) == [2]
    done = a.say(
        0.5, Kind.REPLY, busy, ((b"st", b"200"), (b"ka", b"1")), (b"HTTP/1.1 200 OK\r\n\r\n",)
    )
    assert len(reqs_to(done, a)) == 1  # its slot is free again: the queue's head goes there


# -- queued


def test_queue_full_is_503_at_once() -> None:
    router = new()
    for cid in range(4):
        assert get(router, cid) == []
    (reply,) = only(get(router, 9), Reply)
    assert reply == Reply(9, 503, "the front's queue is full", 2)


def test_no_handler_503_after_the_grace_not_before() -> None:
    router = new()
    get(router, 1, now=10.0)
    assert router.next_deadline() == 12.0
    assert only(router.tick(11.9), Reply) == []
    (reply,) = only(router.tick(12.0), Reply)
    assert (reply.status, reply.retry_after) == (503, 2)
    assert "no handler" in reply.detail
    assert router.requests == {}


def test_a_handler_joining_within_the_grace_takes_the_queue() -> None:
    router = new()
    get(router, 1, now=0.0)
    a = Peer(router, b"a")
    assert len(reqs_to(a.hello(1.0), a)) == 1
    assert only(router.tick(2.5), Reply) == []


def test_queue_timeout_503_with_retry_after() -> None:
    router = new()
    a = Peer(router, b"a", slots=1)
    a.hello()
    get(router, 1)
    a.say(0.5, Kind.START, router.requests[1].rid)  # busy for a long time
    get(router, 2, now=1.0)
    for t in range(2, 31):
        a.say(float(t), Kind.HB)
        assert only(router.tick(float(t)), Reply) == []
    (reply,) = only(router.tick(31.0), Reply)
    assert (reply.cid, reply.status, reply.retry_after) == (2, 503, 2)
    assert router.counters["queue_timeout"] == 1


def test_client_gone_while_queued_is_dropped() -> None:
    router = new()
    get(router, 1)
    assert router.client_gone(0.5, 1) == []
    assert router.tick(100.0) == []
    assert router.requests == {} and not router.queue


# -- sent, not started


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unstarted_work_is_redispatched_on_handler_loss_whatever_the_method(method: str) -> None:
    router = new()
    a, b = Peer(router, b"a", slots=1), Peer(router, b"b", slots=1)
    a.hello()
    b.hello()
    get(router, 1, method=method)
    get(router, 2, method=method)
    holder = router.handlers[router.requests[1].handler]  # type: ignore[index]
    other = a if holder.identity == b"b" else b
    other.say(0.1, Kind.START, router.requests[2].rid)
    other.say(4.0, Kind.HB)
    out = router.tick(5.0)  # the holder is silent for liveness: lost
    assert any(isinstance(c, Log) and "lost" in c.text for c in out)
    assert router.requests[1].state == "queued"  # waits for credit: the other is busy
    other.say(5.1, Kind.HEAD, router.requests[2].rid, ((b"st", b"200"),), (b"x",))
    out = other.say(5.2, Kind.END, router.requests[2].rid, ((b"st", b"200"), (b"ka", b"1")))
    assert reqs_to(out, other) == [router.requests[1].rid]
    assert router.counters["redispatched"] == 1
    assert only(out, Reply) == []


def test_client_gone_while_sent_cancels_and_the_end_returns_the_credit() -> None:
    router = new()
    a = Peer(router, b"a", slots=1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    (cancel,) = sends(router.client_gone(0.5, 1), Kind.CANCEL)
    assert cancel.rid == rid
    assert router.handlers[b"a"].credit == 0
    assert a.say(0.6, Kind.HEAD, rid, ((b"st", b"200"),), (b"x",)) == []
    assert router.counters["late_dropped"] == 1
    a.say(0.7, Kind.END, rid, ((b"r", b"cancelled"),))
    assert router.handlers[b"a"].credit == 1
    assert router.handlers[b"a"].in_flight == {}


def test_start_timeout_cancels_and_redispatches_and_a_late_start_gets_no_go() -> None:
    router = new()
    a, b = Peer(router, b"a", slots=1), Peer(router, b"b", slots=1)
    a.hello()
    b.hello()
    out = get(router, 1, method="POST")
    first = reqs_to(out, a) or reqs_to(out, b)
    holder, other = (a, b) if reqs_to(out, a) else (b, a)
    holder.say(2.0, Kind.HB)
    other.say(2.0, Kind.HB)
    out = router.tick(5.0)
    assert [m.rid for m in sends(out, Kind.CANCEL, holder.identity)] == first
    (second,) = reqs_to(out, other)
    assert router.counters["start_timeout"] == 1
    # The holder's START was on its way: no GO for it (at most once), dropped and counted.
    late = holder.say(5.1, Kind.START, first[0])
    assert sends(late, Kind.GO) == []
    assert router.counters["late_dropped"] == 1
    go = other.say(5.2, Kind.START, second)
    assert [m.rid for m in sends(go, Kind.GO, other.identity)] == [second]


# -- started, retryable method


def test_started_get_with_nothing_sent_is_redispatched_once_then_502() -> None:
    router = new()
    a, b, c = Peer(router, b"a", 1), Peer(router, b"b", 1), Peer(router, b"c", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    assert sends(a.say(0.1, Kind.START, rid), Kind.GO) == []  # retryable: no GO round trip
    b.hello(0.2)
    out = router.handler_lost(0.3, b"a", "no route")
    (rid2,) = reqs_to(out, b)
    b.say(0.4, Kind.START, rid2)
    c.hello(0.5)
    out = router.handler_lost(0.6, b"b", "no route")
    (reply,) = only(out, Reply)
    assert reply.status == 502 and "no tries remain" in reply.detail
    assert reqs_to(out, c) == []
    assert router.counters["retries_exhausted"] == 1


def test_started_first_byte_timeout_504_and_cancel() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    a.say(1.0, Kind.START, rid)
    for t in range(2, 61):
        a.say(float(t), Kind.HB)
    assert only(router.tick(60.9), Reply) == []
    out = router.tick(61.0)
    (reply,) = only(out, Reply)
    assert reply.status == 504
    assert [m.rid for m in sends(out, Kind.CANCEL)] == [rid]


def test_started_client_gone_cancels() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    a.say(0.1, Kind.START, rid)
    assert [m.rid for m in sends(router.client_gone(0.2, 1), Kind.CANCEL)] == [rid]


# -- GO sent (methods that are not retried)


def test_post_gets_go_and_is_never_retried_after_it() -> None:
    router = new()
    a, b = Peer(router, b"a", 1), Peer(router, b"b", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="POST"), a)
    (go,) = sends(a.say(0.1, Kind.START, rid), Kind.GO)
    assert go.rid == rid
    b.hello(0.2)
    out = router.handler_lost(0.3, b"a", "sequence gap")
    (reply,) = only(out, Reply)
    assert reply.status == 502 and "after it was told to go" in reply.detail
    assert reqs_to(out, b) == []
    assert router.counters["lost_after_go"] == 1


def test_go_first_byte_timeout_504() -> None:
    router = new(RouterSettings(first_byte_timeout=3.0, liveness=100.0))
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="PUT"), a)
    a.say(0.1, Kind.START, rid)
    out = router.tick(3.1)
    assert [r.status for r in only(out, Reply)] == [504]  # type: ignore[attr-defined]
    assert [m.rid for m in sends(out, Kind.CANCEL)] == [rid]


# -- responding


def respond(router: Router, a: Peer, method: str = "GET") -> int:
    (rid,) = reqs_to(get(router, 1, method=method), a)
    a.say(0.1, Kind.START, rid)
    out = a.say(0.2, Kind.HEAD, rid, ((b"st", b"200"),), (b"HTTP/1.1 200 OK\r\n\r\n",))
    assert only(out, Head) == [Head(1, 200, (b"HTTP/1.1 200 OK\r\n\r\n",))]
    return rid


def test_response_flows_and_ends() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    rid = respond(router, a)
    assert only(a.say(0.3, Kind.DATA, rid, (), (b"abc",)), Data) == [Data(1, (b"abc",))]
    out = a.say(0.4, Kind.END, rid, ((b"st", b"200"), (b"ka", b"0")))
    assert only(out, End) == [End(1, 200, False)]
    assert router.requests == {}
    assert router.handlers[b"a"].served == 1


def test_end_carries_the_body_size_the_handler_counted() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    rid = respond(router, a)
    out = a.say(0.4, Kind.END, rid, ((b"st", b"200"), (b"ka", b"1"), (b"bs", b"123")))
    assert only(out, End) == [End(1, 200, True, 123)]


def test_handler_lost_mid_response_aborts_the_client() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    respond(router, a)
    out = router.handler_lost(1.0, b"a", "no route")
    assert [c.cid for c in only(out, Abort)] == [1]  # type: ignore[attr-defined]
    assert only(out, Reply) == []


def test_stall_timeout_only_while_the_window_is_open() -> None:
    router = new(RouterSettings(window=100, stall_timeout=2.0, liveness=1000.0, heartbeat=1000.0))
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    a.say(0.1, Kind.START, rid)
    a.say(0.2, Kind.HEAD, rid, ((b"st", b"200"),), (b"h" * 40,))
    a.say(0.3, Kind.DATA, rid, (), (b"d" * 60,))  # the window is used up: the client is slow
    assert only(router.tick(50.0), Abort) == []
    (win,) = sends(router.drained(50.0, 1, 100), Kind.WIN)
    assert (win.rid, win.get_int(b"n")) == (rid, 100)
    assert only(router.tick(51.9), Abort) == []
    out = router.tick(52.0)
    assert [c.cid for c in only(out, Abort)] == [1]  # type: ignore[attr-defined]
    assert [m.rid for m in sends(out, Kind.CANCEL)] == [rid]


def test_client_gone_mid_response_cancels_and_drops_the_rest() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    rid = respond(router, a)
    assert [m.rid for m in sends(router.client_gone(1.0, 1), Kind.CANCEL)] == [rid]
    assert a.say(1.1, Kind.DATA, rid, (), (b"x",)) == []
    a.say(1.2, Kind.END, rid, ((b"st", b"200"),))
    assert router.handlers[b"a"].credit == 1


# -- sessions: gaps, late replies, orderly leaving


def test_sequence_gap_is_a_lost_handler() -> None:
    router = new()
    a, b = Peer(router, b"a", 1), Peer(router, b"b", 1)
    a.hello()
    (_rid,) = reqs_to(get(router, 1), a)
    b.hello()
    a.seq += 1  # one message lost on the way
    out = a.say(0.5, Kind.HB)
    assert any(isinstance(c, Log) and "sequence gap" in c.text for c in out)
    assert reqs_to(out, b) != []  # its unstarted request went elsewhere
    assert b"a" not in router.handlers


def test_late_replies_of_an_old_session_are_dropped_counted_and_reset() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1), a)
    a.say(0.1, Kind.START, rid)
    router.tick(6.0)  # partitioned: silent past liveness
    assert b"a" not in router.handlers
    out = a.say(7.0, Kind.HEAD, rid, ((b"st", b"200"),), (b"x",))
    assert only(out, Head) == []
    assert [m.kind for m in sends(out, Kind.RESET)] == [Kind.RESET]
    assert router.counters["late_dropped"] == 1
    # It comes back with a new session and gets work again: the started GET, re-dispatched
    # (nothing had reached its client), under a new wire id.
    out = a.hello(8.0)
    assert reqs_to(out, a) == [router.requests[1].rid]
    assert router.requests[1].rid != rid


def test_hello_on_a_live_session_loses_the_old_one() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="POST"), a)
    a.say(0.1, Kind.START, rid)
    out = a.hello(0.2)
    assert [r.status for r in only(out, Reply)] == [502]  # type: ignore[attr-defined]
    assert router.handlers[b"a"].credit == 1


def test_malformed_message_from_a_handler_loses_it() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    out = router.message(0.1, b"a", [b"garbage"])
    assert any(isinstance(c, Log) and "malformed" in c.text for c in out)
    assert b"a" not in router.handlers
    assert router.counters["malformed"] == 1
    assert only(router.message(0.2, b"zz", [b"x"]), Log)  # unknown sender: a line, nothing else


def test_front_only_kinds_from_a_handler_are_refused() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    out = a.say(0.1, Kind.GO, 5)
    assert only(out, Log)
    assert router.counters["malformed"] == 1


@pytest.mark.parametrize(
    ("meta", "named"),
    [(((b"slots", b"x"),), "slots"), (((b"slots", b"1"), (b"pf", b"-1")), "pf")],
)
def test_bad_hello_is_refused_with_a_line(
    meta: tuple[tuple[bytes, bytes], ...], named: str
) -> None:
    router = new()
    out = router.message(0.0, b"a", encode(Message(Kind.HELLO, meta=meta)))
    assert b"a" not in router.handlers
    assert any(isinstance(c, Log) and named in c.text for c in out)


def test_drain_then_bye() -> None:
    router = new()
    a, b = Peer(router, b"a", 1), Peer(router, b"b", 1)
    a.hello()
    b.hello()
    a.say(0.1, Kind.DRAIN)
    out = get(router, 1) + get(router, 2)
    assert reqs_to(out, a) == []
    assert len(reqs_to(out, b)) == 1
    out = a.say(0.2, Kind.BYE)
    assert b"a" not in router.handlers
    assert router.counters["handlers_lost"] == 0
    assert only(out, Reply) == []


def test_returned_request_goes_elsewhere() -> None:
    router = new()
    a, b = Peer(router, b"a", 1), Peer(router, b"b", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="POST"), a)
    a.say(0.1, Kind.DRAIN)
    b.hello(0.2)
    out = a.say(0.3, Kind.RETURN, rid)
    assert reqs_to(out, b) != []
    assert router.handlers[b"a"].credit == 1


def test_end_without_response_after_the_app_ran_is_502() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="POST"), a)
    a.say(0.1, Kind.START, rid)
    out = a.say(0.2, Kind.END, rid, ((b"ran", b"1"),))
    assert [r.status for r in only(out, Reply)] == [502]  # type: ignore[attr-defined]


def test_expired_end_before_start_is_redispatched() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    (rid,) = reqs_to(get(router, 1, method="POST"), a)
    out = a.say(0.1, Kind.END, rid, ((b"r", b"expired"),))
    assert reqs_to(out, a) != []  # the credit is back and the request goes again


def test_heartbeats_when_idle_and_next_deadline() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello(0.0)
    assert router.next_deadline() == 1.0
    assert [m.kind for m in sends(router.tick(1.0), Kind.HB)] == [Kind.HB]
    assert router.next_deadline() == 2.0
    a.say(1.5, Kind.HB)
    assert router.tick(1.6) == []


def test_status_rows() -> None:
    router = new()
    a = Peer(router, b"a", 2, tag="v1")
    a.hello()
    get(router, 1)
    status = router.status(0.5)
    (row,) = status["handlers"]  # type: ignore[misc]
    assert row["tag"] == "v1" and row["in_flight"] == 1 and row["credit"] == 1


def test_end_with_abort_cuts_the_client() -> None:
    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    rid = respond(router, a)
    out = a.say(0.5, Kind.END, rid, ((b"st", b"200"), (b"ab", b"1")))
    assert [c.cid for c in only(out, Abort)] == [1]  # type: ignore[attr-defined]
    assert only(out, End) == []
    assert router.handlers[b"a"].errors == 1


def test_bodyreq_reads_from_the_spooled_body_within_its_length() -> None:
    from catalyzer.split.router import ReadBody

    router = new()
    a = Peer(router, b"a", 1)
    a.hello()
    out = router.request(0, 1, "POST", ((b"m", b"POST"),), (), body_length=1000)
    (rid,) = reqs_to(out, a)
    a.say(0.1, Kind.START, rid)
    out = a.say(0.2, Kind.BODYREQ, rid, ((b"o", b"900"), (b"n", b"500")))
    assert only(out, ReadBody) == [ReadBody(1, 900, 100)]
    (body,) = sends(router.body_chunk(0.3, 1, 900, b"z" * 100), Kind.BODY)
    assert (body.rid, body.get_int(b"o"), body.body) == (rid, 900, (b"z" * 100,))
    out = a.say(0.4, Kind.BODYREQ, rid, ((b"o", b"1001"), (b"n", b"1")))
    assert b"a" not in router.handlers  # a protocol error: lost
    assert [r.status for r in only(out, Reply)] == [502]  # type: ignore[attr-defined]
    assert router.body_chunk(0.5, 1, 0, b"late") == []


def test_the_deadline_heap_keeps_no_more_than_a_few_entries_per_live_request() -> None:
    router = new(RouterSettings(queue_length=10_000, liveness=1e9, heartbeat=1e9))
    a = Peer(router, b"a", 1)
    a.hello()
    for cid in range(1, 2001):
        (rid,) = reqs_to(get(router, cid), a)
        a.say(0.0, Kind.START, rid)
        a.say(0.0, Kind.HEAD, rid, ((b"st", b"200"),), (b"x",))
        a.say(0.0, Kind.END, rid, ((b"st", b"200"), (b"ka", b"1")))
    assert router.requests == {}
    assert len(router._heap) <= 64 + 4
    assert router.next_deadline() is not None  # heartbeats and liveness remain


def test_reply_is_head_and_end_in_one_and_returns_the_credit() -> None:
    router = new()
    a = Peer(router, b"a", slots=1)
    a.hello()
    (req,) = sends(get(router, 1), Kind.REQ)
    get(router, 2)  # waits for the credit
    # No START first: a retried method's reply implies it.
    meta = ((b"st", b"200"), (b"ka", b"1"), (b"bs", b"1"))
    out = a.say(0.1, Kind.REPLY, req.rid, meta, (b"HTTP/1.1 ", b"x"))
    assert only(out, Head) == [Head(1, 200, (b"HTTP/1.1 ", b"x"))]
    # The body's size travels with it: the front's access log counts bodies, not heads.
    assert only(out, End) == [End(1, 200, True, 1)]
    assert len(reqs_to(out, a)) == 1  # the credit came back with it
    assert 1 not in router.requests
    assert router.handlers[b"a"].served == 1


def test_reply_after_go_and_late_reply_dropped() -> None:
    router = new(dataclasses.replace(SETTINGS, start_timeout=1.0))
    a, b = Peer(router, b"a", slots=1), Peer(router, b"b", slots=1)
    a.hello()
    b.hello()
    (req,) = sends(router.request(0.0, 1, "POST", ((b"m", b"POST"),)), Kind.REQ)
    holder = a if router.requests[1].handler == b"a" else b
    other = b if holder is a else a
    out = router.tick(1.5)  # not started in time: cancelled, given to the other
    (again,) = sends(out, Kind.REQ, other.identity)
    (go,) = sends(other.say(1.6, Kind.START, again.rid), Kind.GO)
    # The first handler's reply to the dispatch taken from it is late: dropped, credit back.
    out = holder.say(1.7, Kind.REPLY, req.rid, ((b"st", b"200"), (b"ka", b"1")), (b"no",))
    assert only(out, Head) == [] and only(out, End) == []
    assert router.handlers[holder.identity].credit == 1
    out = other.say(1.8, Kind.REPLY, go.rid, ((b"st", b"201"), (b"ka", b"0")), (b"yes",))
    assert only(out, Head) == [Head(1, 201, (b"yes",))] and only(out, End) == [End(1, 201, False)]


def test_reply_without_a_status_loses_the_handler_and_redispatches() -> None:
    router = new()
    a, b = Peer(router, b"a", slots=1), Peer(router, b"b", slots=1)
    a.hello()
    b.hello()
    (req,) = sends(get(router, 1), Kind.REQ)
    holder = a if router.requests[1].handler == b"a" else b
    other = b if holder is a else a
    out = holder.say(0.1, Kind.REPLY, req.rid, ((b"ka", b"1"),), (b"x",))
    assert router.counters["malformed"] == 1
    assert len(reqs_to(out, other)) == 1  # never answered: it goes to the other handler


def test_a_get_lost_before_its_start_more_than_retries_plus_one_times_is_502() -> None:
    router = new()  # retries=1: two re-dispatches, then 502
    get(router, 1)
    now = 0.0
    for turn in range(3):
        peer = Peer(router, b"h%d" % turn, slots=1)
        now += 1.0
        out = peer.hello(now)
        assert reqs_to(out, peer) == [router.requests[1].rid]  # never STARTed
        out = router.handler_lost(now, peer.identity, "no route")
        if turn < 2:
            assert only(out, Reply) == [] and router.requests[1].state == "queued"
    (reply,) = only(out, Reply)
    assert isinstance(reply, Reply) and reply.status == 502 and 1 not in router.requests
    assert router.counters["retries_exhausted"] == 1
