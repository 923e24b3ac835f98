"""The hand-off decisions: which connections a busy worker gives away, where the master sends
them. Plain values, no I/O."""

from __future__ import annotations

from catalyzer.prefork.handoff import (
    Candidate,
    Drop,
    HandoffRouter,
    Send,
    WorkerView,
    due,
    movable,
)


def test_due_after_the_threshold_in_one_app_call() -> None:
    assert not due(0.0, 100.0, 0.05)  # not in the app
    assert not due(100.0, 100.125, 0.25)
    assert due(100.0, 100.25, 0.25)
    assert not due(100.0, 200.0, 0.0)  # switched off


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
