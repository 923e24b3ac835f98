"""Tasks the dispatcher tests run in child processes (which import them by path)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = [
    "add",
    "big",
    "boom",
    "calls",
    "crash",
    "echo",
    "init_marker",
    "noop",
    "pid",
    "sleep",
    "spin",
    "unpicklable",
]

# What the hooks saw in this process.
_CALLS: list[str] = []
_INIT: list[int] = []


def noop() -> None:
    return None


def add(a: int, b: int) -> int:
    return a + b


def echo(value: Any) -> Any:
    return value


def pid() -> int:
    return os.getpid()


def big(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


def boom(message: str) -> None:
    raise ValueError(message)


def crash() -> None:
    """Die the way the OOM killer kills."""
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(seconds: float) -> float:
    time.sleep(seconds)  # the task itself takes time (not test synchronisation)
    return seconds


def spin(ms: float) -> int:
    """Burn CPU for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def unpicklable() -> Any:
    return lambda: None


def calls() -> list[str]:
    return list(_CALLS)


def init_marker() -> list[int]:
    return list(_INIT)


def _private() -> int:
    return 1


# -- hooks


def fork_init() -> None:
    _INIT.append(os.getpid())


def fork_init_fails() -> None:
    raise RuntimeError("fork_init refuses")


def precall(target: str, args: tuple[Any, ...]) -> None:
    _CALLS.append(f"pre {target} {args!r}")


def postcall(target: str, args: tuple[Any, ...]) -> None:
    _CALLS.append(f"post {target} {args!r}")
