"""Finding the WSGI application named by ``--app``.

``package.module:name`` names a callable; ``package.module:factory(...)`` calls a factory with literal
arguments (parsed with :mod:`ast`, never evaluated) and serves what it returns. Attribute paths such as
``module:obj.app`` work too.
"""

from __future__ import annotations

import ast
import importlib
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from catalyzer.wsgi.types import WSGIApp


class AppSpecError(ValueError):
    """The ``--app`` value is malformed, or the application cannot be loaded."""


@dataclass(frozen=True)
class AppSpec:
    module: str
    attribute: tuple[str, ...]
    call: tuple[tuple[Any, ...], dict[str, Any]] | None = None


def parse_app_spec(text: str) -> AppSpec:
    module, sep, target = text.partition(":")
    if not sep or not module or not target:
        raise AppSpecError("expected 'module:callable' or 'module:factory()', e.g. 'myapp:app'")
    if not all(part.isidentifier() for part in module.split(".")):
        raise AppSpecError(f"{module!r} is not a module name")
    try:
        expr = ast.parse(target.strip(), mode="eval").body
    except SyntaxError:
        raise AppSpecError(f"cannot parse {target!r}") from None
    call = None
    if isinstance(expr, ast.Call):
        try:
            args = tuple(ast.literal_eval(a) for a in expr.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords if kw.arg}
        except ValueError:
            raise AppSpecError(
                "factory arguments must be literals (strings, numbers, ...)"
            ) from None
        if len(kwargs) != len(expr.keywords):
            raise AppSpecError("'**' is not allowed in factory arguments")
        call = (args, kwargs)
        expr = expr.func
    names: list[str] = []
    while isinstance(expr, ast.Attribute):
        names.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        raise AppSpecError(f"{target!r} is not a name or a factory call")
    names.append(expr.id)
    return AppSpec(module, tuple(reversed(names)), call)


def load_app(text: str, search_path: str | None = None) -> WSGIApp:
    """Import and return the application. Every failure is an :class:`AppSpecError` whose message
    is meant for a person: import errors carry the traceback of the code that failed."""
    try:
        spec = parse_app_spec(text)
    except AppSpecError as e:
        raise AppSpecError(f"--app {text!r}: {e}") from None
    if search_path is not None and search_path not in sys.path:
        # Like gunicorn and `python -m`, the working directory's modules are importable.
        sys.path.insert(0, search_path)
    try:
        obj: Any = importlib.import_module(spec.module)
    except ModuleNotFoundError as e:
        if e.name and spec.module.startswith(e.name):
            raise AppSpecError(f"--app {text!r}: no module named {e.name!r}") from None
        raise AppSpecError(f"--app {text!r}: importing failed:\n{_tb()}") from None
    except BaseException:
        raise AppSpecError(f"--app {text!r}: importing failed:\n{_tb()}") from None
    for name in spec.attribute:
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AppSpecError(
                f"--app {text!r}: {spec.module!r} has no attribute {name!r}"
            ) from None
    if spec.call is not None:
        args, kwargs = spec.call
        try:
            obj = obj(*args, **kwargs)
        except BaseException:
            raise AppSpecError(f"--app {text!r}: the factory raised:\n{_tb()}") from None
    if not callable(obj):
        raise AppSpecError(f"--app {text!r}: {type(obj).__name__} object is not callable")
    app: WSGIApp = obj
    return app


def _tb() -> str:
    """The current exception's traceback from the user's code on: our frames and importlib's
    machinery are left out."""
    etype, value, tb = sys.exc_info()
    while tb is not None and (
        tb.tb_frame.f_code.co_filename == __file__ or "importlib" in tb.tb_frame.f_code.co_filename
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(etype, value, tb)).rstrip()
