"""The front-wide buffer budget, in the router as a plain object: windows come out of one
budget, a response whose window the budget withheld gets it as bytes drain elsewhere (first come
first served), and the total never exceeds the budget, whatever handlers and clients do."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from catalyzer.split.frames import Kind, Message
from catalyzer.split.router import Command, Data, End, Head, Log, Router, Send
from tests.split.test_front import Setup
from tests.split.test_router import SETTINGS, Peer, get, sends

BUDGETED = replace(SETTINGS, window=1000, budget=2500, queue_length=100)


def windows(commands: Sequence[Command], kind: Kind) -> dict[int, int]:
    key = b"w" if kind is Kind.REQ else b"n"
    return {m.rid: m.get_int(key) for m in sends(commands, kind)}


def test_new_responses_take_their_first_window_from_the_budget() -> None:
    router = Router(BUDGETED)
    a = Peer(router, b"a", slots=4)
    a.hello()
    out: list[Command] = []
    for cid in range(1, 5):
        out += get(router, cid)
    assert list(windows(out, Kind.REQ).values()) == [1000, 1000, 500, 0]
    status = router.status(0.0)
    assert (status["buffered"], status["waiting_for_budget"]) == (2500, 2)


def test_drained_bytes_renew_windows_first_come_first_served() -> None:
    router = Router(BUDGETED)
    a = Peer(router, b"a", slots=3)
    a.hello()
    out: list[Command] = []
    for cid in range(1, 4):
        out += get(router, cid)
    r1, r2, r3 = windows(out, Kind.REQ)
    a.say(0.1, Kind.START, r1)
    a.say(0.1, Kind.HEAD, r1, ((b"st", b"200"),), (b"h" * 1000,))
    # Client 1 took its 1000 bytes: the 500 response 3 waits for go first, then 500 to it.
    assert windows(router.drained(0.2, 1, 1000), Kind.WIN) == {r3: 500, r1: 500}
    assert router.exposed == 2500 and list(router.starved) == [1]
    # Response 2 ends without sending: its whole window is free again, and 1 gets the rest.
    a.say(0.3, Kind.START, r2)
    out = a.say(0.3, Kind.END, r2, ((b"st", b"204"), (b"ka", b"1"), (b"ran", b"1"), (b"ab", b"0")))
    assert windows(out, Kind.WIN) == {r1: 500}
    assert router.exposed == 2000 and not router.starved


def test_a_client_leaving_frees_its_share() -> None:
    router = Router(BUDGETED)
    a = Peer(router, b"a", slots=3)
    a.hello()
    out: list[Command] = []
    for cid in range(1, 4):
        out += get(router, cid)
    r3 = list(windows(out, Kind.REQ))[2]
    assert windows(router.client_gone(0.1, 1), Kind.WIN) == {r3: 500}
    assert router.exposed == 2000


def test_without_a_budget_every_drained_byte_is_granted_back_at_once() -> None:
    router = Router(replace(BUDGETED, budget=0))
    a = Peer(router, b"a", slots=4)
    a.hello()
    out: list[Command] = []
    for cid in range(1, 5):
        out += get(router, cid)
    rids = list(windows(out, Kind.REQ))
    assert list(windows(out, Kind.REQ).values()) == [1000] * 4
    a.say(0.1, Kind.START, rids[0])
    a.say(0.1, Kind.HEAD, rids[0], ((b"st", b"200"),), (b"h" * 1000,))
    assert windows(router.drained(0.2, 1, 1000), Kind.WIN) == {rids[0]: 1000}


@dataclass
class Response:
    """A handler's side of one request: what is left to send, what it may send."""

    peer: Peer
    size: int
    window: int
    sent: int = 0
    ended: bool = False


@dataclass
class Client:
    """The front shell's side (FrontResponse): bytes written, reported when a batch is owed or
    while responses wait for the budget, and not while the client has paused us."""

    owed: int = 0
    paused: bool = False
    received: int = 0
    done: bool = False


@pytest.mark.parametrize("seed", range(12))
def test_buffered_bytes_never_exceed_the_budget_and_every_response_completes(seed: int) -> None:
    rng = random.Random(seed)
    window = rng.choice([1000, 4000])
    settings = replace(
        BUDGETED,
        window=window,
        # at most 2.5 windows for 3 or more responses at once: it is spent, and then some
        budget=rng.choice([window // 2, window, window * 5 // 2]),
        stall_timeout=1e9,
        first_byte_timeout=1e9,
        queue_timeout=1e9,
        start_timeout=1e9,
    )
    batch = settings.window // 4  # SplitFront.grant_batch
    router = Router(settings)
    peers = [Peer(router, b"h%d" % i, slots=rng.randint(1, 3)) for i in range(3)]
    responses: dict[int, Response] = {}
    clients: dict[int, Client] = {}
    sizes: dict[int, int] = {}
    starved_seen: list[int] = []

    def carry_out(commands: Sequence[Command]) -> None:
        for c in commands:
            if isinstance(c, Send):
                peer = next(p for p in peers if p.identity == c.identity)
                m: Message = c.message
                if m.kind is Kind.REQ:
                    cid = int(m.get_text(b"t"))
                    responses[m.rid] = Response(peer, sizes[cid], m.get_int(b"w"))
                    carry_out(peer.say(0.0, Kind.START, m.rid))
                elif m.kind is Kind.WIN:
                    responses[m.rid].window += m.get_int(b"n")
            elif isinstance(c, Head | Data):
                client = clients[c.cid]
                n = sum(len(b) for b in c.body)
                client.received += n
                client.owed += n
                if not client.paused and (client.owed >= batch or router.starved):
                    report(c.cid)
            elif isinstance(c, End):
                clients[c.cid].done = True
            elif not isinstance(c, Log):
                raise AssertionError(f"unexpected {c}")
        live = [p for p in router.requests.values()]
        assert router.exposed == sum(p.exposure for p in live)
        starved_seen.append(len(router.starved))
        assert 0 <= router.exposed <= settings.budget

    def report(cid: int) -> None:
        client = clients[cid]
        owed, client.owed = client.owed, 0
        if owed:
            carry_out(router.drained(0.0, cid, owed))

    for peer in peers:
        carry_out(peer.hello())
    for cid in range(1, 41):
        sizes[cid] = rng.choice([0, 10, 700, 3000, 9000])
        clients[cid] = Client(paused=rng.random() < 0.3)
        carry_out(router.request(0.0, cid, "GET", ((b"t", b"%d" % cid),)))
    for _step in range(200_000):
        if all(c.done for c in clients.values()):
            break
        roll = rng.random()
        if roll < 0.6:
            able = [
                (rid, r) for rid, r in responses.items()
                if (not r.ended and (r.window > 0 or (r.sent == r.size and r.sent)))
                or (not r.ended and r.size == 0)
            ]  # fmt: skip
            if not able:
                roll = 0.9
            else:
                rid, r = rng.choice(able)
                if r.sent < r.size:
                    n = min(r.window, rng.randint(1, 1500), r.size - r.sent)
                    kind = Kind.HEAD if r.sent == 0 else Kind.DATA
                    meta = ((b"st", b"200"),) if kind is Kind.HEAD else ()
                    r.window -= n
                    r.sent += n
                    carry_out(r.peer.say(0.0, kind, rid, meta, (b"x" * n,)))
                else:
                    if r.size == 0:
                        carry_out(r.peer.say(0.0, Kind.HEAD, rid, ((b"st", b"204"),), ()))
                    r.ended = True
                    end = ((b"st", b"200"), (b"ka", b"1"), (b"ran", b"1"))
                    carry_out(r.peer.say(0.0, Kind.END, rid, end))
        if roll >= 0.6:
            cid = rng.randint(1, 40)
            client = clients[cid]
            client.paused = not client.paused
            if not client.paused:
                report(cid)
    unfinished = [cid for cid, c in clients.items() if not c.done]
    assert unfinished == []
    assert all(clients[cid].received == sizes[cid] for cid in clients)
    assert router.exposed == 0
    assert max(starved_seen) > 0  # the budget was spent and windows waited for it


def test_the_shell_reports_every_byte_taken_while_responses_wait_for_the_budget() -> None:
    """With a share smaller than a batch (a quarter window), the front must not wait for a
    batch: while any response waits for the budget, each write counts at once."""
    s = Setup(window=1000, budget=1100)
    s.hello(slots=2)
    first, second = s.client(), s.client()
    first.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    second.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    r1, r2 = s.conn.take()
    assert (r1.get_int(b"w"), r2.get_int(b"w")) == (1000, 100)  # 2 waits for 900 more
    s.say(Kind.START, r2.rid)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n"
    s.say(Kind.HEAD, r2.rid, ((b"st", b"200"),), (head + b"x" * (100 - len(head)),))
    # 100 bytes, under a batch of 250: reported at once, and the 100 they free come back to
    # the one response waiting (the first holds the rest of the budget).
    (win,) = s.conn.take()
    assert (win.kind, win.rid, win.get_int(b"n")) == (Kind.WIN, r2.rid, 100)
    # The first response ends: its share goes to the second, up to its window.
    s.say(Kind.START, r1.rid)
    s.say(Kind.END, r1.rid, ((b"st", b"204"), (b"ka", b"1"), (b"ran", b"1")))
    (win,) = [m for m in s.conn.take() if m.kind is Kind.WIN]
    assert (win.rid, win.get_int(b"n")) == (r2.rid, 900)
    assert s.router.exposed == 1000 and not s.router.starved
