"""A worker's memory shared with the master: the request in the app, and the worker's counters.

The worker writes; the master reads whenever it wants, also when the worker's reactor is stuck
inside the app (a hung request), which is exactly when a message over the control channel could
not be sent, and once more after the worker has exited, whatever its end (even ``SIGKILL``): the
master holds its own mapping of the ``memfd``, which outlives the worker.

Layout (:data:`SIZE` bytes, sealed against shrinking and growing; the mapping is page-aligned):

- bytes 0..1015, the request in the app: ``<d`` entered-at (wall clock seconds, 0.0 when not in
  the app), ``<H`` length, then the request line (method and path) in UTF-8;
- bytes 1016..1023, ``<d``: since when (wall clock seconds) every app thread of a ``--threads``
  worker has been stuck in a long call, 0.0 when not (:mod:`catalyzer.prefork.poolrescue`);
- from byte 1024 (:data:`COUNTERS_AT`, 8-byte aligned), the request counters:
  :data:`catalyzer.ops.metrics.COUNT` native unsigned 64-bit integers, laid out and written as
  :mod:`catalyzer.ops.metrics` says (one aligned 8-byte store per counter, a sequence number
  around each response's updates).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Final

from catalyzer.ops import metrics

COUNTERS_AT: Final = 1024
SIZE: Final = COUNTERS_AT + metrics.SIZE
_HEAD: Final = struct.Struct("<dH")
_STUCK: Final = struct.Struct("<d")
_STUCK_AT: Final = COUNTERS_AT - _STUCK.size
_TEXT_MAX: Final = _STUCK_AT - _HEAD.size


class Scoreboard:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)
        self._views: list[memoryview] = []

    @classmethod
    def create(cls) -> Scoreboard:
        fd = os.memfd_create("catalyzer-scoreboard", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, SIZE)
        # Its size is fixed for good: a worker (or its app) that truncated it would make the
        # master's next read of the mapping a SIGBUS.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        return cls(fd)

    def enter(self, now: float, what: str) -> None:
        data = what.encode("utf-8", "replace")[:_TEXT_MAX]
        self._map[_HEAD.size : _HEAD.size + len(data)] = data
        _HEAD.pack_into(self._map, 0, now, len(data))

    def leave(self) -> None:
        _HEAD.pack_into(self._map, 0, 0.0, 0)

    def leave_if(self, entered: float) -> None:
        """Clear the slot if it still holds the request that entered at ``entered`` (with a
        thread pool another thread's request may have taken it since)."""
        if _HEAD.unpack_from(self._map, 0)[0] == entered:
            self.leave()

    def read(self) -> tuple[float, str]:
        """``(entered_at, request)``; entered_at is 0.0 when the worker is not in the app."""
        entered, size = _HEAD.unpack_from(self._map, 0)
        text = bytes(self._map[_HEAD.size : _HEAD.size + min(size, _TEXT_MAX)])
        return entered, text.decode("utf-8", "replace")

    def set_stuck(self, since: float) -> None:
        """Every app thread is stuck in a long call since ``since`` (0.0: no longer)."""
        _STUCK.pack_into(self._map, _STUCK_AT, since)

    def stuck(self) -> float:
        """Since when every app thread has been stuck (0.0: they are not)."""
        since: float = _STUCK.unpack_from(self._map, _STUCK_AT)[0]
        return since

    def counters(self) -> memoryview:
        """The counter vector, for :class:`catalyzer.ops.metrics.RequestMetrics` (the worker
        writes through it) and :func:`catalyzer.ops.metrics.read_counts` (the master reads)."""
        if not self._views:
            whole = memoryview(self._map)
            region = whole[COUNTERS_AT : COUNTERS_AT + metrics.SIZE]
            self._views = [region.cast("Q"), region, whole]
        return self._views[0]

    def close(self) -> None:
        """Unmap and close (once; again does nothing)."""
        if self._map.closed:
            return
        for view in self._views:  # an mmap with views exported cannot be closed
            view.release()
        self._views = []
        self._map.close()
        os.close(self.fd)
