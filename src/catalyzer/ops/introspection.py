"""What the USR1 state dump and the manhole list besides the server itself.

Long-lived things that an app may start inside a serving process (a task dispatcher, for one)
register here while they run. The dump and the manhole read this registry, so the HTTP side never
imports the things it describes. Pure: no Twisted.
"""

from __future__ import annotations

from typing import Protocol


class Describable(Protocol):
    def describe(self) -> str:
        """A few lines on this thing's state, for a human reading a dump."""
        ...


class Registry:
    """Running things by kind ("dispatchers", ...), in the order they started."""

    def __init__(self) -> None:
        self._running: dict[str, list[Describable]] = {}

    def add(self, kind: str, thing: Describable) -> None:
        things = self._running.setdefault(kind, [])
        if thing not in things:
            things.append(thing)

    def remove(self, kind: str, thing: Describable) -> None:
        things = self._running.get(kind, [])
        if thing in things:
            things.remove(thing)

    def running(self, kind: str) -> list[Describable]:
        return list(self._running.get(kind, []))

    def describe_all(self) -> str:
        """Every running thing's description, one after another ("" when nothing runs)."""
        return "\n".join(t.describe() for things in self._running.values() for t in things)


#: This process's registry: one per process, because what it lists lives as long as the process.
registry = Registry()
