"""Settings checked against the machine before anything is bound, the same way by every entry
point that accepts requests (``catalyzer`` and ``catalyzer-front``): each problem is one line for
the user, which the entry point prints before it exits."""

from __future__ import annotations

import os

from catalyzer.settings import Config

__all__ = ["spool_dir_problem"]


def spool_dir_problem(config: Config) -> str | None:
    """Why ``spool-dir`` cannot take request bodies (None if it can, or is not set)."""
    spool_dir = config.spool_dir
    if spool_dir and not (os.path.isdir(spool_dir) and os.access(spool_dir, os.W_OK | os.X_OK)):
        return f"--spool-dir {spool_dir!r}: not a directory this process can write to"
    return None
