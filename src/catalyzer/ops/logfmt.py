"""Log output for processes whose lines another process re-logs (prefork workers): one line per
event, no timestamp (the master adds its own), tracebacks kept."""

from __future__ import annotations

from typing import IO, Any

from twisted.logger import FileLogObserver, formatEvent


def _format(event: dict[str, Any]) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback().rstrip()
    level = event.get("log_level")
    name = level.name if level is not None else "info"
    return f"[{event.get('log_namespace', '-')}#{name}] {text}\n"


def plain_observer(stream: IO[str]) -> FileLogObserver:
    return FileLogObserver(stream, _format)
