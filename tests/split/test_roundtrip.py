"""Round trip time per handler: the front's heartbeats carry its clock, the handler sends the
stamp straight back, and the router keeps a smoothed figure for the handler's row."""

from __future__ import annotations

import pytest

from catalyzer.split.frames import Kind
from catalyzer.split.router import PING, Router
from tests.split.test_handler import Front, Recorder
from tests.split.test_router import SETTINGS, Peer, get, sends


def test_heartbeats_are_stamped_every_interval_even_while_busy() -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 1)
    a.hello(0.0)
    get(router, 1, now=0.5)  # traffic to it: an idle heartbeat would not go, a timed one does
    (hb,) = sends(router.tick(1.0), Kind.HB)
    assert hb.get_float(PING, 0.0) == 1.0
    assert router.next_deadline() == 2.0


def test_an_echoed_stamp_gives_the_round_trip_then_it_is_smoothed() -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 1)
    a.hello(0.0)
    assert router.status(0.0)["handlers"][0]["rtt"] is None  # type: ignore[index]
    (hb,) = sends(router.tick(1.0), Kind.HB)
    stamp = hb.get(PING)
    assert stamp is not None
    a.say(1.004, Kind.HB, meta=((PING, stamp),))
    assert router.handlers[b"a"].rtt == pytest.approx(0.004)
    assert router.status(1.5)["handlers"][0]["rtt"] == pytest.approx(0.004)  # type: ignore[index]
    (hb,) = sends(router.tick(2.0), Kind.HB)
    a.say(2.012, Kind.HB, meta=((PING, hb.get(PING) or b""),))
    # 1/8 of the way from 4 ms towards 12 ms
    assert router.handlers[b"a"].rtt == pytest.approx(0.005)


@pytest.mark.parametrize("stamp", [b"soon", b"-50", b"100.0", b"nan"])
def test_stamps_that_are_not_ours_give_no_sample_and_keep_the_session(stamp: bytes) -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 1)
    a.hello(0.0)
    a.say(1.0, Kind.HB, meta=((PING, stamp),))
    assert b"a" in router.handlers
    assert router.handlers[b"a"].rtt is None


def test_a_handlers_own_idle_heartbeat_is_no_sample() -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 1)
    a.hello(0.0)
    a.say(1.0, Kind.HB)
    assert router.handlers[b"a"].rtt is None


def test_the_handler_echoes_a_stamp_at_once() -> None:
    front = Front(Recorder())
    front.welcome()
    front.say(Kind.HB, meta=((PING, b"12.5"),))
    (echo,) = front.conn.take()
    assert (echo.kind, echo.get(PING)) == (Kind.HB, b"12.5")
    front.say(Kind.HB)  # an idle heartbeat: nothing to answer
    assert front.conn.take() == []
