"""The access log: combined log format plus the request's duration in microseconds.

``1.2.3.4 - - [21/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.5" 1234``
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def clf_time(when: float) -> str:
    t = time.gmtime(when)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def _quote(text: str) -> str:
    if not text:
        return "-"
    # Keep one entry on one line whatever a client sends.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def format_entry(
    remote: str,
    request_line: str,
    status: int,
    size: int,
    referer: str,
    user_agent: str,
    duration: float,
    timestamp: str,
) -> str:
    return (
        f'{remote} - - [{timestamp}] "{_quote(request_line)}" {status} {size or "-"} '
        f'"{_quote(referer)}" "{_quote(user_agent)}" {int(duration * 1e6)}\n'
    )


class FileAccessLog:
    """Writes entries to a file descriptor in batches of whole lines, so that several processes
    sharing one output (prefork workers on stdout) never split each other's lines. The owner
    calls :meth:`flush` now and then."""

    _FLUSH_AT = 65536

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""

    @classmethod
    def from_setting(cls, value: str) -> FileAccessLog | None:
        """The ``access-log`` setting: a path, ``-`` for standard output, or ``off``."""
        return None if value.lower() in ("off", "none", "") else cls.open(value)

    @classmethod
    def open(cls, target: str) -> FileAccessLog:
        if target == "-":
            # twistd redirects sys.stdout into its log; the access log wants the real stdout.
            return cls(os.dup(1))
        return cls(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))

    def log(
        self,
        remote: str,
        request_line: str,
        status: int,
        size: int,
        referer: str,
        user_agent: str,
        duration: float,
        now: float,
    ) -> None:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = clf_time(second)
        line = format_entry(
            remote, request_line, status, size, referer, user_agent, duration, self._stamp
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._FLUSH_AT:
            self.flush()

    def log_exchange(
        self,
        method: str,
        environ: Mapping[str, Any],
        status: int,
        size: int,
        started: float,
        now: float,
    ) -> None:
        """One answered request, its client, line and headers read from its WSGI environ (the
        HTTP, uwsgi and FastCGI faces and split handlers all log through here)."""
        self.log(
            environ["REMOTE_ADDR"] or "-",
            f"{method} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}",
            status,
            size,
            environ.get("HTTP_REFERER", ""),
            environ.get("HTTP_USER_AGENT", ""),
            now - started,
            now,
        )

    def flush(self) -> None:
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "replace")
        self._lines = []
        self._size = 0
        view = memoryview(data)
        with contextlib.suppress(OSError):
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            os.close(self._fd)
