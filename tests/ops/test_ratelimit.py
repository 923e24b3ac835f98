"""One event per key per interval: plain numbers for time."""

from __future__ import annotations

import pytest

from catalyzer.ops.ratelimit import RateLimiter


def test_first_passes_the_rest_are_counted_until_the_interval_ends() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.admit("bad", 0.0) == 0
    assert limiter.next_due() is None  # nothing counted yet: nothing to report
    assert [limiter.admit("bad", t) for t in (1.0, 5.0, 9.99)] == [None, None, None]
    assert limiter.next_due() == 10.0
    assert limiter.due(9.99) == []
    assert limiter.due(10.0) == [("bad", 3)]
    assert limiter.due(30.0) == []  # reported once
    assert limiter.admit("bad", 30.0) == 0  # a new interval


def test_keys_are_independent() -> None:
    limiter = RateLimiter(5.0)
    assert limiter.admit("a", 0.0) == 0
    assert limiter.admit("b", 1.0) == 0
    assert limiter.admit("a", 1.0) is None
    assert limiter.admit("b", 2.0) is None
    assert limiter.admit("b", 3.0) is None
    assert limiter.next_due() == 5.0
    assert limiter.due(5.5) == [("a", 1)]
    assert limiter.due(6.0) == [("b", 2)]


def test_an_unreported_count_comes_with_the_next_admitted_event() -> None:
    limiter = RateLimiter(10.0)
    limiter.admit("x", 0.0)
    limiter.admit("x", 2.0)
    limiter.admit("x", 3.0)
    assert limiter.admit("x", 12.0) == 2  # due() was not called in between


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0)
