"""The least-progress chooser: plain candidates and numbers for time."""

from __future__ import annotations

import random

from catalyzer.server.shedding import (
    MIN_AGE,
    MIN_IDLE,
    Candidate,
    ShedQueue,
    Standing,
    choose,
    eligible_at,
    order,
)

HEADERS, IDLE, SILENT = Standing.HEADERS, Standing.IDLE, Standing.SILENT


def test_incomplete_headers_oldest_first_then_idle_longest() -> None:
    candidates = [
        Candidate("silent", SILENT, 0.5),
        Candidate("idle-old", IDLE, 1.0),
        Candidate("slow-new", HEADERS, 8.0),
        Candidate("slow-old", HEADERS, 2.0),
        Candidate("idle-new", IDLE, 7.0),
    ]
    assert choose(candidates, 1, 10.0) == ["slow-old"]
    assert choose(candidates, 3, 10.0) == ["slow-old", "slow-new", "idle-old"]
    assert choose(candidates, 10, 10.0) == [
        "slow-old",
        "slow-new",
        "idle-old",
        "idle-new",
        "silent",  # what a client's new connection looks like before it is read: last
    ]


def test_nothing_asked_nothing_chosen() -> None:
    assert choose([Candidate("x", HEADERS, 0.0)], 0, 10.0) == []


def test_a_connection_younger_than_min_age_is_left_alone() -> None:
    candidates = [Candidate("fresh", HEADERS, 10.0 - MIN_AGE / 2), Candidate("idle", IDLE, 0.0)]
    assert choose(candidates, 1, 10.0) == ["idle"]  # the fresh one had no time to send
    assert choose(candidates, 2, 10.0 + MIN_AGE) == ["fresh", "idle"]
    assert choose([Candidate("fresh", HEADERS, 10.0)], 1, 10.0) == []


def test_eligible_at_is_when_the_first_young_one_may_go() -> None:
    candidates = [
        Candidate("a", SILENT, 9.95),
        Candidate("b", HEADERS, 9.98),
        Candidate("old", IDLE, 1.0),
    ]
    assert eligible_at(candidates, 10.0) == 9.95 + MIN_AGE
    assert eligible_at([Candidate("old", IDLE, 1.0)], 10.0) is None


def test_a_keep_alive_connection_between_two_requests_is_left_alone() -> None:
    idle = [Candidate("just-answered", IDLE, 10.0 - MIN_IDLE / 2)]
    assert choose(idle, 1, 10.0) == []
    assert eligible_at(idle, 10.0) == 10.0 + MIN_IDLE / 2
    assert choose(idle, 1, 10.0 + MIN_IDLE / 2) == ["just-answered"]


def test_the_queue_takes_the_least_advanced_once_old_enough() -> None:
    queue = ShedQueue(
        [
            Candidate("idle-old", IDLE, 1.0),
            Candidate("slow-new", HEADERS, 9.5),
            Candidate("slow-old", HEADERS, 2.0),
            Candidate("silent", SILENT, 1.0),
        ],
        made=10.0,
    )
    assert len(queue) == 4
    usable = lambda c: True  # noqa: E731
    assert queue.next(10.0, usable, consume=False) == "slow-old"
    assert queue.next(10.0, usable) == "slow-old"
    # slow-new is 0.5 s old: too young, and so is every later one of its standing.
    assert queue.next(10.0, usable) == "idle-old"
    assert queue.next(10.0, usable) == "silent"
    assert queue.next(10.0, usable) is None
    assert queue.eligible_at(10.0) == 9.5 + MIN_AGE
    assert queue.next(9.5 + MIN_AGE, usable) == "slow-new"
    assert len(queue) == 0
    assert queue.eligible_at(20.0) is None


def test_the_queue_drops_a_candidate_that_is_no_longer_usable() -> None:
    queue = ShedQueue([Candidate("moved-on", HEADERS, 1.0), Candidate("b", HEADERS, 2.0)], 10.0)
    assert queue.next(10.0, lambda c: c.key != "moved-on") == "b"
    assert queue.next(10.0, lambda c: True) is None  # dropped for good, not tried again


def test_the_queue_asks_about_no_connection_too_young_to_go() -> None:
    """``usable`` peeks at a socket: a server at the limit with every connection busy between
    requests looks ten times a second, and must not peek at each one."""
    busy = [Candidate(f"busy-{i}", IDLE, 10.0 - i * MIN_IDLE / 100) for i in range(50)]
    asked: list[str] = []
    queue = ShedQueue(busy, made=10.0)
    assert queue.next(10.0, lambda c: asked.append(c.key) or True) is None  # type: ignore[func-returns-value]
    assert asked == []
    assert queue.eligible_at(10.0) == busy[-1].since + MIN_IDLE


def test_the_queue_gives_the_same_order_as_order() -> None:
    """ShedQueue is the cheap way through the order that ``order`` defines, at any time."""
    rng = random.Random(10)
    for _ in range(200):
        candidates = [
            Candidate(n, rng.choice(list(Standing)), round(rng.uniform(0.0, 10.0), 2))
            for n in range(rng.randint(0, 30))
        ]
        made = 10.0
        now = made + rng.choice([0.0, 0.3, MIN_AGE / 2, MIN_AGE])
        queue = ShedQueue(candidates, made)
        taken = []
        while (key := queue.next(now, lambda c: True)) is not None:
            taken.append(key)
        assert taken == [c.key for c in order(candidates, now)]
