"""The --threads pool: calls run in its threads, answers come back to the reactor in batches."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

import pytest

from catalyzer.wsgi.threads import AppThreads, ThreadStartError

DEADLINE = 10.0  # seconds a thread may take to answer before the test fails


class HeldWakes:
    """The reactor's callFromThread, held until the test runs what it was given."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def __call__(self, f: Callable[[], None]) -> None:
        self.calls.append(f)

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f in calls:
            f()


def test_answers_share_one_wake_up_until_the_reactor_takes_them() -> None:
    wakes = HeldWakes()
    pool = AppThreads(2, wakes)
    ran: list[int] = []
    for n in range(3):
        pool.call_from_thread(ran.append, n)
    assert len(wakes.calls) == 1 and ran == []
    wakes.run()
    assert ran == [0, 1, 2]
    pool.call_from_thread(ran.append, 3)  # taken: the next answer wakes the reactor again
    assert len(wakes.calls) == 1
    wakes.run()
    assert ran == [0, 1, 2, 3]


def test_an_answer_that_raises_leaves_the_others_to_a_further_wake_up() -> None:
    wakes = HeldWakes()
    pool = AppThreads(1, wakes)
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("answer failed")

    pool.call_from_thread(boom)
    pool.call_from_thread(ran.append, "after")
    with pytest.raises(RuntimeError):
        wakes.run()  # the reactor logs it
    assert ran == [] and len(wakes.calls) == 1
    wakes.run()
    assert ran == ["after"]


def test_calls_run_in_the_pool_threads_even_after_one_raises() -> None:
    pool = AppThreads(2, HeldWakes(), name="test-app")
    done: queue.SimpleQueue[str] = queue.SimpleQueue()

    def boom() -> None:
        raise RuntimeError("call failed")

    pool.start()
    try:
        for _ in range(2):  # one failure per thread: both must live on
            pool.callInThread(boom)
        for _ in range(4):
            pool.callInThread(lambda: done.put(threading.current_thread().name))
        names = {done.get(timeout=DEADLINE) for _ in range(4)}
    finally:
        pool.stop()
    assert names <= {"test-app-0", "test-app-1"}
    assert threading.current_thread().name not in names
    assert pool.threads == []


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        AppThreads(0, HeldWakes())


def test_a_thread_the_system_refuses_ends_those_started_and_says_which(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if len(started) == 2:
            raise RuntimeError("can't start new thread")
        real_start(thread)
        started.append(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    pool = AppThreads(4, HeldWakes())
    with pytest.raises(ThreadStartError, match=r"^--threads 4: the system refused thread 3 \("):
        pool.start()
    assert len(started) == 2
    assert not any(t.is_alive() for t in started)  # stop() joined them
    assert pool.threads == []


def test_each_thread_shows_when_its_call_began_and_a_call_queued_behind_busy_threads_is_told() -> (
    None
):
    times = iter([100.0, 101.0])
    pool = AppThreads(1, HeldWakes(), clock=lambda: next(times))
    saturated: list[list[float]] = []
    pool.on_saturated = lambda: saturated.append(list(pool.since))
    started: queue.SimpleQueue[list[float]] = queue.SimpleQueue()
    release = threading.Event()
    done: queue.SimpleQueue[str] = queue.SimpleQueue()

    def held() -> None:
        started.put(list(pool.since))
        release.wait(DEADLINE)

    pool.start()
    try:
        assert pool.since == [0.0]
        pool.callInThread(held)
        assert started.get(timeout=DEADLINE) == [100.0]
        assert saturated == []  # the thread was free when the call was queued
        pool.callInThread(done.put, "next")
        assert saturated == [[100.0]]  # queued behind the busy thread
        release.set()
        assert done.get(timeout=DEADLINE) == "next"
    finally:
        release.set()
        pool.stop()
    assert pool.since == [0.0]


def _wait_parked(pool: AppThreads, count: int) -> None:
    """Until ``count`` threads of ``pool`` wait for a call (the test fails after DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    while pool.parked != count:
        assert time.monotonic() < deadline, f"{pool.parked} threads parked, not {count}"
        os.sched_yield()


def test_a_call_queued_while_the_reactor_runs_wakes_a_thread_when_it_is_about_to_wait() -> None:
    pool = AppThreads(1, HeldWakes())
    pool.woken_at_poll = True
    done: queue.SimpleQueue[str] = queue.SimpleQueue()
    pool.start()
    try:
        _wait_parked(pool, 1)
        pool.callInThread(done.put, "ran")
        assert pool.parked == 1  # nobody woken: only poll_begins (or a thread) could
        pool.poll_begins()
        assert done.get(timeout=DEADLINE) == "ran"
    finally:
        pool.stop()


def test_a_call_queued_wakes_a_thread_at_once_unless_the_reactor_says_when_it_waits() -> None:
    pool = AppThreads(1, HeldWakes())
    done: queue.SimpleQueue[str] = queue.SimpleQueue()
    pool.start()
    try:
        _wait_parked(pool, 1)
        pool.callInThread(done.put, "ran")
        assert done.get(timeout=DEADLINE) == "ran"
    finally:
        pool.stop()


def test_a_thread_that_takes_a_long_call_wakes_another_for_the_calls_behind_it() -> None:
    pool = AppThreads(2, HeldWakes())
    pool.woken_at_poll = True
    release = threading.Event()
    done: queue.SimpleQueue[str] = queue.SimpleQueue()
    pool.start()
    try:
        _wait_parked(pool, 2)
        pool.callInThread(release.wait, 2 * DEADLINE)  # outlasts the wait for the one behind
        pool.callInThread(done.put, "behind")
        pool.poll_begins()  # wakes one thread; the long call must not hold up the one behind
        assert done.get(timeout=DEADLINE) == "behind"
        assert not release.is_set()
    finally:
        release.set()
        pool.stop()


def test_a_busy_thread_takes_the_next_call_itself() -> None:
    pool = AppThreads(1, HeldWakes())
    pool.woken_at_poll = True
    release = threading.Event()
    started: queue.SimpleQueue[str] = queue.SimpleQueue()
    done: queue.SimpleQueue[str] = queue.SimpleQueue()

    def held() -> None:
        started.put("held")
        release.wait(DEADLINE)

    pool.start()
    try:
        _wait_parked(pool, 1)
        pool.callInThread(held)
        pool.poll_begins()
        assert started.get(timeout=DEADLINE) == "held"
        pool.callInThread(done.put, "next")  # no poll_begins: the busy thread looks again
        release.set()
        assert done.get(timeout=DEADLINE) == "next"
    finally:
        release.set()
        pool.stop()
