"""Fairness under mixed load in prefork mode (issue 10): a request stuck in the app on one worker
delays nobody else. Real ``--procs 2`` servers on 127.0.0.1, default settings (``threads 0``).

The slow request waits inside the app on a FIFO that only the test writes to, so "the slow
request is still running" is a fact the test controls, not a duration it measures: every fast
request below is answered before the test lets the slow one finish (a deadline only bounds the
failure: without the fix those requests would wait for the slow one, which never ends alone).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Launcher, ServerProcess
from tests.integration.test_stats import get

pytestmark = pytest.mark.integration

MODULE = "cz_fairness_app"
APP_SOURCE = """\
import os
import select
import time
from urllib.parse import parse_qsl

WAIT = 30.0  # bounded: a test that fails never writes the FIFO


def app(environ, start_response):
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    if environ["PATH_INFO"] == "/slow":
        fd = os.open(query["fifo"], os.O_RDONLY | os.O_NONBLOCK)
        try:
            environ["wsgi.errors"].write("slow-started " + query["token"] + "\\n")
            environ["wsgi.errors"].flush()
            deadline = time.monotonic() + WAIT
            while (left := deadline - time.monotonic()) > 0:
                if select.select([fd], [], [], left)[0] and os.read(fd, 1):
                    break
        finally:
            os.close(fd)
    body = ("pid=%d %s\\n" % (os.getpid(), environ.get("QUERY_STRING", ""))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
_PID = re.compile(rb"^pid=(\d+) (.*)\n$")
ANSWER_DEADLINE = 10.0  # socket timeout: only reached when a fast request is stuck


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    (tmp_path / f"{MODULE}.py").write_text(APP_SOURCE)
    launcher = Launcher("single", tmp_path)
    try:
        started = launcher(
            "--procs",
            "2",
            app=f"{MODULE}:app",
            env={"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        started.wait_ready(2)
        yield started
    finally:
        launcher.close()


def ask(conn: http.client.HTTPConnection, path: str = "/") -> int:
    """One keep-alive request: the pid of the worker that answered."""
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    assert not response.will_close, "the connection was closed"
    m = _PID.match(body)
    assert m is not None, body
    return int(m.group(1))


class SlowRequest:
    """``/slow`` sent on ``conn``; it stays in the app until :meth:`finish`."""

    def __init__(self, server: ServerProcess, conn: http.client.HTTPConnection, fifo: Path):
        self.fifo = fifo
        os.mkfifo(fifo)
        self.token = uuid.uuid4().hex[:12]
        self.conn = conn
        conn.request("GET", f"/slow?fifo={fifo}&token={self.token}")
        server.wait_for_log(rf"slow-started {self.token}$")

    def finish(self) -> int:
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO if the app stopped waiting
        try:
            os.write(fd, b"!")
        finally:
            os.close(fd)
        response = self.conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        m = _PID.match(body)
        assert m is not None, body
        return int(m.group(1))


def pinned_pair(server: ServerProcess) -> tuple[http.client.HTTPConnection, ...]:
    """Two keep-alive connections served by the same worker (with two workers, three
    connections always hold such a pair)."""
    seen: dict[int, http.client.HTTPConnection] = {}
    for _ in range(3):
        conn = server.connection(timeout=ANSWER_DEADLINE)
        pid = ask(conn)
        if pid in seen:
            return seen[pid], conn
        seen[pid] = conn
    raise AssertionError("three connections to two workers without two on one worker")


def test_keep_alive_requests_on_a_busy_workers_connection_are_answered_first(
    server: ServerProcess, tmp_path: Path
) -> None:
    slow_conn, fast_conn = pinned_pair(server)
    busy = ask(fast_conn)
    slow = SlowRequest(server, slow_conn, tmp_path / "fifo")
    # The slow request is in the app on `busy` and stays there: the fast connection's next
    # requests are answered all the same, by the other worker.
    answered_by = [ask(fast_conn) for _ in range(3)]
    assert busy not in answered_by
    assert len(set(answered_by)) == 1
    assert slow.finish() == busy
    assert ask(fast_conn) == answered_by[0]  # the connection stays where it went


def test_new_connections_go_to_the_idle_worker(server: ServerProcess, tmp_path: Path) -> None:
    conn = server.connection(timeout=ANSWER_DEADLINE)
    busy = ask(conn)
    slow = SlowRequest(server, conn, tmp_path / "fifo")
    for _ in range(6):  # as with Connection: close: one request per new connection
        fresh = server.connection(timeout=ANSWER_DEADLINE)
        try:
            assert ask(fresh) != busy
        finally:
            fresh.close()
    assert slow.finish() == busy


def test_pipelined_requests_behind_a_slow_one_move_together_in_order(
    server: ServerProcess, tmp_path: Path
) -> None:
    slow_conn, fast_conn = pinned_pair(server)
    busy = ask(fast_conn)
    slow = SlowRequest(server, slow_conn, tmp_path / "fifo")
    sock = fast_conn.sock
    assert sock is not None
    # Three requests in one write, while their worker is in the app: none of it is read there.
    sock.sendall(b"".join(b"GET /?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in (1, 2, 3)))
    answers = []
    with sock.makefile("rb") as responses:  # one buffer for the three answers
        for _ in range(3):
            status = responses.readline()
            assert status.startswith(b"HTTP/1.1 200 "), status
            length = 0
            while (line := responses.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = responses.read(length)
            m = _PID.match(body)
            assert m is not None, body
            answers.append((int(m.group(1)), m.group(2)))
    assert [query for _, query in answers] == [b"n=1", b"n=2", b"n=3"]
    assert busy not in {pid for pid, _ in answers}
    assert slow.finish() == busy


def test_connections_piled_on_one_worker_are_spread_once_they_are_busy(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Eight keep-alive connections opened while the other worker is in the app all land on one
    worker; once both workers are free and those connections are busy, the master has the
    loaded worker pass some of them to the idle one (balance-every), between requests: every
    request is answered on its own connection, in order."""
    slow_conn = server.connection(timeout=ANSWER_DEADLINE)
    busy = ask(slow_conn)
    slow = SlowRequest(server, slow_conn, tmp_path / "fifo")
    conns = [server.connection(timeout=ANSWER_DEADLINE) for _ in range(8)]
    loaded = {ask(conn) for conn in conns}
    assert busy not in loaded and len(loaded) == 1
    assert slow.finish() == busy

    moved = threading.Event()
    problems: list[str] = []
    deadline = time.monotonic() + 30.0  # bounds a failure only: the move comes within seconds

    def hammer(i: int, conn: http.client.HTTPConnection) -> None:
        n = 0
        try:
            while not moved.is_set() and time.monotonic() < deadline:
                n += 1
                conn.request("GET", f"/?c={i}&n={n}")
                response = conn.getresponse()
                body = response.read()
                m = _PID.match(body)
                if response.status != 200 or m is None or response.will_close:
                    problems.append(f"connection {i} request {n}: {response.status} {body!r}")
                    return
                if m.group(2) != f"c={i}&n={n}".encode():
                    problems.append(f"connection {i} request {n} got the answer {body!r}")
                    return
                if int(m.group(1)) == busy:
                    moved.set()
        except (OSError, http.client.HTTPException) as e:
            problems.append(f"connection {i} request {n}: {e!r}")

    threads = [threading.Thread(target=hammer, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert moved.is_set(), "no connection moved to the idle worker"
    # Every connection is still open and answered, wherever it is now.
    assert {ask(conn) for conn in conns} <= {busy, *loaded}


@pytest.fixture
def threaded(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """``--procs 2 --threads 1``, with ``--stats`` on a unix socket."""
    (tmp_path / f"{MODULE}.py").write_text(APP_SOURCE)
    stats = str(tmp_path / "stats.sock")
    launcher = Launcher("single", tmp_path)
    try:
        started = launcher(
            "--procs",
            "2",
            "--threads",
            "1",
            "--stats",
            f"unix:{stats}",
            app=f"{MODULE}:app",
            env={"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        started.wait_ready(2)
        yield started, stats
    finally:
        launcher.close()


def test_with_threads_a_worker_whose_threads_are_all_stuck_passes_its_connections_on(
    threaded: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    """``--threads 1``: the slow request holds the worker's only thread. A request that arrives
    before the worker knows is queued for that thread (the reactor reads it at once); once it
    does know (``/status`` shows it), its idle keep-alive connections' requests and new
    connections go to the other worker."""
    server, stats = threaded
    conns: dict[int, list[http.client.HTTPConnection]] = {}
    for _ in range(5):  # five connections to two workers: three on one of them
        conn = server.connection(timeout=ANSWER_DEADLINE)
        conns.setdefault(ask(conn), []).append(conn)
    busy, (slow_conn, queued_conn, fast_conn, *_) = next(
        (pid, group) for pid, group in conns.items() if len(group) >= 3
    )
    slow = SlowRequest(server, slow_conn, tmp_path / "fifo")
    queued_conn.request("GET", "/?queued")

    def stuck() -> float | None:
        code, body = get(stats, "/status")
        assert code == 200
        worker = next(w for w in json.loads(body)["workers"] if w["pid"] == busy)
        return float(worker["threads_stuck_since"]) or None

    server.wait_until(stuck, 10.0, "the busy worker's threads seen stuck")
    answered_by = [ask(fast_conn) for _ in range(3)]
    assert busy not in answered_by
    for _ in range(3):
        conn = server.connection(timeout=ANSWER_DEADLINE)
        assert ask(conn) != busy
        conn.close()
    assert slow.finish() == busy
    response = queued_conn.getresponse()
    assert response.status == 200 and response.read().startswith(b"pid=%d " % busy)
    server.wait_until(lambda: None if stuck() else True, 10.0, "the worker back to reading")
