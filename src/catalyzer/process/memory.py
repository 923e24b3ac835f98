"""How much memory this process holds: its resident set size, from ``/proc/self/statm``.

:func:`resident_bytes` is the pure part (the file's text and the page size in, bytes out);
:class:`ResidentMemory` keeps the file open and re-reads it with ``pread``, because a worker with
``--max-worker-rss`` asks after every response and an ``open`` each time would cost more than the
read.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["MIB", "ResidentMemory", "resident_bytes"]

MIB: Final = 1024 * 1024
_STATM: Final = "/proc/self/statm"


def resident_bytes(statm: str, page_size: int) -> int:
    """The resident set size in bytes from ``/proc/PID/statm``'s text ("size resident shared
    text lib data dt", in pages). Raises ValueError on anything else."""
    fields = statm.split()
    if len(fields) < 2:
        raise ValueError(f"not a statm line: {statm!r}")
    pages = int(fields[1])
    if pages < 0:
        raise ValueError(f"negative resident page count in {statm!r}")
    return pages * page_size


class ResidentMemory:
    """This process's RSS, read from an open ``/proc/self/statm``."""

    def __init__(self, path: str = _STATM) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def read(self) -> int:
        """Resident bytes now."""
        return resident_bytes(os.pread(self._fd, 256, 0).decode("ascii"), self._page)

    def close(self) -> None:
        os.close(self._fd)
