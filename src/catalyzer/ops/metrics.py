"""Request metrics of one process, and their sum over several (pure).

Each process counts into a :class:`RequestMetrics`; a prefork worker sends
:meth:`RequestMetrics.snapshot` with its heartbeat and the master adds the snapshots up with
:func:`merge`. Counters stay monotonic across worker restarts because the master folds a dead
worker's last snapshot into a running total.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["BUCKETS", "RequestMetrics", "merge"]

# Upper bounds (seconds) of the request duration histogram.
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")


class RequestMetrics:
    __slots__ = ("buckets", "by_class", "bytes_in", "bytes_out", "duration_count", "duration_sum")

    def __init__(self) -> None:
        self.by_class = dict.fromkeys(STATUS_CLASSES, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); last: +Inf
        self.duration_sum = 0.0
        self.duration_count = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def observe(self, status: int, duration: float, bytes_out: int) -> None:
        key = STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        self.by_class[key] += 1
        self.buckets[bisect_left(BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.duration_count += 1
        self.bytes_out += bytes_out

    def snapshot(self) -> dict[str, Any]:
        return {
            "by_class": dict(self.by_class),
            "buckets": list(self.buckets),
            "duration_sum": self.duration_sum,
            "duration_count": self.duration_count,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several snapshots (missing keys count as zero)."""
    total = RequestMetrics().snapshot()
    for snap in snapshots:
        for key, value in snap.get("by_class", {}).items():
            total["by_class"][key] = total["by_class"].get(key, 0) + value
        buckets = snap.get("buckets", [])
        total["buckets"] = [a + b for a, b in zip(total["buckets"], buckets, strict=False)] + (
            buckets[len(total["buckets"]) :]
        )
        for key in ("duration_sum", "duration_count", "bytes_in", "bytes_out"):
            total[key] += snap.get(key, 0)
    return total
