"""PreforkDispatcher with real children: each scenario of tests/dispatch/driver.py runs in a
process of its own (the global reactor cannot be restarted), bounded by a deadline."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import REPO, child_env, pid_alive

pytestmark = pytest.mark.integration

DEADLINE = 40.0  # the driver's own watchdog fires at 30 s


def run(name: str) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.dispatch.driver", name],
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scenario {name} did not finish within {DEADLINE:g}s: {e.stderr!r}")
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"status {done.returncode}\n{done.stdout}\n{done.stderr}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert out["ok"], f"{out.get('error')}\n--- log ---\n{done.stderr}"
    out["log"] = done.stderr
    # No scenario leaves a child behind, neither when its dispatcher stopped nor now.
    assert out.get("left_alive", []) == [], out
    for pid in out.get("children_seen", []):
        assert not pid_alive(pid), f"child {pid} outlived its dispatcher"
    return out


def test_crash_is_an_error_with_elapsed_and_other_tasks_go_on() -> None:
    out = run("crash")
    crash = out["crash"]
    assert crash["error"]["type"] == "ChildDied"
    assert "SIGKILL" in crash["error"]["message"]
    assert crash["elapsed"] > 0 and crash["pid"] is not None
    assert out["others_ok"] == 20
    assert not out["crashed_alive"]
    assert out["restarts"] == {"crashed": 1}
    assert "died unexpectedly" in out["log"]


def test_timeout_kills_the_child_and_it_is_not_reused() -> None:
    out = run("timeout")
    slow = out["slow"]
    assert slow["error"]["type"] == "TaskTimeout"
    assert 0.5 <= slow["elapsed"] < 5
    assert slow["pid"] in out["children_seen"]  # and so, checked by run(), gone by now
    assert slow["pid"] not in out["after_pids"]  # later tasks ran elsewhere
    assert out["quick_ok"] == 10


def test_unserialisable_argument_is_a_caller_error_and_no_child_dies() -> None:
    out = run("unserialisable")
    assert out["raised"] and "cannot pickle" in out["raised"]
    bad = out["bad_result"]["error"]
    assert bad["type"] == "SerializationError" and "the result" in bad["message"]
    assert out["same_child"] and out["restarts"] == {}


def test_values_larger_than_an_amp_message_round_trip() -> None:
    out = run("large")
    assert out["errors"] == [None, None, None]
    assert out["echo_equal"] and out["both_equal"] and out["big_equal"]
    assert out["big_len"] == 3 * 1024 * 1024 + 7


def test_max_requests_recycles_children() -> None:
    out = run("recycle")
    pids = out["pids"]
    assert len(set(pids)) == 3
    assert pids[0:3] == [pids[0]] * 3 and pids[3:6] == [pids[3]] * 3
    assert set(pids) <= set(out["children_seen"])  # and so gone by now (checked by run())
    assert out["restarts"]["max-requests"] >= 2


def test_stop_finishes_tasks_in_hand_fails_queued_and_leaves_no_child() -> None:
    out = run("stop")
    assert [r["value"] for r in out["running"]] == [0.5, 0.5]
    assert all(r["error"] is None for r in out["running"])
    assert [e["type"] for e in out["queued"]] == ["DispatcherStopped"] * 5
    assert len(out["children_seen"]) == 2
    assert out["state_after_stop"]["children"] == []


def test_stop_kills_a_task_past_stop_timeout() -> None:
    out = run("stop_timeout")
    hung = out["hung"]["error"]
    assert hung["type"] == "ChildDied" and "stop_timeout (0.3s)" in hung["message"]
    assert 0.3 <= out["stop_took"] < 5


def test_max_forks_zero_runs_in_process() -> None:
    out = run("inline")
    assert out["pid"] == out["me"] and out["children"] == []
    assert out["boom"]["type"] == "ValueError"


def test_hooks_title_and_lookup_in_children() -> None:
    out = run("hooks")
    assert out["added"] == 5
    assert out["inits"] == [out["pid"]]  # fork_init ran in the child, once
    assert out["calls"][:2] == ["pre add (2, 3)", "post add (2, 3)"]
    assert out["parent_calls"] == [["pre", 0], ["post", 0, out["pid"]]]
    assert out["unknown"]["type"] == "UnknownMethod"
    assert "searched tests.dispatch.tasks" in out["unknown"]["message"]
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        return
    assert out["title"] == "catalyzer-test-jobs child"


def test_children_that_cannot_boot_halt_the_dispatcher() -> None:
    out = run("halt")
    assert out["result"]["type"] == "DispatcherHalted"
    assert "fork_init refuses" in out["result"]["message"]
    assert out["reasons"] and "failed to boot" in out["reasons"][0]


def test_children_are_started_on_demand() -> None:
    out = run("growth")
    assert out["before"] == 0 and out["pids"] == 2


def wait_gone(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` (not our child) has exited: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], deadline)
        return bool(readable) or not pid_alive(pid)
    finally:
        os.close(fd)


def test_children_die_with_a_parent_killed_9() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.dispatch.driver", "orphan"],
        cwd=REPO,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the driver's watchdog ends it after 30 s
        children = json.loads(line)["children"]
        assert len(children) == 2 and all(pid_alive(pid) for pid in children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        for pid in children:
            assert wait_gone(pid, 10.0), f"child {pid} outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)
