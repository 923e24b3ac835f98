"""The least-progress chooser: plain candidates and numbers for time."""

from __future__ import annotations

from catalyzer.server.shedding import MIN_AGE, MIN_IDLE, Candidate, Standing, choose, eligible_at

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
