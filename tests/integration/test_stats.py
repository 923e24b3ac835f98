"""--stats: /metrics counted while a load runs matches the requests sent; /status and /ready.
Real processes; the stats endpoint is a unix socket in the test's directory."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

LOAD = 120
DEADLINE = 15.0


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        self.sock = sock


def get(path: str, url: str) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def counter(metrics: bytes, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    m = re.search(pattern.encode(), metrics, re.M)
    assert m is not None, f"{name}{labels} missing from:\n{metrics.decode()}"
    return float(m.group(1))


def test_metrics_match_requests_sent(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    stats = str(tmp_path / "stats.sock")
    server = start_server("--stats", f"unix:{stats}", "--access-log", "off")
    failures: list[BaseException] = []

    def load() -> None:
        conn = server.connection()
        try:
            for i in range(LOAD):
                conn.request("GET", "/hello" if i % 4 else "/missing")
                conn.getresponse().read()
        except BaseException as e:  # reported by the test thread
            failures.append(e)
        finally:
            conn.close()

    thread = threading.Thread(target=load)
    thread.start()
    scraped_during = get(stats, "/metrics")  # scraping while the load runs works
    thread.join(timeout=60)
    assert not thread.is_alive() and not failures, failures
    assert scraped_during[0] == 200

    not_found = LOAD // 4
    expected = {"2xx": LOAD - not_found, "4xx": not_found}

    def settled() -> bytes | None:  # prefork workers report once a second
        status, body = get(stats, "/metrics")
        ok = status == 200 and all(
            counter(body, "catalyzer_requests_total", f'{{status="{cls}"}}') == n
            for cls, n in expected.items()
        )
        return body if ok else None

    metrics = server.wait_until(settled, DEADLINE, "the counters to match the requests sent")
    assert counter(metrics, "catalyzer_request_duration_seconds_count") == LOAD
    assert counter(metrics, "catalyzer_received_bytes_total") > 0
    assert counter(metrics, "catalyzer_workers", '{state="ready"}') == server.procs
    status, body = get(stats, "/status")
    assert status == 200
    data = json.loads(body)
    assert len(data["workers"]) == server.procs
    assert data["metrics"]["by_class"]["2xx"] == LOAD - not_found
    assert get(stats, "/ready")[0] == 200


def test_ready_fails_until_a_worker_is_ready(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    module = tmp_path / "slowstart.py"
    # The app imports slowly: the master (and its stats endpoint) is up well before any worker.
    module.write_text(
        "import time\ntime.sleep(3)\ndef app(e, s):\n    s('200 OK', [])\n    return [b'up']\n"
    )
    stats = str(tmp_path / "stats.sock")
    server = start_server(
        "--stats",
        f"unix:{stats}",
        "--procs",
        "2",
        app="slowstart:app",
        env={"PYTHONPATH": str(tmp_path)},
        wait=False,
    )

    def probe() -> int | None:
        try:
            return get(stats, "/ready")[0]
        except OSError:
            return None

    assert server.wait_until(probe, DEADLINE, "the stats endpoint to answer") == 503
    server.wait_until(lambda: probe() == 200 or None, DEADLINE, "/ready to turn 200")
