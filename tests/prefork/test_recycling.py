"""When a worker asks to be recycled: plain numbers in, one decision out."""

from __future__ import annotations

from catalyzer.prefork.recycling import Recycle, RecyclePolicy
from catalyzer.process.memory import MIB


def test_no_limits_never_recycle() -> None:
    policy = RecyclePolicy(0, 0)
    assert not policy.watches_memory
    assert policy.after_response(10**6, 10**12) is None


def test_max_requests_once() -> None:
    policy = RecyclePolicy(3, 0)
    assert policy.after_response(2) is None
    assert policy.after_response(3) == Recycle("max-requests")
    assert policy.after_response(4) is None  # asked once; the master does the rest


def test_rss_past_the_limit_gives_the_figure() -> None:
    policy = RecyclePolicy(0, 100 * MIB)
    assert policy.watches_memory
    assert policy.after_response(1, 100 * MIB) is None  # at the limit is not past it
    decision = policy.after_response(2, 143 * MIB)
    assert decision == Recycle("max-worker-rss", "RSS 143 MiB > 100 MiB")
    assert not policy.watches_memory  # decided: no more reads of /proc
    assert policy.after_response(3, 300 * MIB) is None


def test_requests_limit_wins_when_both_are_reached() -> None:
    policy = RecyclePolicy(5, 10 * MIB)
    assert policy.after_response(5, 20 * MIB) == Recycle("max-requests")


def test_the_logged_figure_is_never_rounded_down_to_the_limit() -> None:
    policy = RecyclePolicy(0, 150 * MIB)
    decision = policy.after_response(1, 150 * MIB + 400 * 1024)
    assert decision == Recycle("max-worker-rss", "RSS 151 MiB > 150 MiB")
