"""Development reload (``--reload``): watch the application's files with hupper's file monitor
(watchman or watchdog when installed, else polling) and swap worker generations on a change.

The master runs the monitor; workers report the files they imported, and a worker whose app fails
to import reports the broken file too, so that the next good save is seen. Changes are coalesced:
saving several files at once gives one reload.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final

from hupper.reloader import find_default_monitor_factory
from twisted.logger import Logger

__all__ = ["FileWatcher", "error_app", "files_in_traceback", "module_files"]

log = Logger(namespace="catalyzer.reload")

_COALESCE: Final = 0.1
_TRACEBACK_FILE: Final = re.compile(r'File "([^"]+)", line \d+')


class _HupperLogger:
    """The logger interface hupper's monitors expect, onto twisted.logger."""

    def error(self, msg: str) -> None:
        log.error("{msg}", msg=msg)

    def info(self, msg: str) -> None:
        log.info("{msg}", msg=msg)

    def debug(self, msg: str) -> None:
        pass


class FileWatcher:
    """Calls ``on_change(paths)`` in the reactor thread after files change."""

    def __init__(
        self, reactor: Any, on_change: Callable[[list[str]], None], interval: float = 0.5
    ) -> None:
        self.reactor = reactor
        self.on_change = on_change
        logger = _HupperLogger()
        factory = find_default_monitor_factory(logger)
        self.monitor = factory(self._changed_in_thread, interval=interval, logger=logger)
        self.paths: set[str] = set()
        self._pending: set[str] = set()
        self._timer: Any = None

    def watch(self, paths: Iterable[str], since: float | None = None) -> None:
        """Watch ``paths``. A monitor only sees changes after it first looks at a file, so a file
        already modified after ``since`` (when the process that reported it started) counts as
        changed now."""
        for given in paths:
            path = os.path.abspath(given)
            if path in self.paths:
                continue
            self.paths.add(path)
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                mtime = 0.0
            # hupper's polling monitor takes its baseline at its first scan, so a save between
            # now and then would never be reported: give it the baseline of this moment.
            baseline = getattr(self.monitor, "mtimes", None)
            if isinstance(baseline, dict):
                with self.monitor.lock:
                    baseline.setdefault(path, mtime)
            self.monitor.add_path(path)
            if since is not None and mtime > since:
                self._changed(path)

    def watch_patterns(self, patterns: Iterable[str]) -> None:
        """Files, directories (everything below them) and glob patterns (``**`` recursive)."""
        for pattern in patterns:
            for match in glob.glob(pattern, recursive=True) or [pattern]:
                if os.path.isdir(match):
                    self.watch(glob.glob(os.path.join(match, "**", "*"), recursive=True))
                else:
                    self.watch([match])

    def start(self) -> None:
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()

    def _changed_in_thread(self, path: str) -> None:
        self.reactor.callFromThread(self._changed, path)

    def _changed(self, path: str) -> None:
        self._pending.add(path)
        if self._timer is None:
            self._timer = self.reactor.callLater(_COALESCE, self._fire)

    def _fire(self) -> None:
        self._timer = None
        paths, self._pending = sorted(self._pending), set()
        self.on_change(paths)


def module_files() -> list[str]:
    """Source files of the imported modules, leaving out the interpreter's and the environment's
    own (the standard library, site-packages of the virtualenv)."""
    skip = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    files = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py") and not path.startswith(skip):
            files.append(path)
    return files


def files_in_traceback(text: str) -> list[str]:
    return [p for p in _TRACEBACK_FILE.findall(text) if os.path.exists(p)]


def error_app(text: str) -> Callable[..., list[bytes]]:
    """While the app is broken, every request shows why (development only: --reload)."""
    body = (
        "catalyzer --reload: the application could not be loaded. Fix it and save: the next "
        f"good save is picked up.\n\n{text}\n"
    ).encode("utf-8", "replace")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app
