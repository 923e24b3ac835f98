"""Profiling a live app on a sliver of its traffic: ``catalyzer-handler --profile DIR``.

:class:`ProfiledApp` wraps a WSGI app: one request in every ``every`` runs under
:mod:`cProfile` (the app call and the iteration of its body, in the thread that runs them: other
requests are not in it), and its stats are written with :meth:`pstats.Stats.dump_stats` to a
file named by :func:`profile_name` (``TIME-HOST-PID-N.pstats``: workers never collide, and the
names sort by time). :func:`files_to_remove` then keeps only the newest ``keep`` files in the
directory, whichever worker wrote them. The other requests pay one counter increment.

Read a file with ``python -m pstats FILE`` or ``snakeviz FILE``; several at once with
``pstats.Stats(*paths)``. Pure apart from the files (no Twisted).
"""

from __future__ import annotations

import contextlib
import cProfile
import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from catalyzer.wsgi.types import Environ, StartResponse

__all__ = ["ProfiledApp", "files_to_remove", "profile_name"]

_NAME: Final = re.compile(r"^\d{13}-.+-\d+-\d+\.pstats$")


def profile_name(millis: int, host: str, pid: int, n: int) -> str:
    """The file for this process's ``n``-th profile, made at ``millis`` (ms since the epoch)."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", host) or "host"
    return f"{millis:013d}-{host}-{pid}-{n}.pstats"


def files_to_remove(names: Iterable[str], keep: int) -> list[str]:
    """Of the names in the directory, the profile files past the newest ``keep`` (other files
    are never touched)."""
    ours = sorted(name for name in names if _NAME.match(name))
    return ours[: max(0, len(ours) - keep)]


class ProfiledApp:
    """``app``, with one call in ``every`` profiled into ``directory`` (see the module)."""

    def __init__(
        self,
        app: Callable[..., Any],
        directory: str,
        every: int,
        keep: int,
        on_error: Callable[[str], object],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.directory = directory
        self.every = every
        self.keep = keep
        self.on_error = on_error
        self.clock = clock
        self.host = socket.gethostname()
        self.written = 0
        # next() on a count is one C call: threads cannot both get the same number.
        self._requests = itertools.count(1)
        self._profiles = itertools.count(1)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Any:
        if next(self._requests) % self.every:
            return self.app(environ, start_response)
        profiler = cProfile.Profile()
        try:
            result = profiler.runcall(self.app, environ, start_response)
        except BaseException:
            self._write(profiler)
            raise
        if isinstance(result, list | tuple):
            # All its work is done: the list goes out as it is (a one-piece list keeps the
            # Content-Length the server gives it).
            self._write(profiler)
            return result
        return _ProfiledBody(result, profiler, self._write)

    def _write(self, profiler: cProfile.Profile) -> None:
        name = profile_name(int(self.clock() * 1000), self.host, os.getpid(), next(self._profiles))
        path = os.path.join(self.directory, name)
        try:
            profiler.dump_stats(path)
            self.written += 1
            for old in files_to_remove(os.listdir(self.directory), self.keep):
                # Another worker may have removed it first.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, old))
        except OSError as e:
            self.on_error(f"--profile: cannot write {path}: {e.strerror or e}")


class _ProfiledBody:
    """The profiled request's body: each step of its iteration, and its close, under the
    profiler; the stats are written once it is closed."""

    def __init__(
        self, body: Any, profiler: cProfile.Profile, write: Callable[[cProfile.Profile], None]
    ) -> None:
        self.body = body
        self.profiler = profiler
        self.write = write
        self._iterator: Iterator[bytes] | None = None
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        profiler = self.profiler
        profiler.enable()
        try:
            if self._iterator is None:
                self._iterator = iter(self.body)
            return next(self._iterator)
        finally:
            profiler.disable()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        close = getattr(self.body, "close", None)
        try:
            if close is not None:
                self.profiler.runcall(close)
        finally:
            self.write(self.profiler)
