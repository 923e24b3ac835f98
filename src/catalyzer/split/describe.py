"""The split-mode front's state as text for people: the USR1 dump and the manhole's
``handlers()`` (``/status`` has the same as JSON). Pure: the router's status in, lines out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_front", "handler_line"]


def handler_line(row: Mapping[str, Any]) -> str:
    """One handler's row on one line, e.g. ``web1 pid 812 tag v42 gen 1 ready: 4 slots + 8
    prefetch, 11 credit, 1 in flight, rtt 0.4 ms, 1200 served, 2 re-dispatched, 0 errors,
    heard 0.2s ago``."""
    rtt = row.get("rtt")
    rtt_text = "rtt -" if rtt is None else f"rtt {float(rtt) * 1000:.1f} ms"
    weight = row.get("weight")
    weight_text = "" if weight is None or weight == 1 else f", weight {weight:g}"
    prefetch = row.get("prefetch")
    prefetch_text = f" + {prefetch} prefetch" if prefetch else ""
    return (
        f"{row['host']} pid {row['pid']} tag {row['tag'] or '-'} gen {row['generation']} "
        f"{row['state']}: {row['slots']} slots{prefetch_text}, {row['credit']} credit, "
        f"{row['in_flight']} in flight, {rtt_text}, {row['served']} served, "
        f"{row['redispatched']} re-dispatched, {row['errors']} errors{weight_text}, "
        f"heard {row['last_seen']:.1f}s ago"
    )


def describe_front(status: Mapping[str, Any]) -> str:
    """The router's :meth:`~catalyzer.split.router.Router.status` as a few lines: a summary,
    a line per handler, and the counters that are not zero."""
    handlers = status["handlers"]
    summary = (
        f"split front: {len(handlers)} handlers, {status['queued']} queued, "
        f"{status['in_flight']} at handlers"
    )
    if status.get("budget"):
        summary += (
            f", {status['buffered']} of {status['budget']} budget bytes buffered, "
            f"{status['waiting_for_budget']} waiting for it"
        )
    lines = [summary]
    lines += [f"  {handler_line(row)}" for row in handlers]
    counters = {k: v for k, v in status["counters"].items() if v}
    if counters:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    return "\n".join(lines)
