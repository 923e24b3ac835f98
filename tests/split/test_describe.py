"""The front's state as text (USR1 dump, manhole): the router's status in, lines out."""

from __future__ import annotations

from dataclasses import replace

from catalyzer.split.describe import describe_front, handler_line
from catalyzer.split.router import Router
from tests.split.test_router import SETTINGS, Peer, get


def test_a_line_per_handler_with_its_numbers() -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 2, tag="v42")
    a.hello()
    get(router, 1)
    router.handlers[b"a"].rtt = 0.00042
    text = describe_front(router.status(0.25))
    lines = text.splitlines()
    assert lines[0] == "split front: 1 handlers, 0 queued, 1 at handlers"
    assert lines[1] == (
        "  h pid 7 tag v42 gen 0 ready: 2 slots, 1 credit, 1 in flight, rtt 0.4 ms, 0 served, "
        "0 re-dispatched, 0 errors, heard 0.2s ago"
    )
    assert lines[2] == "  requests 1, dispatched 1"  # counters that are not zero


def test_unmeasured_rtt_untagged_weight_and_draining() -> None:
    router = Router(SETTINGS)
    a = Peer(router, b"a", 1)
    a.hello()
    router.set_tag_weight(0.0, "", 0.1)
    router.drain_tag(0.0, "")
    (row,) = router.status(1.0)["handlers"]  # type: ignore[misc]
    line = handler_line(row)
    assert "tag - " in line and "draining:" in line
    assert "rtt -," in line and ", weight 0.1," in line
    assert describe_front(router.status(1.0)).count("\n") == 1  # no counter is set


def test_prefetch_is_shown_beside_the_slots() -> None:
    router = Router(SETTINGS)
    Peer(router, b"a", 2, pf="3").hello()
    (row,) = router.status(0.0)["handlers"]  # type: ignore[misc]
    assert "ready: 2 slots + 3 prefetch, 5 credit, 0 in flight" in handler_line(row)


def test_the_budget_in_the_summary_when_there_is_one() -> None:
    router = Router(replace(SETTINGS, window=1000, budget=1500))
    a = Peer(router, b"a", 2)
    a.hello()
    get(router, 1)
    get(router, 2)
    first = describe_front(router.status(0.0)).splitlines()[0]
    assert first == (
        "split front: 1 handlers, 0 queued, 2 at handlers, 1500 of 1500 budget bytes buffered, "
        "1 waiting for it"
    )
