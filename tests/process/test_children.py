"""What the prefork master and the dispatcher share about a child: its output held while it
boots, signals through its transport, and halting the parent."""

from __future__ import annotations

import io
import signal

from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger

from catalyzer.process.children import SupervisedChild, halt
from catalyzer.process.supervision import READY, WorkerRecord
from catalyzer.testing import FakeProcessReactor


def child() -> tuple[SupervisedChild, list[str]]:
    record = WorkerRecord(1, 0, 1, 0.0)
    logged: list[str] = []
    process = SupervisedChild(Logger(), lambda: "child 0", record)
    process.log_line = logged.append  # type: ignore[method-assign]
    return process, logged


def test_output_is_held_while_starting_then_released_in_order() -> None:
    process, logged = child()
    process.childDataReceived(2, b"one\ntw")
    process.childDataReceived(2, b"o\n")
    assert logged == [] and process.held_text() == "one\ntwo"
    process.record.state = READY
    process.childDataReceived(2, b"three\n")
    assert logged == ["three"]  # as it comes, once ready
    process.release()
    assert logged == ["three", "one", "two"]
    assert process.held_text() == ""


def test_held_output_keeps_the_last_lines() -> None:
    process, _ = child()
    process.childDataReceived(2, b"".join(b"%d\n" % i for i in range(1000)))
    lines = process.held_text().splitlines()
    assert len(lines) == 200 and lines[-1] == "999"


def test_signal_goes_through_the_transport_and_not_after_the_exit() -> None:
    reactor = FakeProcessReactor()
    process, _ = child()
    fake = reactor.spawnProcess(process, "python", ["python"])
    process.signal(signal.SIGTERM)
    fake.exit(0)
    process.signal(signal.SIGKILL)  # reaped: nothing sent, nothing raised
    assert fake.signals == [signal.SIGTERM]


def test_halt_with_a_status_says_why_and_exits_with_it() -> None:
    reactor = MemoryReactor()
    reactor.running = True
    exits: list[int] = []
    out = io.StringIO()
    halt(reactor, 3, "prog: cannot boot", at_exit=exits.append, stream=out)
    assert out.getvalue() == "prog: cannot boot\n"
    assert exits == [3]
    assert reactor.hasStopped


def test_halt_0_is_quiet_and_waits_for_the_reactor_to_run() -> None:
    reactor = MemoryReactor()
    exits: list[int] = []
    out = io.StringIO()
    halt(reactor, 0, "done", at_exit=exits.append, stream=out)
    assert out.getvalue() == "" and exits == []
    assert not reactor.hasStopped
    assert reactor.whenRunningHooks == [(reactor.stop, (), {})]
