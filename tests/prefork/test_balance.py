"""The keep-alive balance decisions: when the master asks a busy worker for connections, how
large a share, for whom, and how many a worker then gives. Plain values, no I/O."""

from __future__ import annotations

import pytest

from catalyzer.prefork.balance import Balancer, Give, WorkerLoad, to_give


def load(worker_id: int, requests: int, *, ready: bool = True, in_app: bool = False) -> WorkerLoad:
    return WorkerLoad(worker_id, ready=ready, in_app=in_app, requests=requests)


def test_nothing_is_asked_before_there_are_two_samples() -> None:
    balancer = Balancer(period=0.25, persist=1)
    assert balancer.observe([load(1, 1000), load(2, 0)]) is None


def test_a_worker_with_every_connection_gives_half_to_the_idle_one() -> None:
    balancer = Balancer(period=0.25, persist=1)
    balancer.observe([load(1, 0), load(2, 0)])
    give = balancer.observe([load(1, 2000), load(2, 0)])
    assert give == Give(worker=1, share=0.5, to=2)
    assert balancer.asked == 1


def test_the_share_brings_the_busiest_to_the_mean_of_all() -> None:
    balancer = Balancer(period=1.0, persist=1)
    balancer.observe([load(1, 0), load(2, 0), load(3, 0), load(4, 0)])
    give = balancer.observe([load(1, 1200), load(2, 400), load(3, 300), load(4, 100)])
    # mean 500: the busiest gives (1200 - 500) / 1200 of its connections, to the least busy.
    assert give is not None
    assert (give.worker, give.to) == (1, 4)
    assert give.share == pytest.approx(700 / 1200)


def test_rates_within_the_ratio_are_left_alone() -> None:
    balancer = Balancer(period=1.0, persist=1)
    balancer.observe([load(1, 0), load(2, 0)])
    assert balancer.observe([load(1, 1900), load(2, 1000)]) is None
    # 2,000 against 1,000 a second: down to the mean, 1,500, is a quarter of its connections.
    assert balancer.observe([load(1, 3900), load(2, 2000)]) == Give(1, 0.25, 2)


def test_a_trickle_is_not_worth_moving() -> None:
    balancer = Balancer(period=1.0, persist=1)
    balancer.observe([load(1, 0), load(2, 0)])
    assert balancer.observe([load(1, 150), load(2, 0)]) is None
    assert balancer.observe([load(1, 450), load(2, 0)]) == Give(1, 0.5, 2)


def test_it_waits_for_the_move_to_show_before_judging_again() -> None:
    balancer = Balancer(period=1.0, settle=2, persist=1)
    balancer.observe([load(1, 0), load(2, 0)])
    assert balancer.observe([load(1, 1000), load(2, 0)]) is not None
    # The period of the move mixes both placements, and the next one too: no second request.
    assert balancer.observe([load(1, 2000), load(2, 0)]) is None
    assert balancer.observe([load(1, 3000), load(2, 0)]) is None
    assert balancer.observe([load(1, 4000), load(2, 0)]) == Give(1, 0.5, 2)
    assert balancer.asked == 2


def test_workers_in_the_app_not_ready_or_new_take_no_part() -> None:
    balancer = Balancer(period=1.0, persist=1)
    balancer.observe([load(1, 0), load(2, 0), load(3, 0)])
    # 2 is in a long app call (the hand-off rescue's business), 3 is starting or stopping,
    # 4 has just started: only worker 1 has a rate, and one worker has nothing to compare with.
    loads = [load(1, 1000), load(2, 0, in_app=True), load(3, 0, ready=False), load(4, 0)]
    assert balancer.observe(loads) is None
    # The next period 4 has a rate of its own.
    assert balancer.observe([load(1, 2000), load(4, 0)]) == Give(1, 0.5, 4)


def test_a_worker_whose_counters_went_down_starts_over() -> None:
    balancer = Balancer(period=1.0, persist=1)
    balancer.observe([load(1, 5000), load(2, 0)])
    assert balancer.observe([load(1, 10), load(2, 0)]) is None
    assert balancer.observe([load(1, 1010), load(2, 0)]) == Give(1, 0.5, 2)


@pytest.mark.parametrize(
    ("share", "active", "movable", "expected"),
    [
        (0.5, 16, 16, 8),
        (0.5, 16, 5, 5),  # the others are in the middle of a request
        (0.5, 1, 1, 0),  # a lone busy client is never bounced between workers
        (0.5, 3, 3, 1),  # rounded down
        (0.99, 4, 4, 3),  # never the last active one
        (0.0, 10, 10, 0),
    ],
)
def test_how_many_a_worker_gives(share: float, active: int, movable: int, expected: int) -> None:
    assert to_give(share, active, movable) == expected


def test_a_lone_sample_of_imbalance_moves_nothing() -> None:
    balancer = Balancer(period=1.0)  # persist=2: two samples in a row
    balancer.observe([load(1, 0), load(2, 0)])
    assert balancer.observe([load(1, 1000), load(2, 100)]) is None  # a swing
    assert balancer.observe([load(1, 1800), load(2, 800)]) is None  # gone again
    assert balancer.observe([load(1, 2800), load(2, 800)]) is None  # first of a pile-up
    assert balancer.observe([load(1, 3800), load(2, 800)]) == Give(1, 0.5, 2)
