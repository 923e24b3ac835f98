"""The shapes of reactor that catalyzer's services take, as narrow structural types.

A service takes its reactor as a parameter (never the global one), and is tested with a
``task.Clock`` or ``MemoryReactorClock`` double. These Protocols name only the methods a service
calls, so that a double needs only those, while mypy still checks each call. They follow the
signatures of Twisted's ``IReactorTime``, ``IReactorProcess``, ``IReactorSocket`` and
``IReactorCore``, of which they are subsets, down to the parameter names (a protocol method
that takes ``**kw`` must name its other parameters as the implementations do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessProtocol,
)

__all__ = ["ProcessReactor", "RunningReactor", "SpawnedProcess", "TimeReactor"]


class TimeReactor(Protocol):
    """``IReactorTime``'s clock and timers: what ``task.Clock`` provides."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall: ...


class SpawnedProcess(Protocol):
    """What ``spawnProcess`` returns (an ``IProcessTransport``), as far as its caller reads it:
    the child's pid (None once it has exited)."""

    @property
    def pid(self) -> int | None: ...


class ProcessReactor(TimeReactor, Protocol):
    """Time, plus starting child processes (``IReactorProcess.spawnProcess``).

    :func:`catalyzer.process.children.spawn_child` also adopts the parent's end of each child's
    control socket (``IReactorSocket.adoptStreamConnection``), which every POSIX reactor and
    ``MemoryReactor`` provide. It is left out here because the global reactor's static type
    (``IReactorCore & IReactorTime & IReactorFDSet & IReactorTCP & IReactorProcess``) does not
    name it: with it, ``PreforkDispatcher(reactor=reactor)`` would need a cast everywhere."""

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> SpawnedProcess: ...


class RunningReactor(Protocol):
    """What an entry point (a ``makeService``) does with the reactor it runs under: run code
    once it runs, and stop it (``IReactorCore``)."""

    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def callWhenRunning(
        self, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> Any: ...
