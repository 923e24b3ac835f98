"""The tasks bench/dispatch.py runs, importable by every pool's children (catalyzer's dispatcher,
ampoule, ProcessPoolExecutor): a no-op, and a CPU-bound loop of a given length."""

from __future__ import annotations

import time
from typing import Any

from twisted.protocols import amp

__all__ = ["noop", "spin"]


def noop() -> None:
    return None


def spin(ms: float) -> int:
    """Burn CPU for ``ms`` milliseconds (a busy loop, not a sleep)."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


# -- the same tasks as ampoule commands


class Noop(amp.Command):
    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"ok", amp.Boolean())]


class Spin(amp.Command):
    arguments = [(b"ms", amp.Float())]
    response = [(b"n", amp.Integer())]


try:
    from ampoule.child import AMPChild
except ImportError:  # ampoule is in the bench extra only
    AMPChild = amp.AMP


class BenchChild(AMPChild):  # type: ignore[misc,valid-type]
    """The ampoule child (ampoule imports it by name in each of its children)."""

    @Noop.responder
    def noop(self) -> dict[str, Any]:
        noop()
        return {"ok": True}

    @Spin.responder
    def spin(self, ms: float) -> dict[str, Any]:
        return {"n": spin(ms)}
