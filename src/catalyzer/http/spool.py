"""Where a request body is kept while it arrives: memory, or a temporary file past a threshold.

Every face (HTTP, uwsgi, FastCGI) spools bodies this one way, so ``body-spool-threshold`` means the
same thing whichever protocol carried the request.
"""

from __future__ import annotations

import errno
import io
import tempfile
from typing import IO, Final

__all__ = ["body_file", "memory_body", "spool_failure"]

# A body that cannot be written to the spool directory for lack of room: 507, the server's
# storage; any other failure there (a missing or unwritable directory): 503.
_NO_ROOM: Final = frozenset((errno.ENOSPC, errno.EDQUOT))


def body_file(length: int | None, threshold: int, directory: str | None = None) -> IO[bytes]:
    """A file for a body of ``length`` bytes (None: not known in advance): in memory when it is
    known to fit under ``threshold``, else a file that moves to disk (in ``directory``, the
    system's temporary directory by default) once it passes it."""
    if length is not None and length <= threshold:
        return io.BytesIO()
    return tempfile.SpooledTemporaryFile(threshold, dir=directory)


def memory_body(length: int) -> io.BytesIO:
    """An in-memory body file already ``length`` bytes long (zeros), positioned at its start, in
    one allocation, for a body of known size that arrives in pieces: they overwrite it in place
    (the uwsgi face even receives into its memory, ``getbuffer()``). A BytesIO written piece by
    piece from empty grows by an eighth at a time, and once glibc's dynamic mmap threshold has
    risen past the body's size every growth is a realloc copying all the bytes so far (a 1 MiB
    body in 64 KiB pieces: about four copies of it); pieces joined at the end take twice the
    memory, which glibc then trims from its heap and faults in again for the next body."""
    body = io.BytesIO()
    if length > 0:
        body.seek(length - 1)
        body.write(b"\0")  # the gap before it is zeroed: the one pass over the memory before use
        body.seek(0)
    return body


def spool_failure(e: OSError, directory: str | None) -> tuple[int, str]:
    """The status and the log detail for a body that could not be spooled to ``directory`` (None:
    the system's temporary directory), the same on every face."""
    where = directory or tempfile.gettempdir()
    status = 507 if e.errno in _NO_ROOM else 503
    return status, f"cannot spool the request body to {where}: {e.strerror or e}"
