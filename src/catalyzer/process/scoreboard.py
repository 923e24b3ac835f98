"""A worker's "request in the app" slot, in memory shared with the master.

The worker writes when it enters and leaves the application; the master reads it on its own
timer. This works when the worker's reactor is stuck inside the app (a hung request), which is
exactly when a message over the control channel could not be sent.

Layout: ``<d`` entered-at (wall clock seconds, 0.0 when not in the app), ``<H`` length, then the
request line (method and path) in UTF-8.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Final

SIZE: Final = 1024
_HEAD: Final = struct.Struct("<dH")
_TEXT_MAX: Final = SIZE - _HEAD.size


class Scoreboard:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)

    @classmethod
    def create(cls) -> Scoreboard:
        fd = os.memfd_create("catalyzer-scoreboard", 0)
        os.ftruncate(fd, SIZE)
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

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
