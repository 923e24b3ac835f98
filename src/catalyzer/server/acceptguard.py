"""A listening port under an accept flood: its error lines rate-limited, its accepting paused.

When ``accept()`` fails (EMFILE: the process is out of file descriptors; ENFILE, ENOBUFS,
ENOMEM), Twisted's port logs up to three lines per refused connection and, without its reserve
descriptor, is woken again at once by the same waiting connection: a spin that fills the log.
:class:`AcceptGuard` receives those log events instead of the global log, lets one through per
interval (:class:`~catalyzer.ops.floodlog.FloodLog` counts the rest), and stops the port reading
for ``pause`` seconds after each, so that connections closing meanwhile free descriptors before
the next try. Accepting resumes only if the server still wants it (``max-connections``, a stop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel
from zope.interface import implementer

from catalyzer.ops.floodlog import FloodLog
from catalyzer.server import twistedprivate

__all__ = ["ACCEPT_PAUSE", "AcceptGuard"]

log = Logger(namespace="catalyzer.accept")

ACCEPT_PAUSE: Final = 0.1
KIND: Final = "accept errors"


@implementer(ILogObserver)
class AcceptGuard:
    """Installed on one listening ``port`` (a Twisted tcp/unix ``Port``)."""

    def __init__(
        self,
        port: Any,
        flood: FloodLog,
        clock: IReactorTime,
        wanted: Callable[[], bool],
        pause: float = ACCEPT_PAUSE,
    ) -> None:
        self.port = port
        self.flood = flood
        self.clock = clock
        self.wanted = wanted  # whether the server wants this port accepting now
        self.pause = pause
        self.paused = 0  # how many times accepting was paused (for tests and the state dump)
        self._resume: IDelayedCall | None = None
        self._forward = twistedprivate.route_accept_log(port, self)

    def __call__(self, event: dict[str, Any]) -> None:
        """An accept-related event from the port's logger."""
        if self.flood.admit(KIND, log, LogLevel.warn):
            self._forward(event)
        self._pause()

    def cancel(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None

    def _pause(self) -> None:
        if self._resume is not None and self._resume.active():
            return
        self.paused += 1
        self.port.stopReading()
        self._resume = self.clock.callLater(self.pause, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        port = self.port
        if self.wanted() and port.connected and not port.disconnecting:
            port.startReading()
