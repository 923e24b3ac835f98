"""The hand-off decisions: which connections a busy worker gives away, where the master sends
them. Plain values, no I/O."""

from __future__ import annotations

import pytest

from catalyzer.prefork.handoff import (
    FLOOR,
    Candidate,
    Drop,
    HandoffDelay,
    HandoffRouter,
    Send,
    WorkerView,
    due,
    movable,
    pool_stuck,
)


def test_due_after_the_threshold_in_one_app_call() -> None:
    assert not due(0.0, 100.0, 0.05)  # not in the app
    assert not due(100.0, 100.125, 0.25)
    assert due(100.0, 100.25, 0.25)
    assert not due(100.0, 200.0, 0.0)  # switched off


def test_a_pool_is_stuck_once_its_most_recent_call_has_lasted_the_delay() -> None:
    assert not pool_stuck([100.0, 0.0], 200.0, 0.05)  # a thread waits for a call
    assert not pool_stuck([100.0, 100.04], 100.08, 0.05)  # the latest call is young
    assert pool_stuck([100.0, 100.03], 100.09, 0.05)
    assert pool_stuck([100.0], 100.25, 0.25)
    assert not pool_stuck([100.0], 200.0, 0.0)  # switched off
    assert not pool_stuck([], 200.0, 0.05)


def candidate(key: str, **changes: object) -> Candidate:
    values: dict[str, object] = {
        "key": key,
        "idle": True,
        "ended_at": 5.0,
        "write_empty": True,
        "plain": True,
    }
    values.update(changes)
    return Candidate(**values)  # type: ignore[arg-type]


def test_only_idle_plain_connections_with_nothing_queued_move() -> None:
    entered = 10.0
    connections = [
        candidate("waiting"),
        candidate("never-served", ended_at=0.0),
        candidate("reading-a-request", idle=False),
        candidate("writing", write_empty=False),
        candidate("tls", plain=False),
    ]
    assert movable(connections, entered) == ["waiting", "never-served"]


def test_the_connection_the_app_call_is_for_stays() -> None:
    # Its streamed response ended inside the call: the reactor thread is still on it.
    assert movable([candidate("served-now", ended_at=10.0)], 10.0) == []
    assert movable([candidate("served-now", ended_at=10.5)], 10.0) == []


def ready(worker_id: int, in_app: bool = False) -> WorkerView:
    return WorkerView(worker_id, ready=True, in_app=in_app)


def test_connections_go_round_robin_to_idle_workers_in_arrival_order() -> None:
    router = HandoffRouter(hold_limit=1.0)
    for token in (7, 8, 9):
        router.received(token, source=1, now=0.0)
    workers = [ready(1, in_app=True), ready(2), ready(3), WorkerView(4, ready=False, in_app=False)]
    assert router.route(workers, 0.0) == [
        Send(7, 2, 1, 0.0),
        Send(8, 3, 1, 0.0),
        Send(9, 2, 1, 0.0),
    ]
    assert router.holding == 0


def test_held_while_every_worker_is_busy_then_back_to_its_source() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    busy = [ready(1, in_app=True), ready(2, in_app=True)]
    assert router.route(busy, 0.5) == []
    assert router.holding == 1
    assert router.route(busy, 1.0) == [Send(7, 1, 1, 0.0)]


def test_an_idle_worker_appearing_takes_the_held_connection() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    assert router.route([ready(1, in_app=True), ready(2, in_app=True)], 0.1) == []
    assert router.route([ready(1, in_app=True), ready(2)], 0.2) == [Send(7, 2, 1, 0.0)]


def test_source_gone_after_the_hold_any_ready_worker_else_dropped() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    assert router.route([ready(2, in_app=True)], 1.0) == [Send(7, 2, 1, 0.0)]
    router.received(8, source=1, now=0.0)
    assert router.route([], 1.0) == [Drop(8, "no worker is left to take it")]


def test_undelivered_is_held_again_until_twice_the_hold() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    (send,) = router.route([ready(2)], 0.1)
    assert isinstance(send, Send)
    assert router.undelivered(send, 0.1) is None
    assert router.holding == 1
    (again,) = router.route([ready(3)], 0.2)
    assert again == Send(7, 3, 1, 0.0)  # still counted from its arrival
    assert router.undelivered(again, 2.0) == Drop(7, "no worker took it in time")
    assert router.holding == 0


def test_forget_all_returns_every_held_token() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    router.received(8, source=2, now=0.0)
    assert sorted(router.forget_all()) == [7, 8]
    assert router.holding == 0


BOUNDS = (0.001, 0.01, 0.05, 1.0)


class Calls:
    """A worker's cumulative duration histogram over BOUNDS (the last bucket: longer)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)

    def add(self, seconds: float, n: int = 1) -> list[int]:
        index = next((i for i, bound in enumerate(BOUNDS) if seconds <= bound), len(BOUNDS))
        self.counts[index] += n
        return list(self.counts)


def test_the_delay_is_after_until_enough_calls_are_seen() -> None:
    delay = HandoffDelay(0.05, BOUNDS, enough=100)
    calls = Calls()
    assert delay.current == 0.05
    assert delay.observe(calls.add(0.0001, 50)) == 0.05  # the first sample is the baseline
    assert delay.observe(calls.add(0.0001, 99)) == 0.05  # 99 calls in the window
    assert delay.observe(calls.add(0.0001, 1)) == FLOOR  # 100


def test_short_calls_with_a_rare_slow_one_get_the_floor() -> None:
    delay = HandoffDelay(0.05, BOUNDS)
    calls = Calls()
    delay.observe(calls.counts)
    calls.add(0.0002, 5_000)
    assert delay.observe(calls.add(1.0, 2)) == FLOOR  # the slow ones are 0.04%


def test_ordinary_calls_of_10_to_50_ms_keep_after() -> None:
    delay = HandoffDelay(0.05, BOUNDS)
    calls = Calls()
    delay.observe(calls.counts)
    calls.add(0.01, 100)
    calls.add(0.03, 200)
    assert delay.observe(calls.add(0.045, 100)) == 0.05


def test_the_delay_is_margin_times_the_quantiles_bucket_bound() -> None:
    delay = HandoffDelay(0.5, BOUNDS, margin=2.0, quantile=0.99)
    calls = Calls()
    delay.observe(calls.counts)
    calls.add(0.0005, 900)
    assert delay.observe(calls.add(0.005, 100)) == 0.02  # p99 in the 10 ms bucket
    delay = HandoffDelay(0.5, BOUNDS, margin=2.0, quantile=0.99)
    calls = Calls()
    delay.observe(calls.counts)
    calls.add(0.0005, 995)
    assert delay.observe(calls.add(0.005, 5)) == FLOOR  # p99 in the 1 ms bucket: 2 ms -> floor


def test_the_window_forgets_old_periods() -> None:
    delay = HandoffDelay(0.05, BOUNDS, window=2)
    calls = Calls()
    delay.observe(calls.counts)
    assert delay.observe(calls.add(0.03, 1_000)) == 0.05
    assert delay.observe(calls.add(0.0001, 1_000)) == 0.05  # half the window still slow
    assert delay.observe(calls.add(0.0001, 1_000)) == FLOOR  # the slow period has left it
    assert delay.observe(calls.counts) == FLOOR  # idle for a period: still 1,000 in the window
    assert delay.observe(calls.counts) == 0.05  # nothing in the window (a long call): after


def test_counters_that_go_down_start_over_and_a_wrong_size_is_refused() -> None:
    delay = HandoffDelay(0.05, BOUNDS, window=1)
    calls = Calls()
    delay.observe(calls.counts)
    assert delay.observe(calls.add(0.0001, 5_000)) == FLOOR
    fresh = Calls()  # a new vector: its 150 calls count, the old 5,000 are not taken off
    assert delay.observe(fresh.add(0.005, 150)) == 0.02
    with pytest.raises(ValueError, match="5 buckets expected, not 2"):
        delay.observe([1, 2])


def test_a_setting_below_the_floor_is_kept() -> None:
    delay = HandoffDelay(0.005, BOUNDS)
    calls = Calls()
    delay.observe(calls.counts)
    assert delay.observe(calls.add(0.0001, 5_000)) == 0.005


def test_a_connection_given_for_balance_goes_to_the_worker_named() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0, prefer=3)
    router.received(8, source=1, now=0.0, prefer=3)
    assert router.route([ready(1), ready(2), ready(3)], 0.0) == [
        Send(7, 3, 1, 0.0),
        Send(8, 3, 1, 0.0),
    ]
    # The one named is in the app meanwhile: any other idle worker, never back to the source.
    router.received(9, source=1, now=0.0, prefer=3)
    assert router.route([ready(1), ready(2), ready(3, in_app=True)], 0.0) == [Send(9, 2, 1, 0.0)]


def test_an_idle_source_gets_its_connection_back_only_when_no_other_worker_is_idle() -> None:
    router = HandoffRouter(hold_limit=1.0)
    router.received(7, source=1, now=0.0)
    router.received(8, source=1, now=0.0)
    assert router.route([ready(1), ready(2)], 0.0) == [Send(7, 2, 1, 0.0), Send(8, 2, 1, 0.0)]
    router.received(9, source=1, now=0.0)
    assert router.route([ready(1), ready(2, in_app=True)], 0.0) == [Send(9, 1, 1, 0.0)]
