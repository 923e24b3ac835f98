"""The prefork master on a fake process reactor: no processes, no sockets, a Clock for time.

Each worker is a :class:`catalyzer.testing.FakeProcess`; a test plays its part by saying Ready
over its control channel (an AMP box), writing to its stderr and ending it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.protocols import amp

from catalyzer.ops.metrics import RequestMetrics
from catalyzer.prefork import fdpass
from catalyzer.prefork.master import MasterService
from catalyzer.process.supervision import BOOT_FAILURE, KILL_GRACE, READY
from catalyzer.settings import Config
from catalyzer.testing import FakeProcess, FakeProcessReactor

APP = "tests.helpers:hello"


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith("catalyzer.prefork"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Master:
    """A started MasterService on a FakeProcessReactor, and what it exited with."""

    def __init__(self, **settings: Any) -> None:
        # No liveness check unless a test asks for one: these workers send no heartbeats.
        values: dict[str, object] = {
            "app": APP,
            "procs": 2,
            "die-timeout": 5.0,
            "worker-liveness": 0.0,
        }
        values.update({k.replace("_", "-"): v for k, v in settings.items()})
        self.reactor = FakeProcessReactor()
        self.exits: list[int] = []
        self.service = MasterService(
            Config.from_values(values), [], self.reactor, at_exit=self.exits.append
        )
        self.service.startService()
        # The reactor runs from here on; the hooks (signal handlers, process title) are left
        # uncalled, as they would change this very process.
        self.reactor.running = True

    def live(self) -> list[FakeProcess]:
        return self.reactor.running_processes()

    def generation(self, n: int) -> list[FakeProcess]:
        return [p for p in self.live() if p.proto.record.generation == n]

    def ready(self, *processes: FakeProcess) -> None:
        for process in processes:
            assert process.pid is not None
            box = amp.Box({b"_command": b"Ready", b"_ask": b"1", b"pid": b"%d" % process.pid})
            process.control.dataReceived(box.serialize())

    def heartbeat(self, *processes: FakeProcess) -> None:
        for process in processes:
            box = amp.Box({b"_command": b"Heartbeat", b"stats": b"{}"})
            process.control.dataReceived(box.serialize())

    def boot(self) -> list[FakeProcess]:
        workers = self.live()
        self.ready(*workers)
        return workers

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    @property
    def stopped(self) -> bool:
        return bool(self.reactor.hasStopped)


def test_boot_to_n_ready_workers(logged: list[str]) -> None:
    master = Master(procs=3)
    workers = master.live()
    assert len(workers) == 3
    assert [w.args[1:] for w in workers] == [["-m", "catalyzer.prefork.worker"]] * 3
    assert sorted(w.proto.record.slot for w in workers) == [0, 1, 2]
    assert not master.service.ready()
    master.ready(*workers)
    assert all(w.proto.record.state == READY for w in workers)
    assert master.service.ready()
    assert sum("ready" in line for line in logged) == 3


def test_output_is_held_until_ready() -> None:
    master = Master(procs=1)
    (worker,) = master.live()
    held: list[str] = []
    worker.proto.log_line = held.append
    worker.output(b"importing the app\n")
    assert held == []
    master.ready(worker)
    assert held == ["importing the app"]
    worker.output(b"serving\n")
    assert held == ["importing the app", "serving"]


def test_no_timer_while_nothing_is_due() -> None:
    """The supervisor is asked to tick at its deadlines only: a quiet master has no timer."""
    master = Master()
    master.boot()
    assert master.reactor.getDelayedCalls() == []


def test_hup_starts_a_generation_and_retires_the_old_once_all_are_ready() -> None:
    master = Master()
    old = master.boot()
    master.service.reload()
    new = master.generation(2)
    assert len(new) == 2
    master.ready(new[0])
    assert all(p.signals == [] for p in old)  # one new worker is not enough
    master.ready(new[1])
    assert [p.signals for p in old] == [[signal.SIGTERM], [signal.SIGTERM]]
    for p in old:
        p.exit(0)
    assert master.live() == new  # retired by the reload: not replaced
    assert master.service.supervisor.generation == 2


def test_a_crash_is_replaced_then_backs_off_on_the_clock() -> None:
    master = Master()
    a, b = master.boot()
    a.exit(signum=signal.SIGSEGV)
    (replacement,) = [p for p in master.live() if p is not b]
    assert replacement.proto.record.slot == a.proto.record.slot
    master.ready(replacement)
    replacement.exit(1)  # a second crash in a row: respawned after a back-off
    assert master.live() == [b]
    (timer,) = master.reactor.getDelayedCalls()
    master.advance(timer.getTime() - master.reactor.seconds() - 0.001)
    assert master.live() == [b]
    master.advance(0.001)
    assert len(master.live()) == 2


def test_boot_failure_halts_with_status_3_and_the_workers_words(
    capfd: pytest.CaptureFixture[str],
) -> None:
    master = Master()
    first, second = master.live()
    first.output(b"Traceback (most recent call last):\nImportError: no app\n")
    first.exit(BOOT_FAILURE)
    assert master.exits == [BOOT_FAILURE]
    assert master.stopped
    assert second.signals == [signal.SIGKILL]
    err = capfd.readouterr().err
    assert err.startswith("catalyzer: worker 0 failed to boot (exit status 3): Traceback")
    assert "ImportError: no app" in err


def test_term_drains_and_exits_0_when_every_worker_leaves_in_time() -> None:
    master = Master()
    workers = master.boot()
    master.service.stop(graceful=True)
    assert [p.signals for p in workers] == [[signal.SIGTERM], [signal.SIGTERM]]
    for p in workers:
        p.exit(0)
    assert master.stopped
    assert master.exits == []  # status 0: twistd's own


def test_term_kills_after_die_timeout_then_exits_1(capfd: pytest.CaptureFixture[str]) -> None:
    master = Master(die_timeout=5.0)
    quick, stuck = master.boot()
    master.service.stop(graceful=True)
    quick.exit(0)
    master.advance(5.0 + KILL_GRACE - 0.01)
    assert stuck.signals == [signal.SIGTERM]
    master.advance(0.01)
    assert stuck.signals == [signal.SIGTERM, signal.SIGKILL]
    assert not master.stopped
    stuck.exit(signum=signal.SIGKILL)
    assert master.stopped
    assert master.exits == [1]
    assert capfd.readouterr().err == (
        "catalyzer: all workers have exited; requests in flight had to be cut\n"
    )


def _hang(master: Master, timeout: float) -> FakeProcess:
    """Boot one worker, put it in the app, and wait until just before --timeout runs out."""
    (worker,) = master.boot()
    master.advance(10)
    worker.proto.scoreboard.enter(master.reactor.seconds(), "GET /slow")
    master.advance(timeout - 0.01)
    assert worker.signals == []
    master.advance(0.01)
    assert worker.signals == [signal.SIGUSR2]  # faulthandler: dump your stack
    return worker


def test_timeout_with_a_stack(logged: list[str]) -> None:
    master = Master(procs=1, timeout=2.0)
    worker = _hang(master, 2.0)
    assert any(
        "has spent 2.0s in the app on GET /slow (timeout 2s): asking for its stack" in line
        for line in logged
    )
    worker.output(b"Current thread 0x00007f00 (most recent call first):\n  File x, line 1\n")
    master.advance(0.49)
    assert worker.signals == [signal.SIGUSR2]
    master.advance(0.01)
    assert worker.signals == [signal.SIGUSR2, signal.SIGKILL]
    worker.exit(signum=signal.SIGKILL)
    assert any("killed after --timeout: its stack is logged above" in line for line in logged)
    assert not any("no stack" in line for line in logged)
    (replacement,) = master.live()
    assert replacement is not worker


def test_timeout_without_a_stack_says_so(logged: list[str]) -> None:
    """A worker that cannot run its signal handler (SIGSTOP'd, say) writes nothing."""
    master = Master(procs=1, timeout=2.0)
    worker = _hang(master, 2.0)
    master.advance(0.5)
    assert worker.signals == [signal.SIGUSR2, signal.SIGKILL]
    worker.exit(signum=signal.SIGKILL)
    assert any(
        "killed after --timeout: no stack: the worker did not answer the dump request "
        "(SIGUSR2) within 0.5s" in line
        for line in logged
    )
    assert not any("its stack is logged above" in line for line in logged)


def test_timeout_check_follows_the_request_not_a_poll() -> None:
    master = Master(procs=1, timeout=2.0)
    (worker,) = master.boot()
    (check,) = master.reactor.getDelayedCalls()
    assert check.getTime() == pytest.approx(2.0)  # nothing in the app: the soonest possible
    master.advance(1.5)
    worker.proto.scoreboard.enter(master.reactor.seconds(), "GET /")
    master.advance(0.5)  # the check at 2.0 finds a request entered at 1.5: next at 3.5
    (check,) = master.reactor.getDelayedCalls()
    assert check.getTime() == pytest.approx(3.5)
    worker.proto.scoreboard.leave()
    master.advance(1.5)
    assert worker.signals == []


# -- keep-alive hand-off: the master's routing, on real descriptors


def _handoff_ends(master: Master, workers: list[FakeProcess]) -> list[socket.socket]:
    """Give each fake worker a real hand-off channel; the test holds the workers' ends."""
    ends = []
    for worker in workers:
        ours, theirs = fdpass.pair()
        worker.proto.handoff.stop()
        worker.proto.handoff = fdpass.FdReader(master.reactor, ours, lambda fd: None)
        ends.append(theirs)
    master.advance(10)  # a scoreboard entry at time 0.0 would read as "not in the app"
    return ends


def test_a_connection_from_a_busy_worker_goes_to_an_idle_one() -> None:
    master = Master(procs=2)
    busy, idle = master.boot()
    busy_end, idle_end = _handoff_ends(master, [busy, idle])
    client, server = socket.socketpair()
    try:
        busy.proto.scoreboard.enter(master.reactor.seconds(), "GET /slow")
        master.service._handed_over(busy.proto, os.dup(server.fileno()))
        fds, _ = fdpass.receive_fds(idle_end)
        assert len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(server.fileno()).st_ino
        os.close(fds[0])
        assert fdpass.receive_fds(busy_end) == ([], False)
        assert master.service.handoffs.holding == 0
    finally:
        for sock in (client, server, busy_end, idle_end):
            sock.close()


def test_with_threads_a_worker_is_passed_over_only_while_its_pool_is_stuck() -> None:
    master = Master(procs=2, threads=2)
    source, other = master.boot()
    source_end, other_end = _handoff_ends(master, [source, other])
    client, server = socket.socketpair()
    try:
        now = master.reactor.seconds()
        # A request in one of its threads: the other worker still takes connections.
        other.proto.scoreboard.enter(now, "GET /")
        master.service._handed_over(source.proto, os.dup(server.fileno()))
        fds, _ = fdpass.receive_fds(other_end)
        assert len(fds) == 1
        os.close(fds[0])
        # Every thread of both stuck (prefork.poolrescue): held, not sent.
        source.proto.scoreboard.set_stuck(now)
        other.proto.scoreboard.set_stuck(now)
        master.service._handed_over(source.proto, os.dup(server.fileno()))
        assert fdpass.receive_fds(other_end) == ([], False)
        assert master.service.handoffs.holding == 1
        other.proto.scoreboard.set_stuck(0.0)
        master.reactor.pump([0.005] * 20)
        fds, _ = fdpass.receive_fds(other_end)
        assert len(fds) == 1
        os.close(fds[0])
    finally:
        for sock in (client, server, source_end, other_end):
            sock.close()


def test_with_every_worker_busy_it_waits_then_goes_back_to_its_source() -> None:
    master = Master(procs=2)
    source, other = master.boot()
    source_end, other_end = _handoff_ends(master, [source, other])
    client, server = socket.socketpair()
    try:
        now = master.reactor.seconds()
        source.proto.scoreboard.enter(now, "GET /slow")
        other.proto.scoreboard.enter(now, "GET /slow")
        master.service._handed_over(source.proto, os.dup(server.fileno()))
        master.reactor.pump([0.005] * 100)  # half a second: still held
        assert master.service.handoffs.holding == 1
        assert fdpass.receive_fds(other_end) == ([], False)
        master.reactor.pump([0.005] * 101)
        fds, _ = fdpass.receive_fds(source_end)
        assert len(fds) == 1
        os.close(fds[0])
        assert master.service.handoffs.holding == 0
        # Nothing held: the master stops looking.
        retry = master.service._route_handoffs
        assert not any(call.func == retry for call in master.reactor.getDelayedCalls())
    finally:
        for sock in (client, server, source_end, other_end):
            sock.close()


def test_held_connections_are_closed_when_the_master_stops() -> None:
    master = Master(procs=1)
    (worker,) = master.boot()
    (end,) = _handoff_ends(master, [worker])
    client, server = socket.socketpair()
    try:
        worker.proto.scoreboard.enter(master.reactor.seconds(), "GET /slow")
        fd = os.dup(server.fileno())
        master.service._handed_over(worker.proto, fd)
        assert master.service.handoffs.holding == 1
        master.service.stopService()
        assert master.service.handoffs.holding == 0
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        for sock in (client, server, end):
            sock.close()


def test_one_retry_timer_however_many_arrive_while_every_worker_is_busy() -> None:
    master = Master(procs=1)
    (worker,) = master.boot()
    (end,) = _handoff_ends(master, [worker])
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        worker.proto.scoreboard.enter(master.reactor.seconds(), "GET /slow")
        for _, server in pairs:
            master.service._handed_over(worker.proto, os.dup(server.fileno()))
        retry = master.service._route_handoffs
        timers = [c for c in master.reactor.getDelayedCalls() if c.func == retry]
        assert len(timers) == 1
        assert master.service.handoffs.holding == 3
        worker.proto.scoreboard.leave()  # out of the app: it takes them back
        master.reactor.pump([0.005])
        fds, _ = fdpass.receive_fds(end)
        assert len(fds) == 3
        for fd in fds:
            os.close(fd)
    finally:
        end.close()
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_a_silent_worker_is_killed_and_replaced_after_the_liveness_window(
    logged: list[str],
) -> None:
    master = Master(worker_liveness=3.0)
    talking, frozen = master.boot()
    for _ in range(5):
        master.advance(1.0)
        master.heartbeat(talking)  # the other one says nothing (SIGSTOP)
        if frozen.signals:
            break
    assert frozen.signals == [signal.SIGKILL]
    assert talking.signals == []
    assert master.reactor.seconds() == 3.0
    assert sum("frozen: no heartbeat for 3.0s outside the app" in line for line in logged) == 1
    replacement = next(p for p in master.live() if p not in (talking, frozen))
    assert replacement.proto.record.slot == frozen.proto.record.slot
    frozen.exit(signum=signal.SIGKILL)
    master.ready(replacement)
    assert master.service.supervisor.restarts == {"frozen": 1}
    assert sorted(p.pid for p in master.live()) == sorted([talking.pid, replacement.pid])


def test_a_worker_silent_inside_the_app_is_left_to_timeout() -> None:
    master = Master(worker_liveness=3.0, procs=1)
    (worker,) = master.boot()
    master.advance(1.0)  # (an entry time of 0.0 means "not in the app")
    worker.proto.scoreboard.enter(master.reactor.seconds(), "GET /slow")
    master.advance(30.0)  # in the app all along, no heartbeat: not frozen
    assert worker.signals == []
    worker.proto.scoreboard.leave()
    master.advance(2.9)  # out of the app: a whole window to speak again
    master.heartbeat(worker)
    master.advance(2.9)
    assert worker.signals == []
    master.advance(0.2)
    assert worker.signals == [signal.SIGKILL]


# -- counters: read from each worker's scoreboard, live and once after its end


def counting(worker: FakeProcess) -> RequestMetrics:
    """The worker's side of its scoreboard's counters (here: the master's own mapping)."""
    return RequestMetrics(worker.proto.scoreboard.counters())


def serve(worker: FakeProcess, n: int, status: int = 200) -> None:
    metrics = counting(worker)
    for _ in range(n):
        metrics.observe(status, 0.001, 10, app=True)


def heartbeat(worker: FakeProcess, **stats: int) -> None:
    box = amp.Box({b"_command": b"Heartbeat", b"stats": json.dumps(stats).encode()})
    worker.control.dataReceived(box.serialize())


def test_counters_survive_every_end_and_gauges_drop_at_once() -> None:
    master = Master(procs=2)
    a, b = master.boot()
    serve(a, 5)
    serve(b, 7, status=500)
    heartbeat(a, connections=3, in_flight=1)
    heartbeat(b, connections=2, in_flight=1)
    status = master.service.status()
    assert status["requests"] == 12
    assert status["metrics"]["by_class"]["2xx"] == 5
    assert status["metrics"]["by_class"]["5xx"] == 7
    assert [w["requests"] for w in status["workers"]] == [5, 7]
    assert (status["connections"], status["in_flight"]) == (5, 2)

    serve(a, 2)  # answered after the last read, then killed -9
    a.exit(signum=signal.SIGKILL)
    status = master.service.status()
    assert status["requests"] == 14
    assert status["metrics"]["duration_count"] == 14
    assert (status["connections"], status["in_flight"]) == (2, 1)  # only b's now
    (c,) = [p for p in master.live() if p is not b]
    master.ready(c)
    serve(c, 1)
    assert master.service.status()["requests"] == 15

    master.service.reload()  # HUP: b and c retire gracefully once the new ones are ready
    master.ready(*master.generation(2))
    serve(b, 3)
    b.exit(0)
    c.exit(signum=signal.SIGSEGV)  # a crash while retiring
    status = master.service.status()
    assert status["requests"] == 18
    assert status["metrics"]["by_class"] == {"1xx": 0, "2xx": 11, "3xx": 0, "4xx": 0, "5xx": 7}
    assert status["metrics"]["bytes_out"] == 180
    assert (status["connections"], status["in_flight"]) == (0, 0)
    assert status["workers_retired"] == 3
    assert " 0 requests" in master.service.dump_text()


def test_dump_reads_the_requests_from_the_scoreboard() -> None:
    master = Master(procs=1)
    (worker,) = master.boot()
    serve(worker, 4)
    assert ", 4 requests, 0 connections" in master.service.dump_text()


def test_unreadable_final_counts_keep_the_last_read_and_the_exit_goes_on(
    logged: list[str],
) -> None:
    master = Master(procs=1)
    (worker,) = master.boot()
    serve(worker, 3)
    assert master.service.status()["requests"] == 3
    worker.proto.scoreboard.close()  # as if its memory were gone
    worker.exit(signum=signal.SIGKILL)
    assert master.service.status()["requests"] == 3
    assert any("counters of an exited worker could not be read" in line for line in logged)
    (replacement,) = master.live()  # the exit was handled: a replacement is starting
    assert replacement is not worker


def sent_commands(worker: FakeProcess) -> list[amp.Box]:
    """The AMP boxes the master has sent to ``worker`` (and forgets them)."""
    boxes: list[amp.Box] = amp.parseString(worker.control.transport.value())
    worker.control.transport.clear()
    return boxes


def test_a_busy_worker_gives_connections_to_an_idle_one_and_an_idle_master_has_no_timer() -> None:
    master = Master(procs=2)
    a, b = master.boot()
    for worker in (a, b):
        sent_commands(worker)  # what booting sent
    heartbeat(a)
    heartbeat(b)
    master.advance(1.0)
    serve(b, 20)
    heartbeat(a)
    heartbeat(b)  # 20 requests a second: not worth a timer
    assert master.reactor.getDelayedCalls() == []
    master.advance(1.0)
    serve(a, 1000)
    heartbeat(a)  # 1,000 a second: the balancer samples from now on
    serve(a, 600)
    master.advance(0.25)  # 2,400 a second against none: once is not enough
    assert sent_commands(a) == []
    serve(a, 600)
    master.advance(0.25)  # twice in a row: half of a's connections go to b
    (box,) = sent_commands(a)
    assert box[b"_command"] == b"Rebalance"
    assert float(box[b"share"]) == pytest.approx(0.5)
    assert sent_commands(b) == []
    a.control.dataReceived(amp.Box({b"_answer": box[b"_ask"], b"moved": b"4"}).serialize())
    assert master.service.status()["rebalanced"] == 4
    assert master.service._balance_to == {a.proto.record.id: b.proto.record.id}

    master.advance(0.25)  # nobody served anything since: sampling stops
    assert master.reactor.getDelayedCalls() == []
    assert sent_commands(a) == []


def test_a_split_handler_master_never_balances() -> None:
    reactor = FakeProcessReactor()
    config = Config.from_values({"app": APP, "procs": 2, "worker-liveness": 0.0})
    service = MasterService(config, [], reactor, balance=False)
    assert service.balancer is None
