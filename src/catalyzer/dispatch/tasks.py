"""The task dispatcher's pure parts: results, serialisation, method lookup and the wire format.

No Twisted and no processes here: this module is imported both by the dispatcher
(:mod:`catalyzer.dispatch`) and by its children (``python -m catalyzer.dispatch.child``), which
start faster for not importing Twisted.

Serialisation is pickle (protocol 5): arguments and results can be any picklable Python value
(tuples, bytes, dates, dataclasses...), as with :mod:`concurrent.futures`. Unpickling runs code,
so pickles are only ever exchanged between a dispatcher and the children it spawned, over a
socketpair nobody else holds. Errors travel as JSON.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

__all__ = [
    "CHILD_DIED",
    "HALTED",
    "SERIALIZATION",
    "STOPPED",
    "TIMEOUT",
    "UNKNOWN_METHOD",
    "SerializationError",
    "TaskError",
    "TaskFailed",
    "TaskResult",
    "UnknownMethod",
    "call",
    "callable_path",
    "dumps",
    "error_from_exception",
    "load_path",
    "loads",
    "resolve",
    "split",
]

PICKLE_PROTOCOL: Final = 5
# An AMP value holds at most 65,535 bytes: larger payloads go as several boxes of this size.
CHUNK: Final = 60_000

# TaskError.type of the errors the dispatcher itself reports (a task's own exception is reported
# with its class name, e.g. "ZeroDivisionError" or "mymodule.MyError").
CHILD_DIED: Final = "ChildDied"
TIMEOUT: Final = "TaskTimeout"
UNKNOWN_METHOD: Final = "UnknownMethod"
SERIALIZATION: Final = "SerializationError"
STOPPED: Final = "DispatcherStopped"
HALTED: Final = "DispatcherHalted"


@dataclass(frozen=True)
class TaskError:
    """Why a task has no value: the exception's type name, its message, and where it was raised
    (the traceback as text, from the child; empty for the dispatcher's own errors)."""

    type: str
    message: str
    traceback: str = ""

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def to_json(self) -> bytes:
        return json.dumps([self.type, self.message, self.traceback]).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TaskError:
        kind, message, tb = json.loads(data)
        return cls(str(kind), str(message), str(tb))


class TaskFailed(Exception):
    """Raised by :meth:`TaskResult.unwrap` for a result with an error."""

    def __init__(self, error: TaskError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class TaskResult:
    """What a dispatched task came to: its ``value``, or an ``error``; never both.

    ``elapsed`` is the seconds from the moment a child (or the dispatcher itself, with
    ``max_forks=0``) took the task until its result, its death or its timeout; 0 for a task that
    never ran. ``pid`` is the process that ran it.
    """

    value: Any = None
    error: TaskError | None = None
    elapsed: float = 0.0
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> Any:
        """The value, or :class:`TaskFailed` for an error."""
        if self.error is not None:
            raise TaskFailed(self.error)
        return self.value


class SerializationError(TypeError):
    """A value cannot be pickled (raised to the caller of ``dispatch``) or unpickled."""


class UnknownMethod(LookupError):
    """No task goes by that name."""


def dumps(value: object) -> bytes:
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as e:  # PicklingError, TypeError, AttributeError, RecursionError...
        raise SerializationError(f"cannot pickle {_short(value)}: {e}") from e


def loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except Exception as e:
        raise SerializationError(f"cannot unpickle a value of {len(data)} bytes: {e}") from e


def split(data: bytes, size: int = CHUNK) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes; always at least one piece."""
    if len(data) <= size:
        return [data]
    view = memoryview(data)
    return [bytes(view[i : i + size]) for i in range(0, len(data), size)]


def error_from_exception(exc: BaseException) -> TaskError:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return TaskError(name, str(exc), text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- naming tasks


def callable_path(func: Callable[..., Any]) -> str:
    """``module:qualified.name`` of a module-level function (or a class's static/class method),
    checked to import back to the same object: a child finds a task by this path."""
    module_name = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module_name or not qualname or "<" in qualname:
        raise ValueError(
            f"{func!r} cannot be found by a child process: pass a function defined at the top "
            "level of an importable module (not a lambda, a closure or a bound method)"
        )
    if module_name == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is None or not spec.name or spec.name == "__main__":
            raise ValueError(
                f"{func!r} is defined in a script run as __main__, which a child cannot import: "
                "define tasks in a module, or run the script with python -m"
            )
        # The child imports the module under its real name (a second copy, here).
        found: Any = main
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is not func:
            raise ValueError(f"{func!r} is not {spec.name}:{qualname}")
        return f"{spec.name}:{qualname}"
    path = f"{module_name}:{qualname}"
    try:
        found = load_path(path)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{func!r} cannot be imported as {path!r}: {e}") from None
    if getattr(found, "__func__", found) is not getattr(func, "__func__", func):
        raise ValueError(f"{path!r} does not import back to {func!r}")
    return path


def as_path(target: str | Callable[..., Any]) -> str:
    """A ``module:name`` path given as such or as the callable itself."""
    if isinstance(target, str):
        if ":" not in target:
            raise ValueError(f"{target!r}: expected module:function")
        return target
    if callable(target):
        return callable_path(target)
    raise TypeError(f"expected a callable or 'module:function', not {target!r}")


def load_path(path: str, importer: Callable[[str], ModuleType] = importlib.import_module) -> Any:
    """The object a ``module:qualified.name`` path names."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importer(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def public_function(module: ModuleType, name: str) -> Callable[..., Any] | None:
    """``module.name`` if it may be called by name: public (no leading underscore), callable,
    and either listed in the module's ``__all__`` or defined in the module itself (so that a
    function it merely imported, ``os.system`` say, is never reachable)."""
    if not name.isidentifier() or name.startswith("_"):
        return None
    obj = getattr(module, name, None)
    if obj is None or not callable(obj):
        return None
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return obj if name in exported else None
    return obj if getattr(obj, "__module__", None) == module.__name__ else None


def resolve(
    target: str,
    classes: Sequence[str] = (),
    importer: Callable[[str], ModuleType] = importlib.import_module,
) -> Callable[..., Any]:
    """The callable a child runs for ``target``: a ``module:function`` path (an explicit
    callable, or a name found in ``methods`` by the dispatcher), else a name searched for in each
    module of ``classes`` in order (see :func:`public_function`)."""
    if ":" in target:
        try:
            found = load_path(target, importer)
        except (ImportError, AttributeError) as e:
            raise UnknownMethod(f"{target}: {e}") from None
        if not callable(found):
            raise UnknownMethod(f"{target} is not callable")
        return found  # type: ignore[no-any-return]
    for module_name in classes:
        func = public_function(importer(module_name), target)
        if func is not None:
            return func
    where = ", ".join(classes) if classes else "no modules"
    raise UnknownMethod(f"no method {target!r} (searched {where})")


def call(
    target: str,
    args: tuple[Any, ...],
    classes: Sequence[str] = (),
    *,
    found: dict[str, Callable[..., Any]],
    precall: Callable[[str, tuple[Any, ...]], object] | None = None,
    postcall: Callable[[str, tuple[Any, ...]], object] | None = None,
) -> tuple[Any, TaskError | None]:
    """Run one task as a child does, and as the dispatcher does with ``max_forks=0``: find
    ``target`` (see :func:`resolve`; ``found`` caches what was found, by target), then
    ``precall(target, args)``, the function, and ``postcall(target, args)`` even if the function
    failed. Returns ``(value, None)``, or ``(None, error)``: :data:`UNKNOWN_METHOD` when nothing
    goes by that name, else the exception of the hook or function (a failing precall means the
    function does not run; a failing postcall replaces the function's result or error)."""
    try:
        func = found.get(target)
        if func is None:
            func = found[target] = resolve(target, classes)
    except UnknownMethod as e:
        return None, TaskError(UNKNOWN_METHOD, str(e))
    except Exception as e:
        return None, error_from_exception(e)
    try:
        if precall is not None:
            precall(target, args)
        try:
            value = func(*args)
        finally:
            if postcall is not None:
                postcall(target, args)
    except Exception as e:
        return None, error_from_exception(e)
    return value, None


def method_target(name: str, methods: Mapping[str, str], classes: Sequence[str]) -> str | None:
    """What the dispatcher sends a child for a method name: its path from ``methods``, the name
    itself when ``classes`` may hold it, or None when nothing can."""
    if name in methods:
        return methods[name]
    if classes and name.isidentifier() and not name.startswith("_"):
        return name
    return None
