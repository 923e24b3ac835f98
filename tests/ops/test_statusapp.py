"""The --stats app: Prometheus text from catalyzer's own numbers, JSON status, readiness."""

from __future__ import annotations

import json
from typing import Any

from catalyzer.ops.metrics import RequestMetrics, merge
from catalyzer.ops.statusapp import exposition, make_status_app
from catalyzer.testing import InMemoryServer
from tests.helpers import split_response


def status(ready: bool = True) -> dict[str, Any]:
    a, b = RequestMetrics(), RequestMetrics()
    a.observe(200, 0.003, 10)
    a.observe(404, 0.2, 5)
    b.observe(503, 20.0, 0)
    b.received(99)
    return {
        "metrics": merge([a.snapshot(), b.snapshot()]),
        "in_flight": 1,
        "connections": 4,
        "workers": [{"state": "ready"}, {"state": "starting"}],
        "restarts": {"crashed": 2},
        "progress_entries": 3,
    }


def test_exposition_has_every_family() -> None:
    text = exposition(status()).decode()
    for line in [
        'catalyzer_requests_total{status="2xx"} 1.0',
        'catalyzer_requests_total{status="4xx"} 1.0',
        'catalyzer_requests_total{status="5xx"} 1.0',
        'catalyzer_request_duration_seconds_bucket{le="0.005"} 1.0',
        'catalyzer_request_duration_seconds_bucket{le="0.25"} 2.0',
        'catalyzer_request_duration_seconds_bucket{le="+Inf"} 3.0',
        "catalyzer_request_duration_seconds_count 3.0",
        "catalyzer_requests_in_flight 1.0",
        "catalyzer_open_connections 4.0",
        "catalyzer_received_bytes_total 99.0",
        "catalyzer_sent_body_bytes_total 15.0",
        'catalyzer_workers{state="ready"} 1.0',
        'catalyzer_workers{state="starting"} 1.0',
        'catalyzer_worker_restarts_total{reason="crashed"} 2.0',
        "catalyzer_upload_progress_entries 3.0",
    ]:
        assert line in text, line


class Source:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def status(self) -> dict[str, Any]:
        return status()

    def ready(self) -> bool:
        return self._ready


def get(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    server = InMemoryServer(app)
    return split_response(server.request(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode()))


def test_routes() -> None:
    app = make_status_app(Source(ready=True))
    code, headers, body = get(app, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=")
    code, headers, body = get(app, "/status")
    assert code == 200 and json.loads(body)["connections"] == 4
    assert get(app, "/ready")[0] == 200
    assert get(make_status_app(Source(ready=False)), "/ready")[0] == 503
    assert get(app, "/nope")[0] == 404
