"""The PEP 3333 callable shapes, for type checking."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeAlias

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo: TypeAlias = ExcInfo | tuple[None, None, None]
Environ: TypeAlias = dict[str, Any]
WriteCallable: TypeAlias = Callable[[bytes], None]
StartResponse: TypeAlias = Callable[..., WriteCallable]
WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]
