"""When a prefork worker asks to be replaced: after ``--max-requests`` responses, or once its
resident memory has passed ``--max-worker-rss``.

:class:`RecyclePolicy` is a plain object, asked after every response with the numbers of the
moment; it answers at most once per worker (the master then starts the replacement first, and
one worker recycles at a time, as for every retirement: :meth:`Supervisor.retire
<catalyzer.process.supervision.Supervisor.retire>`).
"""

from __future__ import annotations

from dataclasses import dataclass

from catalyzer.process.memory import MIB

__all__ = ["Recycle", "RecyclePolicy"]


@dataclass(frozen=True)
class Recycle:
    """Replace this worker: ``reason`` names the setting, ``detail`` gives the figure."""

    reason: str
    detail: str = ""


class RecyclePolicy:
    """``max_requests`` (0: no limit; jitter already added) and ``max_rss`` in bytes (0: no
    limit)."""

    def __init__(self, max_requests: int, max_rss: int) -> None:
        self.max_requests = max_requests
        self.max_rss = max_rss
        self.decided = False

    @property
    def watches_memory(self) -> bool:
        """Whether :meth:`after_response` needs the resident size (reading it costs a syscall)."""
        return bool(self.max_rss) and not self.decided

    def after_response(self, requests_served: int, rss: int = 0) -> Recycle | None:
        """A response has ended; ``rss`` is the resident size now (bytes; 0 when not watched).
        Returns the decision to recycle the first time a limit is reached, then None."""
        if self.decided:
            return None
        if self.max_requests and requests_served >= self.max_requests:
            self.decided = True
            return Recycle("max-requests")
        if self.max_rss and rss > self.max_rss:
            self.decided = True
            return Recycle(
                "max-worker-rss",
                # Rounded up: 150.4 MiB over a 150 MiB limit reads "151 > 150", never "150 > 150".
                f"RSS {-(-rss // MIB)} MiB > {self.max_rss / MIB:.0f} MiB",
            )
        return None
