"""Where a request body is kept while it arrives: memory, or a temporary file past a threshold.

Every face (HTTP, uwsgi, FastCGI) spools bodies this one way, so ``body-spool-threshold`` means the
same thing whichever protocol carried the request.
"""

from __future__ import annotations

import io
import tempfile
from typing import IO, Final

__all__ = ["body_file"]


# Bodies from this size up are given their whole buffer at once (see body_file's ``exact``).
_PRESIZE_FROM: Final = 65536


def body_file(
    length: int | None, threshold: int, directory: str | None = None, *, exact: bool = False
) -> IO[bytes]:
    """A file for a body of ``length`` bytes (None: not known in advance): in memory when it is
    known to fit under ``threshold``, else a file that moves to disk (in ``directory``, the
    system's temporary directory by default) once it passes it.

    ``exact``: the caller writes exactly ``length`` bytes from position 0 before reading (or
    drops the file), so an in-memory file is sized once up front, for one zero fill. Grown by
    its writes, a ``BytesIO`` reallocates its buffer about 20 times on the way to 1 MiB, and the
    C library moves it whenever something was allocated after it: the uwsgi face, whose reads
    are new ``bytes`` between the writes, copied 5.5 MiB per 1 MiB body (bench.conncost:
    5.9M -> 3.4M instructions per request). The HTTP face reads into one reused buffer, so its
    body grows in place, and a zero fill would cost it more (2.1M -> 2.5M): it does not ask."""
    if length is not None and length <= threshold:
        body = io.BytesIO()
        if exact and length >= _PRESIZE_FROM:
            body.seek(length - 1)
            body.write(b"\0")
            body.seek(0)
        return body
    return tempfile.SpooledTemporaryFile(threshold, dir=directory)
