"""The scoreboard: the request in the app and the counters, shared by two mappings of one memfd,
and readable after the writer is gone, even killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from catalyzer.ops import metrics
from catalyzer.ops.metrics import RequestMetrics, read_counts, snapshot_of
from catalyzer.process.scoreboard import COUNTERS_AT, SIZE, Scoreboard


@pytest.fixture
def boards() -> Iterator[tuple[Scoreboard, Scoreboard]]:
    """The master's scoreboard and the worker's mapping of the same memory."""
    master = Scoreboard.create()
    worker = Scoreboard(os.dup(master.fd))
    yield master, worker
    worker.close()
    master.close()


def test_layout() -> None:
    assert COUNTERS_AT % 8 == 0
    assert SIZE == COUNTERS_AT + metrics.SIZE


def test_the_request_in_the_app_and_the_counters_do_not_overlap(
    boards: tuple[Scoreboard, Scoreboard],
) -> None:
    master, worker = boards
    counting = RequestMetrics(worker.counters())
    worker.enter(12.5, "GET /" + "x" * 5000)  # longer than its region: cut
    counting.observe(200, 0.01, 3)
    entered, what = master.read()
    assert entered == 12.5 and what.startswith("GET /xxx")
    assert len(what.encode()) == COUNTERS_AT - 18  # the head, then the pool's stuck time
    worker.set_stuck(13.5)
    assert master.stuck() == 13.5 and master.read()[0] == 12.5
    assert snapshot_of(read_counts(master.counters()))["by_class"]["2xx"] == 1
    worker.leave()
    worker.set_stuck(0.0)
    assert master.read() == (0.0, "") and master.stuck() == 0.0
    assert snapshot_of(read_counts(master.counters()))["bytes_out"] == 3


def test_close_releases_the_views() -> None:
    board = Scoreboard.create()
    view = board.counters()
    assert board.counters() is view
    board.close()  # would raise BufferError with a view still exported
    board.close()  # a second time: nothing (the fd is not closed twice)
    with pytest.raises(ValueError):
        view[0]


def test_counts_of_a_process_killed_with_sigkill_are_all_there() -> None:
    board = Scoreboard.create()
    try:
        pid = os.fork()
        if pid == 0:  # the "worker": counts, then dies at once, without any clean-up
            child = Scoreboard(board.fd)
            counting = RequestMetrics(child.counters())
            for i in range(1000):
                counting.observe(200 if i % 10 else 500, 0.002, 100, app=True)
            os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)  # not reached
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        final = board.counters().tolist()
        snap = snapshot_of(final)
        assert snap["by_class"]["2xx"] == 900 and snap["by_class"]["5xx"] == 100
        assert snap["requests"] == 1000 and snap["bytes_out"] == 100_000
        assert final[metrics.SEQ] == 2000  # even: no update was cut short
    finally:
        board.close()


def test_its_size_is_sealed() -> None:
    board = Scoreboard.create()
    try:
        for size in (0, SIZE * 2):
            with pytest.raises(PermissionError):
                os.ftruncate(board.fd, size)
    finally:
        board.close()
