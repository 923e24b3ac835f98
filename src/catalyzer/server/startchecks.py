"""Settings checked against the machine before anything is bound, the same way by every entry
point that accepts requests (``catalyzer`` and ``catalyzer-front``): each problem is one line for
the user, which the entry point prints before it exits; and :class:`StartError`, for what the
machine refuses only once the service starts."""

from __future__ import annotations

import os
import sys

from catalyzer.settings import Config

__all__ = ["StartError", "spool_dir_problem"]


def spool_dir_problem(config: Config) -> str | None:
    """Why ``spool-dir`` cannot take request bodies (None if it can, or is not set)."""
    spool_dir = config.spool_dir
    if spool_dir and not (os.path.isdir(spool_dir) and os.access(spool_dir, os.W_OK | os.X_OK)):
        return f"--spool-dir {spool_dir!r}: not a directory this process can write to"
    return None


class StartError(SystemExit):
    """The service cannot start (an endpoint not bound, threads refused): ``twistd`` stops with
    status 1 and ``message`` instead of a traceback.

    By the time services start, twistd has redirected ``sys.stderr`` into its log, so the message
    goes to the process's real standard error as well (a prefork worker's is the master's pipe,
    and the master reports it as the worker's boot failure)."""

    def __init__(self, message: str) -> None:
        stream = sys.__stderr__
        if stream is not None:
            stream.write(message + "\n")
            stream.flush()
        super().__init__(1)
