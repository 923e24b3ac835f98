"""The named timer holder, fired with Clock.advance just before and at expiry."""

from __future__ import annotations

from twisted.internet.task import Clock

from catalyzer.server.timer import Timer, started


def test_start_fires_once_at_expiry() -> None:
    clock = Clock()
    fired: list[float] = []
    timer = Timer(clock, lambda: fired.append(clock.seconds()))
    timer.start(5)
    timer.start(1)  # already armed: keeps its deadline
    clock.advance(4.9)
    assert fired == [] and timer.armed
    clock.advance(0.1)
    assert fired == [5.0] and not timer.armed


def test_cancel_disarms() -> None:
    clock = Clock()
    fired: list[float] = []
    timer = Timer(clock, lambda: fired.append(clock.seconds()))
    timer.start(5)
    clock.advance(3)
    timer.cancel()
    clock.advance(5)
    assert fired == [] and not timer.armed
    timer.start(5)
    clock.advance(5)
    assert fired == [13.0]
    timer.start(1)
    timer.cancel()
    timer.cancel()  # harmless twice
    clock.advance(10)
    assert fired == [13.0] and not timer.armed


def test_callback_may_rearm() -> None:
    clock = Clock()
    fired: list[float] = []

    def tick() -> None:
        fired.append(clock.seconds())
        if len(fired) < 3:
            timer.start(2)

    timer = Timer(clock, tick)
    timer.start(2)
    clock.advance(2)
    clock.advance(2)
    clock.advance(2)
    assert fired == [2.0, 4.0, 6.0]


def test_retire_cancels_and_lets_go_of_the_callback() -> None:
    clock = Clock()
    fired: list[int] = []
    timer = Timer(clock, lambda: fired.append(1))
    timer.start(1.0)
    timer.retire()
    assert not timer.armed and clock.getDelayedCalls() == []
    timer.start(1.0)  # an owner that is gone arms nothing it could be called back for
    clock.advance(1.0)
    assert fired == []


def test_started_arms_a_new_timer_and_leaves_an_armed_one_its_deadline() -> None:
    clock = Clock()
    fired: list[float] = []
    timer = started(None, clock, lambda: fired.append(clock.seconds()), 2)
    clock.advance(1)
    assert started(timer, clock, lambda: fired.append(-1.0), 5) is timer
    clock.advance(1)
    assert fired == [2.0]
