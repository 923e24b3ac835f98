"""Scenarios for a real PreforkDispatcher with real children: ``python -m tests.dispatch.driver
NAME`` runs one with the global reactor (which cannot be restarted, hence a process per scenario)
and prints one line of JSON, ``{"ok": ..., ...}``, for tests/integration/test_dispatch.py.

Every scenario stops its dispatcher and reports the pids of every child it saw and which of them
are still alive afterwards. The whole run is bounded by a watchdog.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from catalyzer.dispatch import PreforkDispatcher
from catalyzer.dispatch.tasks import SerializationError, TaskResult
from tests.dispatch import tasks as t

WATCHDOG = 30.0
SCENARIOS: dict[str, Callable[[], Generator[Any, Any, dict[str, Any]]]] = {}


def scenario(func: Callable[[], Generator[Any, Any, dict[str, Any]]]) -> Any:
    SCENARIOS[func.__name__] = func
    return func


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def child_pids(d: PreforkDispatcher) -> list[int]:
    return [c["pid"] for c in d.state()["children"] if c["pid"] is not None]


def err(r: TaskResult) -> dict[str, Any] | None:
    if r.error is None:
        return None
    return {"type": r.error.type, "message": r.error.message, "traceback": r.error.traceback}


def summary(r: TaskResult) -> dict[str, Any]:
    return {"value": r.value, "error": err(r), "elapsed": r.elapsed, "pid": r.pid}


def make(**kw: Any) -> PreforkDispatcher:
    kw.setdefault("talkback", lambda line: print(line, file=sys.stderr))
    kw.setdefault("verbose", 1)
    d = PreforkDispatcher(reactor=reactor, **kw)
    d.startService()
    return d


def busy(d: PreforkDispatcher) -> int:
    return sum(1 for c in d.state()["children"] if c["state"] == "busy")


def wait_until(ready: Callable[[], bool], deadline: float = 10.0) -> Generator[Any, Any, None]:
    """Poll ``ready`` every 10 ms until it holds; fail the scenario after ``deadline`` seconds."""
    give_up = reactor.seconds() + deadline
    while not ready():
        if reactor.seconds() > give_up:
            raise AssertionError(f"not ready within {deadline} s")
        yield deferLater(reactor, 0.01, lambda: None)


def finish(
    d: PreforkDispatcher, seen: set[int], out: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    seen.update(child_pids(d))
    yield d.stopService()
    out["children_seen"] = sorted(seen)
    out["left_alive"] = [pid for pid in sorted(seen) if alive(pid)]
    out["state_after_stop"] = d.state()
    return out


@scenario
def crash() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=2, pre_fork=2)
    seen: set[int] = set()
    doomed = d.dispatch(t.crash)
    others = [d.dispatch(t.spin, 2) for _ in range(20)]
    results = yield defer.gatherResults([doomed, *others])
    crashed = results[0]
    seen.update(r.pid for r in results if r.pid)
    out = {
        "crash": summary(crashed),
        "others_ok": sum(1 for r in results[1:] if r.ok),
        "crashed_alive": alive(crashed.pid),
        "restarts": d.state()["restarts"],
    }
    return (yield from finish(d, seen, out))


@scenario
def timeout() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=2, pre_fork=2)
    seen: set[int] = set()
    yield defer.gatherResults([d.dispatch(t.pid) for _ in range(4)])
    slow = d.dispatch(t.sleep, 30, timeout=0.5)
    quick = [d.dispatch(t.spin, 5) for _ in range(10)]
    slow_result = yield slow
    after = yield defer.gatherResults([d.dispatch(t.pid) for _ in range(10)])
    quick_results = yield defer.gatherResults(quick)
    seen.update(r.pid for r in [slow_result, *after, *quick_results] if r.pid)
    out = {
        "slow": summary(slow_result),
        "quick_ok": sum(1 for r in quick_results if r.ok),
        "after_pids": sorted({r.value for r in after}),
    }
    return (yield from finish(d, seen, out))


@scenario
def unserialisable() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=1, pre_fork=1)
    seen: set[int] = set()
    first = yield d.dispatch(t.pid)
    try:
        d.dispatch(t.echo, lambda: None)
        raised = None
    except SerializationError as e:
        raised = str(e)
    bad_result = yield d.dispatch(t.unpicklable)
    then = yield d.dispatch(t.pid)
    seen.update([first.value, then.value])
    out = {
        "raised": raised,
        "bad_result": summary(bad_result),
        "same_child": first.value == then.value,
        "restarts": d.state()["restarts"],
    }
    return (yield from finish(d, seen, out))


@scenario
def large() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=2, pre_fork=2)
    seen: set[int] = set()
    payload = os.urandom(1_000_003)
    echoed = yield d.dispatch(t.echo, payload)
    made = yield d.dispatch(t.big, 3 * 1024 * 1024 + 7)
    both = yield d.dispatch(t.echo, [payload, payload[::-1]])
    seen.update(r.pid for r in (echoed, made, both) if r.pid)
    out = {
        "echo_equal": echoed.value == payload,
        "big_len": len(made.value),
        "big_equal": made.value == t.big(3 * 1024 * 1024 + 7),
        "both_equal": both.value == [payload, payload[::-1]],
        "errors": [err(r) for r in (echoed, made, both)],
    }
    return (yield from finish(d, seen, out))


@scenario
def recycle() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=1, pre_fork=1, max_requests=3)
    seen: set[int] = set()
    pids = []
    for _ in range(9):
        r = yield d.dispatch(t.pid)
        pids.append(r.value)
    seen.update(pids)
    out = {"pids": pids, "restarts": d.state()["restarts"]}
    # The recycled children exit once told to: gone after the stop (finish() checks them all).
    return (yield from finish(d, seen, out))


@scenario
def stop() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=2, pre_fork=2)
    seen: set[int] = set()
    yield defer.gatherResults([d.dispatch(t.pid) for _ in range(4)])
    running = [d.dispatch(t.sleep, 0.5), d.dispatch(t.sleep, 0.5)]
    queued = [d.dispatch(t.noop) for _ in range(5)]
    yield from wait_until(lambda: busy(d) == 2)  # both sleeps in a child's hands
    seen.update(child_pids(d))
    stopped = d.stopService()
    running_results = yield defer.gatherResults(running)
    queued_results = yield defer.gatherResults(queued)
    yield stopped
    out = {
        "running": [summary(r) for r in running_results],
        "queued": [err(r) for r in queued_results],
        "children_seen": sorted(seen),
        "left_alive": [pid for pid in sorted(seen) if alive(pid)],
        "state_after_stop": d.state(),
    }
    return out


@scenario
def stop_timeout() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=1, pre_fork=1, stop_timeout=0.3)
    seen: set[int] = set()
    first = yield d.dispatch(t.pid)
    seen.add(first.value)
    hung = d.dispatch(t.sleep, 60)
    yield from wait_until(lambda: busy(d) == 1)
    start = reactor.seconds()
    yield d.stopService()
    took = reactor.seconds() - start
    hung_result = yield hung
    out = {
        "hung": summary(hung_result),
        "stop_took": took,
        "children_seen": sorted(seen),
        "left_alive": [pid for pid in sorted(seen) if alive(pid)],
    }
    return out


@scenario
def inline() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=0, classes=["tests.dispatch.tasks"])
    r = yield d.dispatch("pid")
    boom = yield d.dispatch("boom", "in process")
    out = {"pid": r.value, "me": os.getpid(), "boom": err(boom), "children": child_pids(d)}
    return (yield from finish(d, set(), out))


@scenario
def hooks() -> Generator[Any, Any, dict[str, Any]]:
    parent_calls: list[Any] = []
    d = make(
        max_forks=1,
        pre_fork=1,
        fork_name="catalyzer-test-jobs",
        fork_init=t.fork_init,
        precall=t.precall,
        postcall="tests.dispatch.tasks:postcall",
        fork_preinit=lambda slot: parent_calls.append(["pre", slot]),
        fork_postinit=lambda slot, pid: parent_calls.append(["post", slot, pid]),
        classes=["tests.dispatch.tasks"],
    )
    seen: set[int] = set()
    added = yield d.dispatch("add", 2, 3)
    calls = yield d.dispatch(t.calls)
    inits = yield d.dispatch(t.init_marker)
    unknown = yield d.dispatch("nothing_here")
    title = ""
    try:
        with open(f"/proc/{added.pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        pass
    seen.add(added.pid)
    out = {
        "added": added.value,
        "pid": added.pid,
        "calls": calls.value,
        "inits": inits.value,
        "unknown": err(unknown),
        "parent_calls": parent_calls,
        "title": title,
    }
    return (yield from finish(d, seen, out))


@scenario
def halt() -> Generator[Any, Any, dict[str, Any]]:
    reasons: list[str] = []
    d = make(max_forks=2, pre_fork=1, fork_init=t.fork_init_fails, on_halt=reasons.append)
    r = yield d.dispatch(t.noop)
    out = {"result": err(r), "reasons": reasons, "halted": d.state()["halted"]}
    return (yield from finish(d, set(), out))


@scenario
def growth() -> Generator[Any, Any, dict[str, Any]]:
    d = make(max_forks=2, pre_fork=0, spawn_delay=0.3)
    seen: set[int] = set()
    before = len(d.state()["children"])
    results = yield defer.gatherResults([d.dispatch(t.sleep, 0.6) for _ in range(4)])
    seen.update(r.pid for r in results)
    out = {"before": before, "pids": len({r.pid for r in results})}
    return (yield from finish(d, seen, out))


@scenario
def orphan() -> Generator[Any, Any, dict[str, Any]]:
    """Print the children's pids, then wait to be killed (the test kills this process -9)."""
    d = make(max_forks=2, pre_fork=2)
    results = yield defer.gatherResults([d.dispatch(t.sleep, 0.2) for _ in range(2)])
    print(json.dumps({"children": sorted({r.pid for r in results})}), flush=True)
    yield defer.Deferred()  # until the watchdog, if nobody kills us first
    return {}


def main() -> None:
    name = sys.argv[1]
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome.update(result)
        outcome["ok"] = True

    def failed(failure: Any) -> None:
        outcome["ok"] = False
        outcome["error"] = failure.getTraceback()

    def run() -> None:
        d = defer.inlineCallbacks(SCENARIOS[name])()
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())

    def watchdog() -> None:
        outcome["ok"] = False
        outcome["error"] = f"scenario {name} still running after {WATCHDOG:g}s"
        reactor.stop()

    reactor.callWhenRunning(run)
    reactor.callLater(WATCHDOG, watchdog)
    try:
        reactor.run()
    except Exception:
        outcome = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(outcome, default=repr))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
