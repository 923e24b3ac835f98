"""Bytes waiting to be sent, held as views of the objects they came in: sending part of them
moves a position forward, it never copies what is left.

A 16 MiB ``bytes`` body is sent to the socket straight from the application's object, a piece at
a time, in ``sendmsg`` calls that also carry the head before it and the pieces after it, so the
server holds no copy of a body per connection."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

__all__ = ["MAX_PIECES", "PendingBytes"]

# At most this many pieces per sendmsg: well under Linux's IOV_MAX (1024).
MAX_PIECES: Final = 256


class PendingBytes:
    """An ordered queue of byte pieces (empty ones dropped) and how many bytes are left."""

    __slots__ = ("_views", "left")

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._views: deque[memoryview] = deque(memoryview(p) for p in pieces if p)
        self.left = sum(v.nbytes for v in self._views)

    def extend(self, pieces: Iterable[bytes]) -> None:
        """More pieces, after those already pending."""
        for piece in pieces:
            if piece:
                view = memoryview(piece)
                self._views.append(view)
                self.left += view.nbytes

    def views(self, max_pieces: int = MAX_PIECES) -> list[memoryview]:
        """The next pieces to send, in order (all of them, up to ``max_pieces``)."""
        views = self._views
        if len(views) <= max_pieces:
            return list(views)
        return [views[i] for i in range(max_pieces)]

    def advance(self, sent: int) -> None:
        """``sent`` bytes from the front went out."""
        if sent > self.left:
            raise ValueError(f"{sent} bytes sent of {self.left} pending")
        self.left -= sent
        views = self._views
        while sent:
            first = views[0]
            if sent < first.nbytes:
                views[0] = first[sent:]
                return
            sent -= first.nbytes
            views.popleft().release()

    def clear(self) -> None:
        """Let go of every piece (the response was abandoned)."""
        for view in self._views:
            view.release()
        self._views.clear()
        self.left = 0
