"""``--stats ENDPOINT``: status, Prometheus metrics and a readiness probe, on a port of their own.

Routes: ``/metrics`` (Prometheus text format), ``/status`` (JSON: the USR1 state dump as data),
``/ready`` (200 while at least one worker can serve, else 503). The app is served by catalyzer's own
engine, in the master when there is one (it adds up every worker's counters, read from their
shared memory, and their gauges, from their heartbeats).

The exposition format is written by ``prometheus_client`` (its reference implementation), fed by
a custom collector with the numbers we already have, rather than its own process-local registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from catalyzer.ops.metrics import BUCKETS
from catalyzer.wsgi.types import Environ

__all__ = ["StatusSource", "exposition", "make_status_app"]


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]:
        """Everything, as JSON-able data. Must hold "metrics" (a merged snapshot), "in_flight",
        "connections", "workers" (a list of dicts with a "state") and "restarts"."""

    def ready(self) -> bool: ...


def exposition(status: Mapping[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(status))
    data: bytes = generate_latest(registry)
    return data


class _Collector(Collector):
    def __init__(self, status: Mapping[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        status = self.status
        m = status["metrics"]
        requests = CounterMetricFamily(
            "catalyzer_requests", "Requests answered, by status class.", labels=["status"]
        )
        for cls, n in sorted(m["by_class"].items()):
            requests.add_metric([cls], n)
        yield requests
        cumulative = 0
        buckets = []
        for bound, n in zip((*BUCKETS, float("inf")), m["buckets"], strict=False):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "catalyzer_request_duration_seconds",
            "Time from a complete request to the end of its response.",
            buckets=buckets,
            sum_value=m["duration_sum"],
        )
        yield GaugeMetricFamily(
            "catalyzer_requests_in_flight",
            "Requests being answered now.",
            value=status["in_flight"],
        )
        yield GaugeMetricFamily(
            "catalyzer_open_connections",
            "Client connections open now.",
            value=status["connections"],
        )
        yield CounterMetricFamily(
            "catalyzer_received_bytes", "Bytes received from clients.", value=m["bytes_in"]
        )
        yield CounterMetricFamily(
            "catalyzer_sent_body_bytes",
            "Response body bytes sent to clients.",
            value=m["bytes_out"],
        )
        yield GaugeMetricFamily(
            "catalyzer_upload_progress_entries",
            "Uploads whose progress is being kept (--progress-path).",
            value=status.get("progress_entries", 0),
        )
        states = GaugeMetricFamily(
            "catalyzer_workers", "Worker processes by state.", labels=["state"]
        )
        counts: dict[str, int] = {"starting": 0, "ready": 0, "stopping": 0}
        for worker in status["workers"]:
            counts[worker["state"]] = counts.get(worker["state"], 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        restarts = CounterMetricFamily(
            "catalyzer_worker_restarts", "Workers replaced, by reason.", labels=["reason"]
        )
        for reason, n in sorted(status["restarts"].items()):
            restarts.add_metric([reason], n)
        yield restarts
        split = status.get("split")
        if split is not None:
            yield from _split_metrics(split)


def _split_metrics(split: Mapping[str, Any]) -> Iterable[Metric]:
    """A split-mode front's numbers (catalyzer.split.router.Router.status): per handler, the
    queue, and the router's counters by reason."""
    labels = ["host", "pid", "tag"]
    families = {
        key: GaugeMetricFamily(f"catalyzer_split_handler_{key}", text, labels=labels)
        for key, text in (
            ("slots", "Slots (app threads) of each connected handler."),
            ("prefetch", "Requests each handler may hold beyond its slots (--prefetch)."),
            ("weight", "Each handler's share of new work (its tag's weight; 0: none)."),
            ("credit", "Requests each handler may still be sent."),
            ("in_flight", "Requests at each handler now."),
            ("served", "Responses each handler completed this session."),
            ("redispatched", "Requests each handler gave back or lost unstarted."),
            ("errors", "Responses each handler cut or ended without an answer."),
        )
    }
    rtt = GaugeMetricFamily(
        "catalyzer_split_handler_rtt_seconds",
        "Round trip time to each handler (heartbeat stamps, smoothed), once measured.",
        labels=labels,
    )
    for row in split["handlers"]:
        values = [str(row["host"]), str(row["pid"]), str(row["tag"])]
        for key, family in families.items():
            family.add_metric(values, row[key])
        if row.get("rtt") is not None:
            rtt.add_metric(values, row["rtt"])
    yield from families.values()
    yield rtt
    yield GaugeMetricFamily(
        "catalyzer_split_queued", "Requests waiting for a handler's credit.", value=split["queued"]
    )
    if "buffered" in split:
        yield GaugeMetricFamily(
            "catalyzer_split_buffered_bytes",
            "Response bytes handlers may send that clients have not taken (all responses).",
            value=split["buffered"],
        )
        yield GaugeMetricFamily(
            "catalyzer_split_waiting_for_budget",
            "Responses whose window waits for the front-wide buffer budget.",
            value=split["waiting_for_budget"],
        )
    events = CounterMetricFamily(
        "catalyzer_split_events",
        "What the front's router did: dispatches, re-dispatches, timeouts, losses, by kind.",
        labels=["kind"],
    )
    for kind, n in sorted(split["counters"].items()):
        events.add_metric([kind], n)
    yield events


def make_status_app(source: StatusSource) -> Callable[[Environ, Any], list[bytes]]:
    def app(environ: Environ, start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/metrics":
            body = exposition(source.status())
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        elif path == "/status":
            body = json.dumps(source.status(), indent=2, default=str).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
        elif path == "/ready":
            ok = source.ready()
            body = b"ready\n" if ok else b"not ready\n"
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
        else:
            body = b"try /metrics, /status or /ready\n"
            start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [body]

    return app
