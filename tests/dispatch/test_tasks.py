"""The dispatcher's pure parts: results, serialisation, lookup and the AMP wire codec."""

from __future__ import annotations

import pickle
import sys
import types
from typing import Any

import pytest
from twisted.protocols import amp

from catalyzer.dispatch import pool as dispatch
from catalyzer.dispatch import tasks
from catalyzer.dispatch.tasks import (
    SerializationError,
    TaskError,
    TaskFailed,
    TaskResult,
    UnknownMethod,
    callable_path,
)
from catalyzer.dispatch.wire import BoxParser, encode_box
from tests.dispatch import tasks as sample

# -- results


def test_result_ok_and_unwrap() -> None:
    good = TaskResult(42, None, 0.5, 123)
    assert good.ok and good.unwrap() == 42
    bad = TaskResult(None, TaskError("ValueError", "nope", "Traceback..."), 0.25, 123)
    assert not bad.ok
    with pytest.raises(TaskFailed) as info:
        bad.unwrap()
    assert info.value.error is bad.error
    assert str(info.value) == "ValueError: nope"


def test_error_json_round_trip() -> None:
    error = TaskError("mymod.Oops", "it's \u00e9 broken", "Traceback (most recent call last):\n")
    assert TaskError.from_json(error.to_json()) == error


def test_error_from_exception_names_the_type_and_keeps_the_traceback() -> None:
    try:
        sample.boom("bad input")
    except ValueError as e:
        error = tasks.error_from_exception(e)
    assert error.type == "ValueError"
    assert error.message == "bad input"
    assert "in boom" in error.traceback and error.traceback.startswith("Traceback")

    class Custom(Exception):
        pass

    assert tasks.error_from_exception(Custom("x")).type.endswith("Custom")
    assert tasks.error_from_exception(Custom("x")).type.startswith(__name__)


# -- serialisation


def test_dumps_loads_round_trip_keeps_python_types() -> None:
    value = (1, "two", b"three", {4: [5.0, None]}, frozenset({6}))
    assert tasks.loads(tasks.dumps(value)) == value
    assert pickle.loads(tasks.dumps(value)) == value


def test_unpicklable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot pickle"):
        tasks.dumps((lambda: None,))
    assert issubclass(SerializationError, TypeError)


def test_garbage_does_not_unpickle() -> None:
    with pytest.raises(SerializationError, match="cannot unpickle"):
        tasks.loads(b"not a pickle")


@pytest.mark.parametrize("size", [0, 1, tasks.CHUNK - 1, tasks.CHUNK, tasks.CHUNK + 1, 200_001])
def test_split_pieces_fit_an_amp_value_and_join_back(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    pieces = tasks.split(data)
    assert pieces and all(len(p) <= tasks.CHUNK for p in pieces)
    assert b"".join(pieces) == data
    assert tasks.CHUNK <= 0xFFFF


# -- naming and finding tasks


def test_callable_path_of_a_module_function() -> None:
    assert callable_path(sample.add) == "tests.dispatch.tasks:add"


def test_callable_path_refuses_what_a_child_cannot_import() -> None:
    def local() -> None:
        pass

    with pytest.raises(ValueError, match="top level"):
        callable_path(local)
    with pytest.raises(ValueError, match="top level"):
        callable_path(lambda: None)


def test_callable_path_of_main_uses_its_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = None

    def task() -> None:
        pass

    task.__module__ = "__main__"
    task.__qualname__ = "task"
    main.task = task  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", main)
    with pytest.raises(ValueError, match="python -m"):
        callable_path(task)
    main.__spec__ = types.SimpleNamespace(name="mypkg.script")  # type: ignore[assignment]
    assert callable_path(task) == "mypkg.script:task"


def test_as_path_takes_paths_and_functions() -> None:
    assert tasks.as_path("a.b:c") == "a.b:c"
    assert tasks.as_path(sample.echo) == "tests.dispatch.tasks:echo"
    with pytest.raises(ValueError):
        tasks.as_path("no_colon")
    with pytest.raises(TypeError):
        tasks.as_path(3)  # type: ignore[arg-type]


def _importer(modules: dict[str, types.ModuleType]) -> Any:
    def load(name: str) -> types.ModuleType:
        if name not in modules:
            raise ImportError(f"no module named {name!r}")
        return modules[name]

    return load


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        if callable(value) and not isinstance(value, type):
            value.__module__ = name
        setattr(module, key, value)
    return module


def test_resolve_order_path_then_classes_in_order() -> None:
    def f1() -> str:
        return "first"

    def f2() -> str:
        return "second"

    def g() -> str:
        return "explicit"

    first, second, other = _module("first", f=f1), _module("second", f=f2), _module("other", g=g)
    importer = _importer({"first": first, "second": second, "other": other})
    assert tasks.resolve("other:g", ["first"], importer)() == "explicit"
    assert tasks.resolve("f", ["first", "second"], importer)() == "first"
    assert tasks.resolve("f", ["second", "first"], importer)() == "second"
    with pytest.raises(UnknownMethod, match="searched first, second"):
        tasks.resolve("missing", ["first", "second"], importer)
    with pytest.raises(UnknownMethod):
        tasks.resolve("nowhere:g", [], importer)
    with pytest.raises(UnknownMethod, match="no modules"):
        tasks.resolve("f", [], importer)


def test_classes_search_finds_only_public_functions_of_the_module() -> None:
    def mine() -> int:
        return 1

    def _hidden() -> int:
        return 2

    module = _module("svc", mine=mine, _hidden=_hidden)
    module.system = print  # an imported function: its __module__ is not "svc"
    module.value = 3
    importer = _importer({"svc": module})
    assert tasks.resolve("mine", ["svc"], importer)() == 1
    for name in ("_hidden", "system", "value", "__class__", "mine.__call__"):
        with pytest.raises(UnknownMethod):
            tasks.resolve(name, ["svc"], importer)


def test_classes_search_honours_all() -> None:
    def shown() -> int:
        return 1

    def unlisted() -> int:
        return 2

    module = _module("svc", shown=shown, unlisted=unlisted)
    module.__all__ = ["shown", "print"]
    module.print = print
    importer = _importer({"svc": module})
    assert tasks.resolve("shown", ["svc"], importer)() == 1
    assert tasks.resolve("print", ["svc"], importer) is print  # exported on purpose
    with pytest.raises(UnknownMethod):
        tasks.resolve("unlisted", ["svc"], importer)


def test_method_target_prefers_methods_then_classes() -> None:
    methods = {"add": "a.b:add"}
    assert tasks.method_target("add", methods, ["x"]) == "a.b:add"
    assert tasks.method_target("sub", methods, ["x"]) == "sub"  # searched for in the child
    assert tasks.method_target("sub", methods, []) is None  # nowhere to look
    assert tasks.method_target("_private", methods, ["x"]) is None
    assert tasks.method_target("a.b", methods, ["x"]) is None


# -- the wire


def test_encode_box_is_what_twisted_amp_writes() -> None:
    items = [(b"_ask", b"7"), (b"_command", b"Run"), (b"data", b"\x00\x01"), (b"target", b"m:f")]
    # Twisted writes the keys sorted; the format is the same.
    assert encode_box(items) == amp.AmpBox(items).serialize()
    assert BoxParser().feed(amp.AmpBox(reversed(items)).serialize()) == [dict(items)]


def test_encode_box_refuses_oversized_values() -> None:
    with pytest.raises(ValueError):
        encode_box([(b"data", b"x" * 0x10000)])


def _boxes() -> tuple[bytes, list[dict[bytes, bytes]]]:
    boxes = [
        {b"_command": b"Ready", b"pid": b"123"},
        {b"_answer": b"1", b"ok": b"True", b"data": b"x" * 70},
        {b"_command": b"Stop"},
        {b"_command": b"Chunk", b"data": b"y" * 60_000},
        {b"_command": b"Empty", b"data": b""},
    ]
    return b"".join(encode_box(b.items()) for b in boxes), boxes


def test_box_parser_whole_bytewise_and_followed_by_more() -> None:
    wire, boxes = _boxes()
    assert BoxParser().feed(wire) == boxes
    parser = BoxParser()
    got: list[dict[bytes, bytes]] = []
    for i in range(len(wire)):
        got += parser.feed(wire[i : i + 1])
    assert got == boxes
    parser = BoxParser()
    assert parser.feed(wire + wire[:5]) == boxes
    assert parser.feed(wire[5:]) == boxes


def test_twisted_amp_parses_what_the_child_writes() -> None:
    """The child's answer box, read by Twisted's AMP as the answer to a Run command."""
    received: list[amp.AmpBox] = []

    class Receiver(amp.BinaryBoxProtocol):
        def __init__(self) -> None:
            super().__init__(self)

        def ampBoxReceived(self, box: amp.AmpBox) -> None:
            received.append(box)

    receiver = Receiver()
    receiver.dataReceived(
        encode_box([(b"_answer", b"1"), (b"ok", b"False"), (b"data", b'["E", "m", ""]')])
    )
    (box,) = received
    answer = dispatch.Run.parseResponse(box, None)  # type: ignore[no-untyped-call]
    assert answer == {"ok": False, "data": b'["E", "m", ""]'}
    sent = dispatch.Run.makeArguments({"target": "m:f", "data": b"\x80"}, None)  # type: ignore[no-untyped-call]
    assert BoxParser().feed(sent.serialize()) == [{b"target": b"m:f", b"data": b"\x80"}]


# -- calling a task with its hooks (the child's loop and max_forks=0 share tasks.call)


def _hooks(log: list[str], fail: str = "") -> tuple[Any, Any]:
    def pre(target: str, args: tuple[Any, ...]) -> None:
        log.append(f"pre {target} {args!r}")
        if fail == "pre":
            raise RuntimeError("precall refuses")

    def post(target: str, args: tuple[Any, ...]) -> None:
        log.append(f"post {target} {args!r}")
        if fail == "post":
            raise RuntimeError("postcall refuses")

    return pre, post


def test_call_runs_the_hooks_around_the_function_and_caches_it() -> None:
    log: list[str] = []
    pre, post = _hooks(log)
    found: dict[str, Any] = {}
    target = "tests.dispatch.tasks:add"
    assert tasks.call(target, (2, 3), found=found, precall=pre, postcall=post) == (5, None)
    assert log == [f"pre {target} (2, 3)", f"post {target} (2, 3)"]
    assert found == {target: sample.add}
    # Found by name in the classes modules too, without hooks.
    assert tasks.call("add", (1, 1), ["tests.dispatch.tasks"], found=found) == (2, None)


def test_call_postcall_runs_after_a_failing_function() -> None:
    log: list[str] = []
    pre, post = _hooks(log)
    value, error = tasks.call(
        "tests.dispatch.tasks:boom", ("x",), found={}, precall=pre, postcall=post
    )
    assert value is None and error is not None and error.type == "ValueError"
    assert [line.split()[0] for line in log] == ["pre", "post"]


def test_call_failing_precall_skips_the_function() -> None:
    log: list[str] = []
    pre, post = _hooks(log, fail="pre")
    called: list[int] = []
    found: dict[str, Any] = {"t": lambda: called.append(1)}
    _, error = tasks.call("t", (), found=found, precall=pre, postcall=post)
    assert error is not None and error.type == "RuntimeError" and error.message == "precall refuses"
    assert called == [] and [line.split()[0] for line in log] == ["pre"]


def test_call_failing_postcall_is_the_error() -> None:
    log: list[str] = []
    pre, post = _hooks(log, fail="post")
    _, error = tasks.call("tests.dispatch.tasks:add", (1, 2), found={}, precall=pre, postcall=post)
    assert error is not None and error.message == "postcall refuses"


def test_call_unknown_method_runs_no_hook() -> None:
    log: list[str] = []
    pre, post = _hooks(log)
    _, error = tasks.call(
        "nothing_here", (), ["tests.dispatch.tasks"], found={}, precall=pre, postcall=post
    )
    assert error is not None and error.type == tasks.UNKNOWN_METHOD
    _, error = tasks.call("tests.dispatch.no_such_module:f", (), found={})
    assert error is not None and error.type == tasks.UNKNOWN_METHOD
    assert log == []


def test_child_calls_through_tasks_call_with_its_hooks() -> None:
    import socket

    from catalyzer.dispatch.child import Child

    spec = {
        "classes": ["tests.dispatch.tasks"],
        "precall": "tests.dispatch.tasks:precall",
        "postcall": "tests.dispatch.tasks:postcall",
    }
    ours, theirs = socket.socketpair()
    with ours, theirs:
        child = Child(spec, theirs)
        before = len(sample.calls())
        assert child.call("add", tasks.dumps((2, 3))) == (True, tasks.dumps(5))
        assert sample.calls()[before:] == ["pre add (2, 3)", "post add (2, 3)"]
        ok, data = child.call("nothing_here", tasks.dumps(()))
        assert not ok and TaskError.from_json(data).type == tasks.UNKNOWN_METHOD
        ok, data = child.call("add", b"not a pickle")
        assert not ok and TaskError.from_json(data).type.endswith("SerializationError")
