"""Request counters: the vector a process counts into, its consistent read, and the master's sum
over fake workers that report, retire, crash and are killed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalyzer.ops import metrics
from catalyzer.ops.metrics import (
    COUNT,
    CounterTotals,
    RequestMetrics,
    merge,
    read_counts,
    snapshot_of,
)


def test_observe_counts_class_bucket_duration_and_bytes() -> None:
    m = RequestMetrics()
    m.observe(200, 0.003, 10, app=True)
    m.observe(404, 0.2, 5)  # the server's own answer: not an app request
    m.observe(99, 20.0, 0)  # below 1xx and past the last bucket
    m.observe(1999, 0.0, 0)  # past 5xx (never sent: the head check refuses it)
    m.received(120)
    snap = m.snapshot()
    assert snap["by_class"] == {"1xx": 1, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}
    assert snap["buckets"][metrics.BUCKETS.index(0.005)] == 1
    assert snap["buckets"][metrics.BUCKETS.index(0.25)] == 1
    assert snap["buckets"][0] == 1  # 0.0
    assert snap["buckets"][-1] == 1  # +Inf
    assert snap["duration_count"] == 4
    assert snap["duration_sum"] == pytest.approx(20.203)
    assert (snap["bytes_in"], snap["bytes_out"], snap["requests"]) == (120, 15, 1)
    assert m.requests == 1
    assert m.counts[metrics.SEQ] == 8  # even again: four updates, each bracketed


def test_counts_live_in_the_given_memory() -> None:
    memory = bytearray(metrics.SIZE)
    m = RequestMetrics(memoryview(memory).cast("Q"))
    m.observe(503, 0.01, 7)
    other = RequestMetrics(memoryview(memory).cast("Q"))  # another mapping of the same bytes
    assert other.snapshot()["by_class"]["5xx"] == 1
    assert other.snapshot()["bytes_out"] == 7


def test_a_vector_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="memoryview of 24 'Q' items"):
        RequestMetrics(memoryview(bytearray(metrics.SIZE)))
    with pytest.raises(ValueError):
        RequestMetrics(memoryview(bytearray(metrics.SIZE - 8)).cast("Q"))


class Racing:
    """A counter vector another process writes while it is read: each ``tolist`` returns the
    next of ``reads``; ``[SEQ]`` returns the next of ``seqs``."""

    def __init__(self, reads: list[list[int]], seqs: list[int]) -> None:
        self.reads = reads
        self.seqs = seqs
        self.calls = 0

    def tolist(self) -> list[Any]:
        self.calls += 1
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]

    def __getitem__(self, index: int, /) -> Any:
        assert index == metrics.SEQ
        return self.seqs.pop(0) if len(self.seqs) > 1 else self.seqs[0]


def vector(seq: int, twoxx: int) -> list[int]:
    counts = [0] * COUNT
    counts[metrics.SEQ] = seq
    counts[metrics.CLASS + 1] = twoxx
    return counts


def test_a_read_during_an_update_is_retried() -> None:
    # 1st read: seq odd (an update is under way); 2nd: seq even but it changed before the read
    # ended; 3rd: stable.
    racing = Racing([vector(3, 1), vector(4, 2), vector(6, 3)], seqs=[5, 6])
    assert read_counts(racing) == vector(6, 3)
    assert racing.calls == 3


def test_a_writer_stopped_mid_update_does_not_hang_the_reader() -> None:
    racing = Racing([vector(7, 4)], seqs=[7])
    assert read_counts(racing) == vector(7, 4)
    assert racing.calls == metrics._READ_TRIES + 1


def test_merge_and_snapshot_agree() -> None:
    a, b = RequestMetrics(), RequestMetrics()
    a.observe(200, 0.001, 1)
    b.observe(500, 1.0, 2)
    b.observe(200, 0.5, 0, app=True)
    total = [x + y for x, y in zip(a.counts, b.counts, strict=True)]
    assert merge([a.snapshot(), b.snapshot()]) == snapshot_of(total)


# -- the master's sum over workers


def counts(**values: int) -> list[int]:
    out = [0] * COUNT
    for name, value in values.items():
        out[getattr(metrics, name.upper())] = value
    return out


def test_an_exited_worker_is_counted_once_with_its_final_counts() -> None:
    totals = CounterTotals()
    totals.started("a")
    totals.started("b")
    totals.reported("a", counts(requests=10))
    totals.reported("b", counts(requests=5))
    assert totals.total()[metrics.REQUESTS] == 15
    # a answered 3 more after the last read, then was killed: the final read has them
    totals.exited("a", counts(requests=13))
    assert totals.total()[metrics.REQUESTS] == 18
    totals.exited("a", counts(requests=13))  # told twice: still once
    totals.reported("a", counts(requests=99))  # a late read of a gone worker: ignored
    assert totals.total()[metrics.REQUESTS] == 18
    assert totals.workers_retired == 1
    assert totals.of("a") is None
    assert totals.of("b") == counts(requests=5)


def test_a_worker_never_read_alive_still_counts() -> None:
    totals = CounterTotals()
    totals.started(1)
    totals.exited(1, counts(bytes_out=100))
    assert totals.total() == counts(bytes_out=100)


def test_unreadable_final_counts_keep_the_last_read() -> None:
    totals = CounterTotals()
    totals.started(1)
    totals.reported(1, counts(requests=4))
    totals.exited(1, None)
    assert totals.total()[metrics.REQUESTS] == 4


def test_events_of_unknown_workers_are_ignored() -> None:
    totals = CounterTotals()
    totals.reported("ghost", counts(requests=4))
    totals.exited("ghost", counts(requests=4))
    assert totals.total() == [0] * COUNT


def test_a_lower_read_is_not_believed() -> None:
    totals = CounterTotals()
    totals.started(1)
    totals.reported(1, counts(requests=9))
    totals.reported(1, counts(requests=2))
    assert totals.total()[metrics.REQUESTS] == 9


def test_the_sequence_number_is_never_summed() -> None:
    totals = CounterTotals()
    for w in (1, 2):
        totals.started(w)
        totals.reported(w, counts(seq=5))
    totals.exited(1, counts(seq=7))
    assert totals.total()[metrics.SEQ] == 0


def test_a_vector_of_the_wrong_length_is_refused() -> None:
    totals = CounterTotals()
    totals.started(1)
    with pytest.raises(ValueError):
        totals.reported(1, [1, 2, 3])


# Events of a run: ("serve", worker index, n) a worker answers n requests; ("read", i) the master
# reads a live worker; ("exit", i) it ends (any way: its final counts are read once);
# ("spawn",) a new worker starts.
_events = st.lists(
    st.one_of(
        st.tuples(st.just("serve"), st.integers(0, 5), st.integers(1, 50)),
        st.tuples(st.just("read"), st.integers(0, 5)),
        st.tuples(st.just("exit"), st.integers(0, 5)),
        st.tuples(st.just("spawn")),
    ),
    max_size=60,
)


# The machine may be busy: generating the examples must not fail the test.
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_events)
def test_the_total_never_goes_down_and_ends_exact(events: list[tuple[Any, ...]]) -> None:
    totals = CounterTotals()
    served: dict[int, int] = {}  # worker -> requests it answered (what its memory holds)
    live: list[int] = []
    next_id = 0

    def spawn() -> None:
        nonlocal next_id
        totals.started(next_id)
        served[next_id] = 0
        live.append(next_id)
        next_id += 1

    spawn()
    spawn()
    last = 0
    for event in events:
        if event[0] == "spawn":
            spawn()
        elif live:
            worker = live[event[1] % len(live)]
            if event[0] == "serve":
                served[worker] += event[2]
            elif event[0] == "read":
                totals.reported(worker, counts(requests=served[worker]))
            else:
                live.remove(worker)
                totals.exited(worker, counts(requests=served[worker]))
        now = totals.total()[metrics.REQUESTS]
        assert now >= last
        last = now
    for worker in list(live):
        totals.exited(worker, counts(requests=served[worker]))
    assert totals.total()[metrics.REQUESTS] == sum(served.values())
