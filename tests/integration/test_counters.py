"""Prefork counters lose nothing: while workers are recycled by --max-requests, replaced by a HUP
reload and one is killed with SIGKILL between requests, /metrics counts exactly the requests the
client saw answered. Real processes; the stats endpoint is a unix socket in the test's
directory."""

from __future__ import annotations

import http.client
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Launcher, ServerProcess, pid_alive
from tests.integration.test_stats import counter, get

pytestmark = pytest.mark.integration

MAX_REQUESTS = 25
PER_CONNECTION = 10  # a new connection now and then: SO_REUSEPORT spreads them over the workers
DEADLINE = 30.0


class Client:
    """Sequential keep-alive requests; a connection the server closed between two requests is
    replaced, and the request (which the server never read) sent again. Counts what was
    answered, by status class."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.conn: http.client.HTTPConnection | None = None
        self.on_conn = 0
        self.answered: Counter[str] = Counter()
        self.refused = 0  # bad requests the server answered itself (not the app)
        self.reconnects = 0

    def send(self, n: int) -> None:
        for i in range(n):
            self._one("/hello" if i % 5 else "/missing")

    def _one(self, path: str) -> None:
        for _ in range(5):
            if self.conn is None or self.on_conn >= PER_CONNECTION:
                self.close()
                self.conn = self.server.connection()
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.close()
                self.reconnects += 1
                continue
            self.on_conn += 1
            self.answered[f"{response.status // 100}xx"] += 1
            if response.will_close:
                self.close()
            return
        pytest.fail(f"GET {path} failed five times in a row\n{self.server.log()}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.on_conn = 0

    @property
    def total(self) -> int:
        return sum(self.answered.values())


def status_of(stats: str) -> dict[str, Any]:
    code, body = get(stats, "/status")
    assert code == 200
    data: dict[str, Any] = json.loads(body)
    return data


def counted(stats: str) -> dict[str, float]:
    """What /metrics and /status count: responses by class, histogram count, requests."""
    code, metrics = get(stats, "/metrics")
    assert code == 200
    seen = {
        cls: counter(metrics, "catalyzer_requests_total", f'{{status="{cls}"}}')
        for cls in ("2xx", "4xx", "5xx")
    }
    seen["histogram"] = counter(metrics, "catalyzer_request_duration_seconds_count")
    data = status_of(stats)
    seen["requests"] = data["requests"]
    seen["status_histogram"] = data["metrics"]["duration_count"]
    return seen


def expected(client: Client) -> dict[str, float]:
    return {
        **{cls: client.answered[cls] for cls in ("2xx", "4xx", "5xx")},
        "histogram": client.total,
        "requests": client.total - client.refused,
        "status_histogram": client.total,
    }


def assert_counted(server: ServerProcess, stats: str, client: Client) -> None:
    """The counters reach exactly what the client saw answered, and never pass it. (A worker
    counts a response just after handing its last bytes to the kernel, so a read can come a
    few microseconds early: it is repeated until it matches, within a deadline.)"""
    want = expected(client)

    def matches() -> bool | None:
        seen = counted(stats)
        over = {k: (v, want[k]) for k, v in seen.items() if v > want[k]}
        assert not over, f"counted more than answered: {over} (reconnects {client.reconnects})"
        return True if seen == want else None

    server.wait_until(matches, DEADLINE, f"the counters to reach {want}")


def test_counters_survive_recycles_reloads_and_kill_9(tmp_path: Path) -> None:
    stats = str(tmp_path / "stats.sock")
    launcher = Launcher("single", tmp_path)  # "single" adds no arguments: --procs comes from here
    try:
        server = launcher(
            "--procs",
            "2",
            "--max-requests",
            str(MAX_REQUESTS),
            "--stats",
            f"unix:{stats}",
            "--access-log",
            "off",
        )
        client = Client(server)

        def workers_settled(generation: int) -> list[dict[str, Any]] | None:
            data = status_of(stats)
            workers = data["workers"]
            settled = data["generation"] >= generation and all(
                w["state"] == "ready" and w["generation"] == data["generation"] for w in workers
            )
            return workers if settled and len(workers) == 2 else None

        def exits_reported(alive: int) -> list[int] | None:
            """The pids of the ``alive`` workers left once every other worker that was ever
            ready has exited and the master has said so: read from the log and /proc, not from
            /status, which would read the counters of the workers still alive."""
            pids = server.worker_pids()
            live = [pid for pid in pids if pid_alive(pid)]
            log = server.log()
            gone = [pid for pid in pids if pid not in live]
            reported = all(
                f"(pid {pid}) exited" in log or f"(pid {pid}) died" in log for pid in gone
            )
            return live if len(live) == alive and gone and reported else None

        # 1. max-requests: workers retire after 25 requests each and are replaced. The counters
        # are first read once some of them have exited: what they answered is only in their
        # final counts.
        client.send(120)
        client.close()
        server.wait_until(lambda: exits_reported(2), DEADLINE, "recycled workers to exit")
        assert_counted(server, stats, client)

        # 2. kill -9 a worker between requests, by pid, one the master lists as its own, right
        # after it answered: the last answer is a 400 for a bad request, which the server counts
        # before sending, so every earlier one is counted too.
        workers = server.wait_until(lambda: workers_settled(1), DEADLINE, "2 ready workers")
        victim = int(min(workers, key=lambda w: int(w["requests"]))["pid"])
        assert victim in server.worker_pids()  # reported ready by this master: its child
        conn = None
        for _ in range(100):  # SO_REUSEPORT picks the worker: connect until it is the victim
            conn = server.connection()
            conn.request("GET", "/echo")
            pid = json.loads(conn.getresponse().read())["pid"]
            client.answered["2xx"] += 1
            if pid == victim:
                break
            conn.close()
        else:
            pytest.fail(f"no connection reached worker pid {victim}")
        assert conn is not None and conn.sock is not None
        for _ in range(5):
            conn.request("GET", "/hello")
            assert conn.getresponse().read() == b"hello\n"
            client.answered["2xx"] += 1
        conn.sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := conn.sock.recv(4096):
            answer += chunk
        conn.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        client.answered["4xx"] += 1
        client.refused += 1
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(rf"\(pid {victim}\) died unexpectedly \(signal 9\)", DEADLINE)
        assert counted(stats) == expected(client)  # nothing it had answered is missing

        # 3. HUP: a new generation while requests keep coming; read once the old one is gone.
        ready_before = len(server.worker_pids())
        client.send(40)
        server.send_signal(signal.SIGHUP)
        client.send(80)
        client.close()
        server.wait_ready(ready_before + 2, DEADLINE)
        server.wait_until(lambda: exits_reported(2), DEADLINE, "the old generation to exit")
        assert_counted(server, stats, client)
        server.wait_until(lambda: workers_settled(2), DEADLINE, "generation 2 ready")
        client.send(60)
        client.close()
        assert_counted(server, stats, client)

        metrics = get(stats, "/metrics")[1]
        restarts = {
            reason: counter(metrics, "catalyzer_worker_restarts_total", f'{{reason="{reason}"}}')
            for reason in ("max-requests", "crashed", "reload")
        }
        assert restarts["max-requests"] >= 2, restarts
        assert restarts["crashed"] >= 1 and restarts["reload"] >= 1, restarts
        assert status_of(stats)["workers_retired"] >= sum(restarts.values())
        assert client.total >= 300 + 7
    finally:
        launcher.close()
