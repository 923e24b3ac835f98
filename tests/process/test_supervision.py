"""The master's decisions, driven by plain calls: no processes, no reactor."""

from __future__ import annotations

import itertools
import signal

import pytest

from catalyzer.process.supervision import (
    BOOT_FAILURE,
    KILL_GRACE,
    Halt,
    Kill,
    Log,
    Spawn,
    Supervisor,
    WorkerRecord,
)

_pids = itertools.count(1000)


def spawns(commands: list[object]) -> list[WorkerRecord]:
    return [c.worker for c in commands if isinstance(c, Spawn)]


def kills(commands: list[object]) -> list[tuple[int, int]]:
    return [(c.pid, c.signum) for c in commands if isinstance(c, Kill)]


def halts(commands: list[object]) -> list[Halt]:
    return [c for c in commands if isinstance(c, Halt)]


def started(sup: Supervisor, commands: list[object]) -> list[WorkerRecord]:
    """Give each spawned worker a pid, as the master does."""
    new = spawns(commands)
    for w in new:
        sup.spawned(w, next(_pids))
    return new


def boot(procs: int = 2, **kw: float) -> tuple[Supervisor, list[WorkerRecord]]:
    sup = Supervisor(procs, die_timeout=kw.pop("die_timeout", 5.0), **kw)
    workers = started(sup, sup.start(0.0))
    for w in workers:
        assert w.pid is not None
        sup.ready(w.pid, 1.0)
    return sup, workers


def test_start_spawns_one_per_slot() -> None:
    sup = Supervisor(3, die_timeout=5)
    assert [w.slot for w in spawns(sup.start(0))] == [0, 1, 2]


def test_boot_failure_before_any_ready_halts_once_with_output() -> None:
    sup = Supervisor(2, die_timeout=5)
    a, _ = started(sup, sup.start(0))
    assert a.pid is not None
    out = sup.exited(a.pid, BOOT_FAILURE, None, 0.5, output="Traceback: boom")
    assert out == [Halt(BOOT_FAILURE, "worker 0 failed to boot (exit status 3): Traceback: boom")]


def test_crash_after_ready_respawns_then_backs_off() -> None:
    sup, (a, _) = boot(backoff_base=0.5, stable_after=10)
    assert a.pid is not None
    out = sup.exited(a.pid, None, signal.SIGKILL, 2.0)  # lived 1 s: a first failure
    assert any(isinstance(c, Log) and "died unexpectedly" in c.text for c in out)
    (r1,) = started(sup, out)  # first crash: respawned at once
    assert r1.slot == 0 and r1.pid is not None
    sup.ready(r1.pid, 2.1)
    out = sup.exited(r1.pid, 1, None, 2.5)  # second crash in a row: delayed
    assert spawns(out) == []
    assert sup.next_deadline() == 3.0
    assert spawns(sup.tick(2.99)) == []
    (r2,) = started(sup, sup.tick(3.0))
    assert r2.slot == 0 and r2.pid is not None
    out = sup.exited(r2.pid, 1, None, 3.5)  # third, before it was even ready: twice the delay
    assert any(isinstance(c, Log) and "failed to boot" in c.text for c in out)
    assert sup.next_deadline() == 4.5
    assert sup.restarts == {"crashed": 2, "boot-failure": 1}


def test_worker_that_lived_long_enough_resets_backoff() -> None:
    sup, (a, _) = boot(stable_after=10)
    assert a.pid is not None
    (r,) = started(sup, sup.exited(a.pid, 1, None, 2.0))
    assert r.pid is not None
    sup.ready(r.pid, 2.5)
    assert spawns(sup.exited(r.pid, 1, None, 100.0)) != []  # stable for ages: at once again


def test_reload_retires_old_generation_only_when_all_new_are_ready() -> None:
    sup, old = boot()
    new = started(sup, sup.reload(5.0))
    assert [w.generation for w in new] == [2, 2]
    assert new[0].pid is not None and new[1].pid is not None
    assert kills(sup.ready(new[0].pid, 6.0)) == []
    out = sup.ready(new[1].pid, 6.1)
    assert sorted(kills(out)) == sorted((w.pid, signal.SIGTERM) for w in old)
    for w in old:
        assert w.pid is not None
        assert spawns(sup.exited(w.pid, 0, None, 7.0)) == []  # not replaced: new gen serves


def test_failed_reload_keeps_old_generation() -> None:
    sup, old = boot()
    new = started(sup, sup.reload(5.0))
    assert new[0].pid is not None and new[1].pid is not None
    out = sup.exited(new[0].pid, BOOT_FAILURE, None, 5.5, output="SyntaxError")
    assert any(
        isinstance(c, Log) and "reload failed" in c.text and "SyntaxError" in c.text for c in out
    )
    assert kills(out) == [(new[1].pid, signal.SIGKILL)]
    assert not any(isinstance(c, Halt) for c in out)
    assert sup.generation == 1
    assert all(w.state == "ready" for w in old)
    # A later reload is possible again.
    assert len(spawns(sup.reload(9.0))) == 2


def test_retire_replacement_first_one_at_a_time() -> None:
    sup, (a, b) = boot()
    assert a.pid is not None and b.pid is not None
    (ra,) = started(sup, sup.retire(a.pid, "max-requests", 10.0))
    assert ra.slot == a.slot
    assert started(sup, sup.retire(b.pid, "max-requests", 10.1)) == []  # waits its turn
    assert ra.pid is not None
    out = sup.ready(ra.pid, 11.0)
    assert kills(out) == [(a.pid, signal.SIGTERM)]
    (rb,) = started(sup, out)  # a is on its way out: b's replacement starts
    assert rb.slot == b.slot
    assert spawns(sup.exited(a.pid, 0, None, 11.5)) == []  # a's slot is already served
    assert sup.restarts["max-requests"] == 2


def test_stop_terms_then_kills_after_die_timeout_and_exit_status() -> None:
    sup, (a, b) = boot(die_timeout=3)
    assert a.pid is not None and b.pid is not None
    out = sup.stop(10.0)
    assert sorted(kills(out)) == sorted([(a.pid, signal.SIGTERM), (b.pid, signal.SIGTERM)])
    assert halts(sup.exited(a.pid, 0, None, 11.0)) == []
    deadline = 10.0 + 3 + KILL_GRACE  # the worker's own die-timeout, then the master's grace
    assert kills(sup.tick(deadline - 0.01)) == []
    assert kills(sup.tick(deadline)) == [(b.pid, signal.SIGKILL)]
    assert halts(sup.exited(b.pid, None, signal.SIGKILL, 14.1)) == [
        Halt(1, "all workers have exited; requests in flight had to be cut")
    ]


@pytest.mark.parametrize("status", [1, BOOT_FAILURE])
def test_worker_that_cut_requests_makes_stop_exit_one(status: int) -> None:
    sup, (a, b) = boot()
    assert a.pid is not None and b.pid is not None
    sup.stop(10.0)
    sup.exited(a.pid, 0, None, 10.5)
    assert halts(sup.exited(b.pid, status, None, 15.0)) == [
        Halt(1, "all workers have exited; requests in flight had to be cut")
    ]


@pytest.mark.parametrize(
    ("status", "signum"),
    [(None, signal.SIGTERM), (BOOT_FAILURE, None)],
    ids=["dies-of-term", "fails-its-boot"],
)
def test_booting_worker_ending_during_a_stop_is_not_a_failure(
    status: int | None, signum: int | None
) -> None:
    """It never served, so no request was cut: whether the TERM killed it, or it failed its
    boot because the sockets it was to adopt closed meanwhile."""
    sup = Supervisor(2, die_timeout=5)
    a, b = started(sup, sup.start(0))
    assert a.pid is not None and b.pid is not None
    sup.ready(a.pid, 1.0)
    sup.stop(1.1)
    sup.exited(a.pid, 0, None, 1.2)
    assert halts(sup.exited(b.pid, status, signum, 1.3)) == [Halt(0, "all workers have exited")]


def test_clean_stop_exits_zero() -> None:
    sup, (a, b) = boot()
    assert a.pid is not None and b.pid is not None
    sup.stop(10.0)
    sup.exited(a.pid, 0, None, 10.5)
    out = sup.exited(b.pid, 0, None, 10.6)
    assert halts(out) == [Halt(0, "all workers have exited")]
    assert any(
        isinstance(c, Log) and "exited (exit status 0) after shutting down" in c.text for c in out
    )


def test_quick_stop_interrupts() -> None:
    sup, (a, b) = boot()
    assert sorted(kills(sup.stop(10.0, graceful=False))) == sorted(
        [(a.pid, signal.SIGINT), (b.pid, signal.SIGINT)]
    )


def test_scale_up_and_down() -> None:
    sup, (_, b) = boot()
    (c,) = started(sup, sup.scale(1, 5.0))
    assert c.slot == 2 and sup.procs == 3
    assert c.pid is not None
    sup.ready(c.pid, 5.5)
    assert kills(sup.scale(-1, 6.0)) == [(c.pid, signal.SIGTERM)]
    assert spawns(sup.exited(c.pid, 0, None, 6.5)) == []  # not replaced
    assert sup.procs == 2
    assert kills(sup.scale(-1, 7.0)) == [(b.pid, signal.SIGTERM)]
    assert sup.procs == 1
    out = sup.scale(-1, 8.0)
    assert sup.procs == 1 and kills(out) == []


def test_hung_worker_killed_and_replaced() -> None:
    sup, (a, _) = boot()
    assert a.pid is not None
    assert kills(sup.hung(a.pid, 20.0)) == [(a.pid, signal.SIGKILL)]
    (r,) = started(sup, sup.exited(a.pid, None, signal.SIGKILL, 20.1))
    assert r.slot == a.slot and sup.restarts["timeout"] == 1


def test_stale_events_are_ignored() -> None:
    sup, _ = boot()
    assert sup.ready(99999, 1.0) == []
    assert sup.exited(99999, 0, None, 1.0) == []
    assert sup.retire(99999, "x", 1.0) == []


def test_spawn_failure_halts_at_start_and_retries_later() -> None:
    sup = Supervisor(2, die_timeout=5)
    a, _ = spawns(sup.start(0))
    out = sup.spawn_failed(a, "Permission denied", 0.1)
    assert out == [Halt(BOOT_FAILURE, "cannot start worker 0: Permission denied")]

    sup, (w, _) = boot(backoff_max=30)
    assert w.pid is not None
    (r,) = spawns(sup.exited(w.pid, None, signal.SIGKILL, 20.0))
    out = sup.spawn_failed(r, "Permission denied", 20.0)
    assert any(isinstance(c, Log) and "trying again in 30s" in c.text for c in out)
    assert [x.slot for x in spawns(sup.tick(50.0))] == [0]


# -- on-demand growth (the task dispatcher's pool)


def test_initial_starts_fewer_than_procs() -> None:
    sup = Supervisor(4, die_timeout=5, initial=1)
    assert [w.slot for w in spawns(sup.start(0))] == [0]
    assert sup.free_slots() == [1, 2, 3]
    assert Supervisor(2, die_timeout=5, initial=9).initial == 2


def test_grow_fills_the_lowest_free_slot_at_most_once_per_spawn_delay() -> None:
    sup = Supervisor(3, die_timeout=5, initial=1, spawn_delay=2.0)
    started(sup, sup.start(0))
    (b,) = started(sup, sup.grow(0.5))  # the first growth is at once
    assert b.slot == 1
    assert spawns(sup.grow(1.0)) == []  # too soon after the last one
    assert sup.next_deadline() == 2.5
    assert spawns(sup.grow(2.49)) == []
    sup.tick(2.5)  # the moment has come: asking again now succeeds
    assert sup.next_deadline() is None
    (c,) = started(sup, sup.grow(2.5))
    assert c.slot == 2
    assert spawns(sup.grow(10.0)) == []  # every slot taken
    assert sup.next_deadline() is None


def test_grown_worker_is_respawned_like_the_others() -> None:
    sup = Supervisor(2, die_timeout=5, initial=1, spawn_delay=2.0)
    (a,) = started(sup, sup.start(0))
    assert a.pid is not None
    sup.ready(a.pid, 0.1)
    (b,) = started(sup, sup.grow(1.0))
    assert b.pid is not None
    sup.ready(b.pid, 1.1)
    (r,) = started(sup, sup.exited(b.pid, None, signal.SIGKILL, 1.5))
    assert r.slot == 1
    assert sup.free_slots() == []


def test_respawn_pending_slot_is_not_free() -> None:
    sup, (a, _) = boot(backoff_base=0.5, stable_after=10)
    assert a.pid is not None
    (r,) = started(sup, sup.exited(a.pid, None, signal.SIGKILL, 2.0))
    assert r.pid is not None
    sup.exited(r.pid, 1, None, 2.5)  # delayed respawn
    assert sup.free_slots() == []


def test_stop_cancels_growth() -> None:
    sup = Supervisor(3, die_timeout=5, initial=1, spawn_delay=2.0)
    started(sup, sup.start(0))
    started(sup, sup.grow(0.0))
    sup.grow(0.5)
    assert sup.next_deadline() == 2.0
    sup.stop(1.0)
    assert spawns(sup.grow(3.0)) == []
    assert all(w.stop_deadline is not None for w in sup.workers.values() if w.pid)
    assert sup.next_deadline() == 1.0 + 5 + KILL_GRACE  # only the stop's deadline is left


def test_noun_names_workers_in_messages() -> None:
    sup = Supervisor(1, die_timeout=5, noun="child")
    (a,) = started(sup, sup.start(0))
    assert a.pid is not None
    out = sup.ready(a.pid, 1.0)
    assert out == [Log("info", f"child 0 (pid {a.pid}) ready")]
    sup.hung(a.pid, 2.0)
    (log,) = [c for c in sup.exited(a.pid, None, signal.SIGKILL, 2.1) if isinstance(c, Log)]
    assert log.text == f"child 0 (pid {a.pid}) exited (signal 9) after timeout"


def test_kill_grace_may_be_zero() -> None:
    sup, (a, _) = boot(die_timeout=3, kill_grace=0.0)
    assert a.pid is not None
    sup.stop(10.0)
    assert kills(sup.tick(12.99)) == []
    assert (a.pid, signal.SIGKILL) in kills(sup.tick(13.0))


# -- overlapping events converge (issue 15)


def table(sup: Supervisor) -> list[tuple[int, int, str]]:
    return [(w.slot, w.generation, w.state) for w in sup.live()]


def test_reload_during_recycling_starts_no_replacement_of_the_old_generation() -> None:
    # The soak's finding: both workers queued for recycling when HUP came; once generation 2
    # was ready, the second queued worker got a generation-1 replacement that stayed for good.
    sup, (a, b) = boot()
    assert a.pid is not None and b.pid is not None
    (ra,) = started(sup, sup.retire(a.pid, "max-requests", 10.0))
    assert started(sup, sup.retire(b.pid, "max-requests", 10.1)) == []
    new = started(sup, sup.reload(10.2))
    assert [(w.slot, w.generation) for w in new] == [(0, 2), (1, 2)]
    # Recycling waits for the reload: the replacement under way is no longer needed.
    assert ra.state == "stopping"
    for w in new:
        assert w.pid is not None
        out = sup.ready(w.pid, 11.0)
        assert spawns(out) == []
    assert sorted(kills(out)) == sorted([(a.pid, signal.SIGTERM), (b.pid, signal.SIGTERM)])
    for w in (a, b, ra):
        assert w.pid is not None
        assert spawns(sup.exited(w.pid, 0, None, 12.0)) == []
    assert table(sup) == [(0, 2, "ready"), (1, 2, "ready")]


def test_retire_during_reload_waits_for_it() -> None:
    sup, (a, _) = boot()
    assert a.pid is not None
    started(sup, sup.reload(5.0))
    assert spawns(sup.retire(a.pid, "max-requests", 5.1)) == []


def test_failed_reload_resumes_recycling() -> None:
    sup, (a, _) = boot()
    assert a.pid is not None
    started(sup, sup.retire(a.pid, "max-requests", 5.0))
    new = started(sup, sup.reload(5.1))
    assert new[0].pid is not None
    out = sup.exited(new[0].pid, BOOT_FAILURE, None, 5.5)
    assert any(isinstance(c, Log) and "reload failed" in c.text for c in out)
    (ra,) = spawns(out)  # generation 1 again, and a's turn to be recycled
    assert (ra.slot, ra.generation) == (0, 1)


def test_scaling_down_during_reload_lets_it_complete() -> None:
    sup, _ = boot(procs=3)
    new = started(sup, sup.reload(5.0))
    sup.scale(-1, 5.1)  # the new generation's slot 2 goes before it was ever ready
    assert new[2].state == "stopping"
    for w in new[:2]:
        assert w.pid is not None
        sup.ready(w.pid, 6.0)
    assert not sup.reloading
    assert [(w.slot, w.generation) for w in sup.live() if w.state == "ready"] == [(0, 2), (1, 2)]


def test_recycled_worker_dying_hands_the_turn_on() -> None:
    sup, (a, b) = boot()
    assert a.pid is not None and b.pid is not None
    (ra,) = started(sup, sup.retire(a.pid, "max-requests", 10.0))
    sup.retire(b.pid, "max-requests", 10.1)
    out = sup.exited(a.pid, None, signal.SIGKILL, 10.5)  # ra covers slot 0: no respawn
    (rb,) = spawns(out)  # and b's turn has come
    assert rb.slot == b.slot
    assert [w.id for w in sup.live() if w.slot == a.slot] == [ra.id]


def test_replacement_failing_to_boot_backs_off() -> None:
    sup, (a, _) = boot(backoff_base=0.5, stable_after=10)
    assert a.pid is not None
    (ra,) = started(sup, sup.retire(a.pid, "max-requests", 10.0))
    assert ra.pid is not None
    (r2,) = started(sup, sup.exited(ra.pid, 1, None, 10.2))  # first failure: at once
    assert r2.pid is not None
    assert spawns(sup.exited(r2.pid, 1, None, 10.4)) == []  # second: after a delay
    assert sup.next_deadline() == 10.9
    assert [w.slot for w in spawns(sup.tick(10.9))] == [0]


def test_worker_stopped_before_it_has_a_pid_is_signalled_once_it_has_one() -> None:
    sup = Supervisor(1, die_timeout=5)
    (a,) = spawns(sup.start(0.0))
    assert sup.stop(0.1) == []  # nothing to signal yet
    sup.spawned(a, 4242)
    assert sup.next_deadline() == 0.0  # overdue
    assert kills(sup.tick(0.2)) == [(4242, signal.SIGTERM)]
    assert halts(sup.exited(4242, 0, None, 0.3)) == [Halt(0, "all workers have exited")]


def test_retire_detail_is_logged_not_counted() -> None:
    sup, (a, _) = boot()
    assert a.pid is not None
    out = sup.retire(a.pid, "max-worker-rss", 10.0, "RSS 143 MiB > 100 MiB")
    assert (
        Log(
            "info",
            f"worker 0 (pid {a.pid}): max-worker-rss (RSS 143 MiB > 100 MiB); starting its replacement",
        )
        in out
    )
    assert len(spawns(out)) == 1
    assert sup.restarts == {"max-worker-rss": 1}


def test_liveness_off_has_no_deadline() -> None:
    sup, _ = boot()
    assert sup.next_deadline() is None
    assert sup.tick(1000.0) == []


def test_frozen_worker_is_killed_and_replaced_at_the_window() -> None:
    sup, (a, b) = boot(liveness=5.0)  # ready at 1.0
    assert a.pid is not None and b.pid is not None
    assert sup.next_deadline() == 6.0
    sup.heartbeat(b.pid, 5.0)
    assert sup.tick(5.99) == []
    out = sup.tick(6.0)
    assert kills(out) == [(a.pid, signal.SIGKILL)]
    (replacement,) = spawns(out)
    assert (replacement.slot, replacement.generation) == (a.slot, a.generation)
    assert [c.level for c in out if isinstance(c, Log)] == ["error"]
    assert sup.restarts == {"frozen": 1}
    assert sup.next_deadline() == 10.0  # b's window, from its heartbeat
    # Its exit is expected and its slot is served already.
    assert spawns(sup.exited(a.pid, None, signal.SIGKILL, 6.1)) == []


def test_silent_inside_the_app_is_not_frozen_and_gets_a_new_window() -> None:
    sup, (a,) = boot(procs=1, liveness=5.0)
    assert a.pid is not None
    assert sup.tick(6.0, in_app={a.pid}) == []
    assert sup.next_deadline() == 11.0
    assert kills(sup.tick(11.0)) == [(a.pid, signal.SIGKILL)]


def test_no_liveness_while_starting_or_stopping() -> None:
    sup = Supervisor(1, die_timeout=5, liveness=2.0)
    (w,) = started(sup, sup.start(0.0))
    assert sup.next_deadline() is None  # booting: not ready, no heartbeats yet
    assert w.pid is not None
    sup.ready(w.pid, 1.0)
    sup.stop(2.0)
    assert kills(sup.tick(3.0)) == []  # stopping: die-timeout governs


def test_recycling_worker_that_freezes_is_replaced_once() -> None:
    sup, (a, b) = boot(liveness=5.0)
    assert a.pid is not None and b.pid is not None
    (ra,) = started(sup, sup.retire(a.pid, "max-requests", 2.0))
    sup.heartbeat(b.pid, 5.0)
    out = sup.tick(6.0)
    assert kills(out) == [(a.pid, signal.SIGKILL)]
    assert spawns(out) == []  # its replacement is booting already
    assert ra.state == "starting"
