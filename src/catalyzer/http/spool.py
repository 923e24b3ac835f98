"""Where a request body is kept while it arrives: memory, or a temporary file past a threshold.

Every face (HTTP, uwsgi, FastCGI) spools bodies this one way, so ``body-spool-threshold`` means the
same thing whichever protocol carried the request.
"""

from __future__ import annotations

import io
import tempfile
from typing import IO

__all__ = ["body_file"]


def body_file(length: int | None, threshold: int, directory: str | None = None) -> IO[bytes]:
    """A file for a body of ``length`` bytes (None: not known in advance): in memory when it is
    known to fit under ``threshold``, else a file that moves to disk (in ``directory``, the
    system's temporary directory by default) once it passes it."""
    if length is not None and length <= threshold:
        return io.BytesIO()
    return tempfile.SpooledTemporaryFile(threshold, dir=directory)
