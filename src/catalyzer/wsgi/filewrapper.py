"""``wsgi.file_wrapper``: lets the server send a file without reading it into memory."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["FileWrapper"]


class FileWrapper:
    """Iterates a file in blocks; the server may instead ``sendfile`` it straight to the socket."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def sendfile_span(self) -> tuple[int, int, int] | None:
        """``(fd, offset, length)`` for a regular file the kernel can send, else None."""
        fileno: Any = getattr(self.filelike, "fileno", None)
        tell: Any = getattr(self.filelike, "tell", None)
        if fileno is None or tell is None:
            return None
        try:
            fd = fileno()
            info = os.fstat(fd)
            offset = tell()
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return fd, offset, max(0, info.st_size - offset)
