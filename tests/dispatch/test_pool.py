"""PreforkDispatcher with a fake process reactor: no processes, no sockets, a Clock for time.

``spawnProcess`` hands back a fake process transport that records signals, and the control
channel is a StringTransport (:class:`catalyzer.testing.FakeProcessReactor`). A test plays each child's part by feeding the dispatcher the boxes a
child would write (``Ready``, answers, ``ResultChunk``) and by ending its "process".
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from catalyzer.dispatch import PreforkDispatcher, TaskRequest, tasks
from catalyzer.dispatch import pool as dispatch
from catalyzer.dispatch.tasks import SerializationError, TaskResult
from catalyzer.dispatch.wire import ENV_KEY, BoxParser, encode_box
from catalyzer.ops import introspection
from catalyzer.testing import FakeProcess, FakeProcessReactor
from tests.dispatch import tasks as sample


class FakeChild:
    """One child as the test drives it."""

    def __init__(self, process: FakeProcess, control: Any) -> None:
        assert process.pid is not None
        self.process = process
        self.control = control
        self.pid = process.pid
        self.parser = BoxParser()
        self.inbox: list[dict[bytes, bytes]] = []

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(self.process.env[ENV_KEY])
        return spec

    def send(self, *items: tuple[bytes, bytes]) -> None:
        self.control.dataReceived(encode_box(items))

    def ready(self) -> None:
        self.send((b"_command", b"Ready"), (b"pid", str(self.pid).encode()))

    def received(self) -> list[dict[bytes, bytes]]:
        """Boxes the dispatcher wrote to this child since the last call."""
        transport = self.control.transport
        if transport is not None:
            self.inbox += self.parser.feed(transport.value())
            transport.clear()
        out, self.inbox = self.inbox, []
        return out

    def runs(self) -> list[tuple[str, tuple[Any, ...], bytes]]:
        """``(target, args, ask)`` of each Run received (chunks joined)."""
        out = []
        chunks: list[bytes] = []
        for box in self.received():
            if box[b"_command"] == b"Chunk":
                chunks.append(box[b"data"])
            elif box[b"_command"] == b"Run":
                data = b"".join([*chunks, box[b"data"]])
                chunks = []
                out.append((box[b"target"].decode(), pickle.loads(data), box[b"_ask"]))
        return out

    def answer(self, ask: bytes, value: Any = None, *, chunked: bool = False) -> None:
        data = pickle.dumps(value, protocol=5)
        pieces = tasks.split(data) if chunked else [data]
        for piece in pieces[:-1]:
            self.send((b"_command", b"ResultChunk"), (b"data", piece))
        self.send((b"_answer", ask), (b"ok", b"True"), (b"data", pieces[-1]))

    def fail(self, ask: bytes, kind: str, message: str) -> None:
        error = tasks.TaskError(kind, message, "Traceback (most recent call last): ...")
        self.send((b"_answer", ask), (b"ok", b"False"), (b"data", error.to_json()))

    def run_one(self, value: Any = None) -> tuple[str, tuple[Any, ...]]:
        """Answer the one task this child was sent."""
        (run,) = self.runs()
        self.answer(run[2], value)
        return run[0], run[1]

    def exit(self, status: int | None = 0, signum: int | None = None) -> None:
        self.process.exit(status, signum)


class FakeReactor(FakeProcessReactor):
    """Each child spawned, as the test drives it, in ``children``."""

    def __init__(self) -> None:
        super().__init__()
        self.children: list[FakeChild] = []

    def adoptStreamConnection(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> None:
        super().adoptStreamConnection(fileDescriptor, addressFamily, factory)
        process = self.processes[-1]
        self.children.append(FakeChild(process, process.control))


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


@pytest.fixture(autouse=True)
def _no_registry_leaks() -> Iterator[None]:
    yield
    for d in dispatch.running():
        introspection.registry.remove("dispatchers", d)


def make(reactor: FakeReactor, **kw: Any) -> PreforkDispatcher:
    kw.setdefault("max_forks", 2)
    kw.setdefault("pre_fork", 2)
    kw.setdefault("talkback", lambda line: None)
    d = PreforkDispatcher(reactor=reactor, **kw)
    d.startService()
    return d


def results(deferreds: list[Any]) -> list[TaskResult]:
    out: list[TaskResult] = []
    for d in deferreds:
        d.addCallback(out.append)
    assert len(out) == len(deferreds), "not every task has a result yet"
    return out


def result(d: Any) -> TaskResult:
    (r,) = results([d])
    return r


# -- start and run


def test_start_spawns_pre_fork_children_with_their_settings(reactor: FakeReactor) -> None:
    make(
        reactor,
        max_forks=4,
        pre_fork=2,
        fork_name="jobs",
        fork_init=sample.fork_init,
        precall="tests.dispatch.tasks:precall",
        postcall=sample.postcall,
        classes=["tests.dispatch.tasks"],
    )
    assert len(reactor.children) == 2
    child = reactor.children[0]
    assert child.process.args[1:] == ["-m", "catalyzer.dispatch.child"]
    assert child.process.fds[0] not in ("r", "w") and child.process.fds[1] == 1
    assert child.process.fds[2] == "r" and 3 in child.process.fds
    spec = child.spec
    assert spec["control_fd"] == 3 and spec["parent"] == os.getpid()
    assert spec["name"] == "jobs"
    assert spec["fork_init"] == "tests.dispatch.tasks:fork_init"
    assert spec["precall"] == "tests.dispatch.tasks:precall"
    assert spec["postcall"] == "tests.dispatch.tasks:postcall"
    assert spec["classes"] == ["tests.dispatch.tasks"]


def test_task_waits_for_ready_then_resolves_with_value_elapsed_and_pid(
    reactor: FakeReactor,
) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    (child,) = reactor.children
    task = d.dispatch(sample.add, 1, 2)
    assert child.received() == []  # not ready yet: queued
    assert d.state()["queued"] == 1
    reactor.advance(0.25)  # waiting in the queue does not count in elapsed
    child.ready()
    assert child.runs() == [("tests.dispatch.tasks:add", (1, 2), b"1")]
    assert not task.called
    reactor.advance(0.5)
    child.answer(b"1", 3)
    r = result(task)
    assert r == TaskResult(3, None, 0.5, child.pid)
    assert r.ok


def test_lookup_order_explicit_callable_then_methods_then_classes(reactor: FakeReactor) -> None:
    d = make(
        reactor,
        pre_fork=1,
        max_forks=1,
        methods={"plus": sample.add, "same": "tests.dispatch.tasks:echo"},
        classes=["tests.dispatch.tasks"],
    )
    (child,) = reactor.children
    child.ready()
    targets = []
    for method in (sample.pid, "plus", "same", "noop", "tests.dispatch.tasks:big"):
        task = d.dispatch(method)
        ((target, _, ask),) = child.runs()
        targets.append(target)
        child.answer(ask)
        assert result(task).ok
    assert targets == [
        "tests.dispatch.tasks:pid",  # an explicit function, by its import path
        "tests.dispatch.tasks:add",  # a name in methods, mapped there to a path
        "tests.dispatch.tasks:echo",
        "noop",  # otherwise, the name: the child searches the classes modules for it
        "tests.dispatch.tasks:big",  # an explicit path
    ]


def test_unknown_name_is_an_error_result_without_a_child(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1, methods={"plus": sample.add})
    (child,) = reactor.children
    child.ready()
    r = result(d.dispatch("minus", 1))
    assert r.error is not None and r.error.type == tasks.UNKNOWN_METHOD
    assert r.error.message == "no method 'minus' (searched methods)"
    assert r.elapsed == 0 and r.pid is None
    assert child.received() == []


def test_unknown_name_found_by_the_child_is_its_error(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1, classes=["tests.dispatch.tasks"])
    (child,) = reactor.children
    child.ready()
    task = d.dispatch("nothing_here")
    ((_, _, ask),) = child.runs()
    child.fail(ask, tasks.UNKNOWN_METHOD, "no method 'nothing_here'")
    r = result(task)
    assert r.error is not None and r.error.type == tasks.UNKNOWN_METHOD


def test_task_exception_comes_back_as_an_error_value(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    (child,) = reactor.children
    child.ready()
    task = d.dispatch(sample.boom, "bad")
    ((_, _, ask),) = child.runs()
    reactor.advance(0.1)
    child.fail(ask, "ValueError", "bad")
    r = result(task)
    assert r.value is None and r.error is not None
    assert (r.error.type, r.error.message) == ("ValueError", "bad")
    assert r.error.traceback.startswith("Traceback") and r.elapsed == 0.1
    assert d.state()["failed"] == 1


def test_upon_result_default_and_per_request(reactor: FakeReactor) -> None:
    seen: list[tuple[str, TaskRequest, TaskResult]] = []
    d = make(
        reactor,
        pre_fork=1,
        max_forks=1,
        upon_result=lambda req, res: seen.append(("default", req, res)),
    )
    (child,) = reactor.children
    child.ready()
    d.dispatch(sample.add, 1, 2)
    child.run_one(3)
    d.dispatch(sample.add, 5, 5, upon_result=lambda req, res: seen.append(("own", req, res)))
    child.run_one(10)
    assert [(w, req.name, req.args, res.value) for w, req, res in seen] == [
        ("default", "tests.dispatch.tasks:add", (1, 2), 3),
        ("own", "tests.dispatch.tasks:add", (5, 5), 10),
    ]


def test_failing_upon_result_does_not_lose_the_result(reactor: FakeReactor) -> None:
    def broken(req: TaskRequest, res: TaskResult) -> None:
        raise RuntimeError("callback bug")

    d = make(reactor, pre_fork=1, max_forks=1, upon_result=broken)
    (child,) = reactor.children
    child.ready()
    task = d.dispatch(sample.echo, 1)
    child.run_one(1)
    assert result(task).value == 1


def test_unserialisable_argument_is_the_callers_error(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    (child,) = reactor.children
    child.ready()
    with pytest.raises(SerializationError, match="cannot pickle"):
        d.dispatch(sample.echo, lambda: None)
    assert child.received() == [] and d.state()["queued"] == 0
    task = d.dispatch(sample.echo, 2)  # the child is as good as before
    child.run_one(2)
    assert result(task).value == 2


def test_function_a_child_cannot_import_is_refused(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    with pytest.raises(ValueError, match="top level"):
        d.dispatch(lambda: None)


def test_large_values_travel_in_chunks(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    (child,) = reactor.children
    child.ready()
    big = bytes(range(256)) * 1024  # 256 KiB: five AMP values
    task = d.dispatch(sample.echo, big)
    boxes = child.received()
    assert [b[b"_command"] for b in boxes] == [b"Chunk"] * 4 + [b"Run"]
    assert all(len(b[b"data"]) <= tasks.CHUNK for b in boxes)
    child.inbox = boxes
    ((_, args, ask),) = child.runs()
    assert args == (big,)
    child.answer(ask, big * 2, chunked=True)
    assert result(task).value == big * 2


def test_result_that_does_not_unpickle_is_an_error(reactor: FakeReactor) -> None:
    d = make(reactor, pre_fork=1, max_forks=1)
    (child,) = reactor.children
    child.ready()
    task = d.dispatch(sample.noop)
    ((_, _, ask),) = child.runs()
    child.send((b"_answer", ask), (b"ok", b"True"), (b"data", b"garbage"))
    r = result(task)
    assert r.error is not None and r.error.type == tasks.SERIALIZATION


# -- the pool


def test_grows_on_demand_one_child_per_spawn_delay(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=3, pre_fork=1, spawn_delay=2.0)
    (first,) = reactor.children
    first.ready()
    t1 = d.dispatch(sample.noop)
    assert len(reactor.children) == 1  # the idle child takes it
    d.dispatch(sample.noop)
    assert len(reactor.children) == 2  # all busy, one waits: one more child at once
    d.dispatch(sample.noop)
    d.dispatch(sample.noop)
    assert len(reactor.children) == 2  # a third only after spawn_delay...
    reactor.advance(1.99)
    assert len(reactor.children) == 2
    reactor.advance(0.01)
    assert len(reactor.children) == 3  # ...and never more than max_forks
    first.run_one()
    assert result(t1).ok
    reactor.advance(10)
    assert len(reactor.children) == 3
    assert [c["state"] for c in d.state()["children"]] == ["busy", "starting", "starting"]


def test_no_growth_while_starting_children_can_take_the_queue(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=4, pre_fork=2, spawn_delay=0.0)
    d.dispatch(sample.noop)
    d.dispatch(sample.noop)
    assert len(reactor.children) == 2  # two tasks, two children on their way
    d.dispatch(sample.noop)
    assert len(reactor.children) == 3


def test_max_requests_replaces_the_child_replacement_first(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=1, pre_fork=1, max_requests=2)
    (old,) = reactor.children
    old.ready()
    for _ in range(2):
        d.dispatch(sample.pid)
        old.run_one(old.pid)
    assert len(reactor.children) == 2  # the replacement is starting
    new = reactor.children[1]
    waiting = d.dispatch(sample.pid)
    assert old.received() == []  # the old child takes no more tasks
    assert [c["state"] for c in d.state()["children"]] == ["retiring", "starting"]
    new.ready()
    assert [b[b"_command"] for b in old.received()] == [b"Stop"]  # only now is it stopped
    new.run_one(new.pid)
    assert result(waiting).pid == new.pid
    old.exit(0)
    assert len(reactor.children) == 2  # not replaced twice
    assert d.supervisor.restarts == {"max-requests": 1}


def test_timeout_kills_the_child_which_is_never_reused(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=2, pre_fork=2, timeout=5.0)
    a, b = reactor.children
    a.ready()
    b.ready()
    slow = d.dispatch(sample.sleep, 60)
    fast = d.dispatch(sample.sleep, 1, timeout=30)
    queued = d.dispatch(sample.pid)
    reactor.advance(4.99)
    assert a.process.signals == [] and not slow.called
    reactor.advance(0.01)
    assert a.process.signals == [signal.SIGKILL]
    r = result(slow)
    assert r.error is not None and r.error.type == tasks.TIMEOUT
    assert r.elapsed == pytest.approx(5.0) and r.pid == a.pid
    assert "5s" in r.error.message
    assert a.received()[-1][b"_command"] == b"Run"  # nothing new went to the killed child
    assert not queued.called
    b.runs()
    b.answer(b"1", 1)
    assert result(fast).ok
    ((_, _, ask),) = b.runs()  # the queued task went to the other child
    b.answer(ask, b.pid)
    assert result(queued).pid == b.pid
    a.answer(b"1", 60)  # a late answer from the killed child changes nothing
    a.exit(signum=signal.SIGKILL)
    assert len(reactor.children) == 3  # replaced at once
    assert d.supervisor.restarts == {"timeout": 1}


def test_crash_fails_its_task_with_elapsed_and_the_others_go_on(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=2, pre_fork=2)
    a, b = reactor.children
    a.ready()
    b.ready()
    doomed = d.dispatch(sample.crash)
    other = d.dispatch(sample.pid)
    queued = d.dispatch(sample.pid)
    reactor.advance(0.3)
    a.exit(signum=signal.SIGKILL)
    r = result(doomed)
    assert r.error is not None and r.error.type == tasks.CHILD_DIED
    assert r.elapsed == pytest.approx(0.3) and r.pid == a.pid
    assert "SIGKILL" in r.error.message
    ((_, _, ask),) = b.runs()
    b.answer(ask, b.pid)
    assert result(other).pid == b.pid
    ((_, _, ask),) = b.runs()
    b.answer(ask, b.pid)
    assert result(queued).ok
    replacement = reactor.children[2]
    assert replacement.spec["slot"] == a.spec["slot"]
    assert d.supervisor.restarts == {"crashed": 1}


def test_crash_while_queued_tasks_wait_hands_them_to_the_replacement(
    reactor: FakeReactor,
) -> None:
    d = make(reactor, max_forks=1, pre_fork=1)
    (a,) = reactor.children
    a.ready()
    doomed = d.dispatch(sample.crash)
    after = d.dispatch(sample.pid)
    a.exit(status=1)
    assert result(doomed).error is not None
    replacement = reactor.children[1]
    replacement.ready()
    replacement.run_one(replacement.pid)
    assert result(after).pid == replacement.pid


def test_garbage_from_a_child_gets_it_killed(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=1, pre_fork=1)
    (a,) = reactor.children
    a.ready()
    task = d.dispatch(sample.noop)
    a.send((b"_error", b"1"), (b"_error_code", b"UNKNOWN"))
    assert a.process.signals == [signal.SIGKILL]
    a.exit(signum=signal.SIGKILL)
    assert result(task).error is not None


def test_boot_failure_halts_and_fails_every_task(reactor: FakeReactor) -> None:
    reasons: list[str] = []
    d = make(reactor, max_forks=2, pre_fork=2, on_halt=reasons.append)
    a, b = reactor.children
    queued = d.dispatch(sample.noop)
    a.control.transport.clear()
    a.process.proto.childDataReceived(2, b"Traceback: RuntimeError: fork_init refuses\n")
    a.exit(status=3)
    r = result(queued)
    assert r.error is not None and r.error.type == tasks.HALTED
    assert "fork_init refuses" in r.error.message
    assert reasons and "failed to boot" in reasons[0]
    assert b.process.signals == [signal.SIGKILL]
    b.exit(signum=signal.SIGKILL)
    assert len(reactor.children) == 2  # no restart loop
    later = result(d.dispatch(sample.noop))
    assert later.error is not None and later.error.type == tasks.HALTED
    assert "HALTED" in d.describe()


def test_fork_hooks_run_around_each_spawn(reactor: FakeReactor) -> None:
    calls: list[tuple[Any, ...]] = []
    make(
        reactor,
        max_forks=2,
        pre_fork=2,
        fork_preinit=lambda slot: calls.append(("pre", slot, len(reactor.children))),
        fork_postinit=lambda slot, pid: calls.append(("post", slot, pid)),
    )
    a, b = reactor.children
    assert calls == [("pre", 0, 0), ("post", 0, a.pid), ("pre", 1, 1), ("post", 1, b.pid)]


# -- stop


def test_stop_fails_the_queue_finishes_tasks_in_hand_and_waits_for_every_child(
    reactor: FakeReactor,
) -> None:
    d = make(reactor, max_forks=2, pre_fork=2, stop_timeout=3.0)
    a, b = reactor.children
    a.ready()
    b.ready()
    running = d.dispatch(sample.sleep, 1)
    other = d.dispatch(sample.sleep, 2)
    queued = [d.dispatch(sample.noop), d.dispatch(sample.noop)]
    ((_, _, ask_a),) = a.runs()
    ((_, _, ask_b),) = b.runs()
    assert d in dispatch.running()
    stopped = d.stopService()
    for r in results(queued):
        assert r.error is not None and r.error.type == tasks.STOPPED
        assert r.error.message == "the dispatcher stopped before this task started"
    # Told in band, after their tasks.
    assert [x[b"_command"] for x in a.received()] == [b"Stop"]
    assert [x[b"_command"] for x in b.received()] == [b"Stop"]
    late = result(d.dispatch(sample.noop))
    assert late.error is not None and late.error.type == tasks.STOPPED
    a.answer(ask_a, 1)
    assert result(running).value == 1
    a.exit(0)
    assert d.describe().endswith(
        f"stopping\n  child 1 pid {b.pid} stopping up 0s, 0 tasks, running "
        "tests.dispatch.tasks:sleep for 0.0s"
    )
    b.answer(ask_b, 2)
    assert result(other).value == 2
    assert not stopped.called
    b.exit(0)
    assert stopped.called
    assert dispatch.running() == []
    assert a.process.signals == [] and b.process.signals == []


def test_stop_kills_a_child_still_busy_after_stop_timeout(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=1, pre_fork=1, stop_timeout=3.0)
    (a,) = reactor.children
    a.ready()
    running = d.dispatch(sample.sleep, 60)
    stopped = d.stopService()
    reactor.advance(3.0 - 0.01)
    assert a.process.signals == []
    reactor.advance(0.01)
    assert a.process.signals == [signal.SIGKILL]
    a.exit(signum=signal.SIGKILL)
    r = result(running)
    assert r.error is not None and r.error.type == tasks.CHILD_DIED
    assert "when stop_timeout (3s) ran out" in r.error.message
    assert stopped.called


def test_stop_with_no_children_is_immediate(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=2, pre_fork=0)
    assert d.stopService().called


def test_starting_child_is_stopped_once_it_can_read(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=1, pre_fork=1)
    (a,) = reactor.children
    stopped = d.stopService()
    assert [x[b"_command"] for x in a.received()] == [b"Stop"]
    a.ready()
    a.exit(0)
    assert stopped.called


# -- state


def test_state_and_describe(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=3, pre_fork=2, fork_name="jobs")
    a, _ = reactor.children
    a.ready()
    reactor.advance(2.0)
    d.dispatch(sample.sleep, 5)
    reactor.advance(1.5)
    state = d.state()
    assert state["queued"] == 0 and state["max_forks"] == 3 and state["name"] == "jobs"
    assert state["children"][0] == {
        "slot": 0,
        "pid": a.pid,
        "state": "busy",
        "age": 3.5,
        "tasks": 0,
        "task": "tests.dispatch.tasks:sleep",
        "task_elapsed": 1.5,
    }
    assert state["children"][1]["state"] == "starting"
    text = d.describe()
    assert text.startswith(f"dispatcher 'jobs' in pid {os.getpid()}: 2/3 children, 0 queued")
    assert (
        f"child 0 pid {a.pid} busy up 4s, 0 tasks, running tests.dispatch.tasks:sleep for 1.5s"
        in text
    )
    assert dispatch.describe_all() == text


# -- in-process


def test_max_forks_zero_runs_in_process_with_the_call_hooks(reactor: FakeReactor) -> None:
    seen: list[TaskResult] = []
    d = make(
        reactor,
        max_forks=0,
        classes=["tests.dispatch.tasks"],
        precall=sample.precall,
        postcall=sample.postcall,
        upon_result=lambda req, res: seen.append(res),
    )
    assert reactor.children == []
    before = len(sample.calls())
    r = result(d.dispatch("add", 2, 3))
    assert r.value == 5 and r.pid == os.getpid()
    assert sample.calls()[before:] == ["pre add (2, 3)", "post add (2, 3)"]
    r = result(d.dispatch(sample.boom, "inline"))
    assert r.error is not None and r.error.type == "ValueError" and "in boom" in r.error.traceback
    for name in ("_private", "nothing_here"):
        r = result(d.dispatch(name))
        assert r.error is not None and r.error.type == tasks.UNKNOWN_METHOD
    assert len(seen) == 4
    assert "in-process" in d.describe()
    assert d.stopService().called


# -- output


def test_verbose_and_talkback(reactor: FakeReactor) -> None:
    quiet: list[str] = []
    d = make(reactor, max_forks=1, pre_fork=1, talkback=quiet.append)
    (a,) = reactor.children
    a.ready()
    a.process.proto.childDataReceived(2, b"a line from the child\n")
    a.exit(signum=signal.SIGKILL)
    assert quiet == [
        f"[dispatch child 0 pid {a.pid}] a line from the child",
        f"error: child 0 (pid {a.pid}) died unexpectedly (signal 9)",
    ]
    loud: list[str] = []
    d = make(FakeReactor(), max_forks=1, pre_fork=1, talkback=loud.append, verbose=2)
    assert any("starting 1 of up to 1 children" in line for line in loud)
    assert any("child 0 started" in line for line in loud)
    d.dispatch(sample.noop)
    assert any("queued tests.dispatch.tasks:noop" in line for line in loud)


# -- catalyzer's state dump and manhole


def test_running_dispatchers_show_in_the_masters_dump_and_the_manhole(
    reactor: FakeReactor,
) -> None:
    from catalyzer.prefork.master import MasterService
    from catalyzer.server.root import with_dispatchers
    from catalyzer.settings import Config

    master = MasterService(Config.from_values({"app": "tests.dispatch.app:app"}), [], reactor)
    assert "dispatcher" not in master.dump_text()
    assert with_dispatchers("connections") == "connections"
    d = make(reactor, max_forks=1, pre_fork=1, fork_name="jobs")
    assert dispatch.running() == [d]
    assert master.dump_text().endswith(d.describe())
    assert with_dispatchers("connections") == f"connections\n{d.describe()}"
    stopped = d.stopService()
    reactor.children[0].exit(0)
    assert stopped.called and dispatch.running() == []
    assert "dispatcher" not in master.dump_text()


def test_public_names() -> None:
    assert sorted(dispatch.__all__) == [
        "PreforkDispatcher",
        "SerializationError",
        "TaskError",
        "TaskFailed",
        "TaskRequest",
        "TaskResult",
        "describe_all",
        "running",
    ]
    for name in dispatch.__all__:
        assert getattr(dispatch, name) is not None
    assert dispatch.TaskResult is tasks.TaskResult


def test_in_process_hook_that_does_not_import_is_an_error_result(reactor: FakeReactor) -> None:
    d = make(reactor, max_forks=0, precall="tests.dispatch.no_such_module:hook")
    r = result(d.dispatch(sample.add, 1, 2))
    assert r.error is not None and r.error.type == "ModuleNotFoundError"
