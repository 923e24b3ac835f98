"""Prefork mode (``--procs N``): a master supervising worker processes, with real processes on
127.0.0.1.

The served application is a module written into the test's ``tmp_path`` (on ``PYTHONPATH``), so a
test can change its code and send HUP. Its responses say which text (code version) and which worker
pid answered. "Under load" means a :class:`Load` thread sending keep-alive requests in a bounded
loop over a few connections and recording every outcome.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import (
    LOCAL_TCP,
    POLL,
    Launcher,
    ServerProcess,
    pid_alive,
    proc_title,
    run_cli,
)

pytestmark = pytest.mark.integration

MODULE = "cz_prefork_app"
APP = f"{MODULE}:app"

# The served application. ``{text!r}`` is the code version a test rewrites before HUP.
APP_SOURCE = """\
import os
import time
from urllib.parse import parse_qsl

TEXT = {text!r}


def _mark(environ, text):
    environ["wsgi.errors"].write(text + "\\n")
    environ["wsgi.errors"].flush()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    if path == "/slow":
        _mark(environ, "slow-started " + query["token"])
        time.sleep(float(query.get("seconds", "2")))
    elif path == "/hang":
        _mark(environ, "hang-started " + query["token"])
        time.sleep(30)  # the hung request
    body = ("%s pid=%d\\n" % (TEXT, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
HANG_LINE = APP_SOURCE.splitlines().index("        time.sleep(30)  # the hung request") + 1

_BODY = re.compile(r"^(?P<text>.*) pid=(?P<pid>\d+)\n$")

REPLACE = 15.0  # a worker replaced: exit noticed, new interpreter started and ready
EXIT = 10.0  # a master that should exit on its own
LOAD_TIMEOUT = 10.0  # socket timeout of the load's connections


def token() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class AppModule:
    path: Path

    def write(self, text: str) -> None:
        self.path.write_text(APP_SOURCE.format(text=text))

    def break_it(self) -> None:
        self.path.write_text("def app(:\n    pass\n")

    @property
    def env(self) -> dict[str, str]:
        # No .pyc: a rewrite within the same second, of the same size, must still be seen.
        return {"PYTHONPATH": str(self.path.parent), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def app_module(tmp_path: Path) -> AppModule:
    module = AppModule(tmp_path / f"{MODULE}.py")
    module.write("v1")
    return module


@pytest.fixture
def prefork(tmp_path: Path, app_module: AppModule) -> Iterator[Callable[..., ServerProcess]]:
    """Start a ``--procs 2`` server on the test's app module, with more arguments if given. It
    returns once both workers are ready."""
    launcher = Launcher("single", tmp_path)  # "single" adds no arguments: --procs comes from here

    def start(*args: str) -> ServerProcess:
        return launcher("--procs", "2", *args, app=APP, env=app_module.env)

    try:
        yield start
    finally:
        launcher.close()


def parse(body: bytes) -> tuple[str, int]:
    m = _BODY.match(body.decode("utf-8", "replace"))
    assert m is not None, body
    return m.group("text"), int(m.group("pid"))


def get(server: ServerProcess, path: str = "/") -> tuple[int, str, int]:
    status, _, body = server.request("GET", path)
    text, pid = parse(body)
    return status, text, pid


def wait_gone(server: ServerProcess, pids: Sequence[int], deadline: float) -> None:
    """Poll until none of ``pids`` runs any more (the master may have exited already)."""
    end = time.monotonic() + deadline
    while alive := [p for p in pids if pid_alive(p)]:
        if time.monotonic() > end:
            pytest.fail(f"pids {alive} still running after {deadline:g}s\n{server.log()}")
        time.sleep(POLL)  # the polling interval: the condition is checked again


# -- load


@dataclass
class Outcome:
    at: float  # time.monotonic() when the request ended
    slot: int
    pid: int | None  # the worker that answered (or, for a failure, last answered on the conn)
    text: str = ""
    error: str = ""
    opened: float = 0.0  # when the connection it was sent on was opened
    sent: float = 0.0  # time.monotonic() when the request (or its retry) was sent


@dataclass
class Slot:
    index: int
    conn: http.client.HTTPConnection | None = None
    pid: int | None = None  # the worker serving this connection, once known
    used: int = 0  # responses received on this connection
    opened_at: float = 0.0


RETRYABLE = (
    http.client.RemoteDisconnected,  # closed before any byte of the status line
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


@dataclass
class Load:
    """A thread sending ``GET path`` round-robin over ``connections`` keep-alive connections, at
    most ``limit`` requests. Every outcome is recorded. A request that fails with a connection
    error on a reused keep-alive connection before any response byte is retried once on a new
    connection (RFC 9112 9.3.1), and counted in ``retries``."""

    port: int
    connections: int = 4
    path: str = "/"
    limit: int = 20000
    successes: list[Outcome] = field(default_factory=list)
    failures: list[Outcome] = field(default_factory=list)
    retries: list[Outcome] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._t0 = time.monotonic()
        if not self.slots:
            self.slots = [Slot(i) for i in range(self.connections)]

    # -- control

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self, deadline: float = LOAD_TIMEOUT + 5) -> None:
        self._stop.set()
        self._thread.join(deadline)
        assert not self._thread.is_alive(), "the load thread did not stop"
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def count(self) -> int:
        with self._lock:
            return len(self.successes) + len(self.failures)

    def since(self, start: float) -> list[Outcome]:
        """The successes of requests sent at ``start`` or later. Not those that ended then:
        a response a worker wrote just before it exited may be read after ``start``."""
        with self._lock:
            return [o for o in self.successes if o.sent >= start]

    def wait_for(self, n: int, server: ServerProcess, deadline: float = 20.0) -> None:
        """Wait until ``n`` more requests have ended (or the loop has finished)."""
        target = self.count() + n
        server.wait_until(
            lambda: True if self.count() >= target or self.done() else None,
            deadline,
            f"{n} more requests from the load",
        )

    def summary(self) -> str:
        with self._lock:
            failures = "\n".join(
                f"  +{o.at - self._t0:.3f}s conn {o.slot} (worker {o.pid}): {o.error}"
                for o in self.failures[:20]
            )
            retries = "\n".join(
                f"  +{o.at - self._t0:.3f}s conn {o.slot} (worker {o.pid}): {o.error}"
                for o in self.retries[:20]
            )
            by_pid = Counter(o.pid for o in self.successes)
            return (
                f"{len(self.successes)} ok {dict(by_pid)}, {len(self.failures)} failed, "
                f"{len(self.retries)} retried on a new connection\n"
                f"failures:\n{failures or '  none'}\nretries:\n{retries or '  none'}"
            )

    # -- the thread

    def _run(self) -> None:
        for i in range(self.limit):
            if self._stop.is_set():
                break
            self._one(self.slots[i % len(self.slots)])

    def _open(self, slot: Slot) -> http.client.HTTPConnection:
        if slot.conn is not None:
            slot.conn.close()
        slot.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=LOAD_TIMEOUT)
        slot.pid = None
        slot.used = 0
        slot.opened_at = time.monotonic()
        return slot.conn

    def _one(self, slot: Slot) -> None:
        conn = slot.conn or self._open(slot)
        reused = slot.used > 0
        sent = time.monotonic()
        try:
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
            except RETRYABLE as e:
                if not reused:
                    raise
                with self._lock:
                    self.retries.append(
                        Outcome(time.monotonic(), slot.index, slot.pid, "", repr(e), slot.opened_at)
                    )
                conn = self._open(slot)
                sent = time.monotonic()
                conn.request("GET", self.path)
                response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as e:
            with self._lock:
                self.failures.append(
                    Outcome(time.monotonic(), slot.index, slot.pid, "", repr(e), slot.opened_at)
                )
            conn.close()
            slot.conn = None
            return
        m = _BODY.match(body.decode("utf-8", "replace"))
        outcome = Outcome(
            time.monotonic(),
            slot.index,
            int(m.group("pid")) if m else slot.pid,
            m.group("text") if m else "",
            opened=slot.opened_at,
            sent=sent,
        )
        if response.status != 200 or m is None:
            outcome.error = f"status {response.status}: {body[:200]!r}"
            with self._lock:
                self.failures.append(outcome)
            conn.close()
            slot.conn = None
            return
        slot.pid = outcome.pid
        slot.used += 1
        with self._lock:
            self.successes.append(outcome)
        if response.will_close:
            conn.close()
            slot.conn = None


@contextlib.contextmanager
def load(server: ServerProcess, **kwargs: object) -> Iterator[Load]:
    """A running :class:`Load` on ``server`` that has already had a few successes."""
    running = Load(server.port, **kwargs).start()  # type: ignore[arg-type]
    try:
        running.wait_for(10, server)
        yield running
    finally:
        running.stop()


def connections_to_each(server: ServerProcess, pids: Sequence[int], per_worker: int) -> list[Slot]:
    """Keep-alive connections, ``per_worker`` of them to each of ``pids``: connect, ask which
    worker answers, keep or drop (bounded number of attempts)."""
    kept: dict[int, list[Slot]] = {pid: [] for pid in pids}
    for _ in range(100):
        if all(len(v) >= per_worker for v in kept.values()):
            break
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=LOAD_TIMEOUT)
        opened = time.monotonic()
        conn.request("GET", "/")
        response = conn.getresponse()
        _, pid = parse(response.read())
        if pid in kept and len(kept[pid]) < per_worker:
            kept[pid].append(Slot(0, conn, pid, 1, opened))
        else:
            conn.close()
    else:
        pytest.fail(f"could not get {per_worker} connections to each worker: {kept}")
    slots = [s for v in kept.values() for s in v]
    for i, slot in enumerate(slots):
        slot.index = i
    return slots


# -- tests


def test_process_titles(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork()
    assert proc_title(server.pid) == f"catalyzer master [{APP}]"
    for slot, pid in server.ready_workers():
        assert proc_title(pid) == f"catalyzer worker {slot} [{APP}]"


def test_kill_9_one_worker_under_load(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork()
    (slot_a, victim), (_, survivor) = server.ready_workers()
    running = Load(server.port, slots=connections_to_each(server, [victim, survivor], 3)).start()
    try:
        running.wait_for(30, server)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        server.wait_for_log(
            rf"worker {slot_a} \(pid {victim}\) died unexpectedly \(signal 9\)", REPLACE
        )
        ready = server.wait_ready(3, REPLACE)
        replacement = ready[2][1]
        ready_at = time.monotonic()
        assert replacement not in (victim, survivor)
        running.wait_for(100, server)
    finally:
        running.stop()
    summary = running.summary()
    print(summary)
    # The connections to the other worker never noticed.
    assert not [o for o in running.failures + running.retries if o.pid == survivor], summary
    # A failure is only allowed on a connection the dead worker held (or one opened before it was
    # killed, which it may have accepted before answering anything).
    assert all(
        o.pid == victim or (o.pid is None and o.opened < killed_at) for o in running.failures
    ), summary
    assert not [o for o in running.failures if o.at > ready_at], summary
    assert {o.pid for o in running.since(ready_at)} <= {survivor, replacement}, summary
    # Afterwards both workers serve new connections. One is held in a slow call so that the
    # other must take the next connection: with EPOLLEXCLUSIVE the kernel hands a sequential
    # client's connections to whichever idle worker waits first, so a loop of requests could
    # meet the survivor every time.
    tag = token()
    conn = server.connection()
    try:
        conn.request("GET", f"/slow?seconds=5&token={tag}")  # time enough on a loaded machine
        server.wait_for_log(rf"slow-started {tag}$")
        status, _, pid = get(server)
        response = conn.getresponse()
        _, slow_pid = parse(response.read())
    finally:
        conn.close()
    assert (status, response.status) == (200, 200)
    assert {pid, slow_pid} == {survivor, replacement}, (pid, slow_pid, survivor, replacement)
    assert server.proc.poll() is None


def test_hup_under_load_switches_code_without_errors(
    prefork: Callable[..., ServerProcess], app_module: AppModule
) -> None:
    server = prefork()
    old = server.worker_pids()
    with load(server) as running:
        assert {o.text for o in running.successes} == {"v1"}
        app_module.write("v2")
        server.send_signal(signal.SIGHUP)
        server.wait_for_log(r"generation 2 ready: retiring 1$", REPLACE)
        wait_gone(server, old, EXIT)
        switched = time.monotonic()
        running.wait_for(50, server)
    summary = running.summary()
    print(summary)
    assert not running.failures, summary
    after = running.since(switched)
    assert after, summary
    assert {o.text for o in after} == {"v2"}, summary
    new = server.worker_pids()[2:]
    assert {o.pid for o in after} <= set(new), summary
    assert get(server)[:2] == (200, "v2")


def test_hup_with_broken_code_keeps_old_generation(
    prefork: Callable[..., ServerProcess], app_module: AppModule
) -> None:
    server = prefork()
    old = server.worker_pids()
    with load(server) as running:
        app_module.break_it()
        server.send_signal(signal.SIGHUP)
        server.wait_for_log(r"reload failed: worker \d of generation 2 did not boot", REPLACE)
        failed_at = time.monotonic()
        running.wait_for(50, server)
        assert all(pid_alive(pid) for pid in old), server.log()
        assert {o.text for o in running.since(failed_at)} == {"v1"}
        assert {o.pid for o in running.since(failed_at)} <= set(old)
        # Fixed: the next HUP brings the new code in.
        app_module.write("v2")
        server.send_signal(signal.SIGHUP)
        server.wait_for_log(r"generation 2 ready: retiring 1$", REPLACE)
        wait_gone(server, old, EXIT)
        switched = time.monotonic()
        running.wait_for(50, server)
    summary = running.summary()
    print(summary)
    log = server.log()
    assert "SyntaxError" in log, log
    assert not running.failures, summary
    assert {o.text for o in running.since(switched)} == {"v2"}, summary
    assert get(server)[:2] == (200, "v2")


@pytest.mark.parametrize("threads", ["0", "2"])
def test_term_finishes_request_in_flight(
    prefork: Callable[..., ServerProcess], threads: str
) -> None:
    server = prefork("--threads", threads)
    workers = server.worker_pids()
    tag = token()
    conn = server.connection()
    try:
        conn.request("GET", f"/slow?seconds=2&token={tag}")
        server.wait_for_log(rf"slow-started {tag}$")
        server.send_signal(signal.SIGTERM)
        response = conn.getresponse()
        text, _ = parse(response.read())
    finally:
        conn.close()
    assert (response.status, text) == (200, "v1")
    if threads != "0":
        # The worker learnt of the stop while the app ran: the response is the last (issue 15).
        assert response.headers["Connection"] == "close"
    assert server.wait_exit(EXIT) == 0, server.log()
    assert not [pid for pid in workers if pid_alive(pid)], server.log()


def test_term_cuts_hung_request_after_die_timeout(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork("--die-timeout", "1")
    workers = server.worker_pids()
    tag = token()
    conn = server.connection()
    try:
        conn.request("GET", f"/hang?token={tag}")
        server.wait_for_log(rf"hang-started {tag}$")
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        status = server.wait_exit(1 + 5)
        took = time.monotonic() - started
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()
    assert status == 1, server.log()
    assert took < 1 + 3, f"{took:.1f}s\n{server.log()}"
    assert "did not exit in time: killing it" in server.log()
    wait_gone(server, workers, 2.0)


def test_max_requests_recycles_workers_under_load(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork("--max-requests", "50", "--max-requests-jitter", "10", "--access-log", "off")
    first = server.worker_pids()
    # Bounded by the default limit, not 3,000: a retiring worker serves its keep-alive
    # connections until its replacement is ready, and on a loaded machine that took all 3,000
    # (one worker answered every request, and the second replacement never came).
    running = Load(server.port, connections=4).start()
    try:
        # Each worker retires after 50..60 requests: wait until at least two were replaced.
        server.wait_ready(4, 30.0)
        # Then at least 100 more, and 200 in all, across the replacements.
        running.wait_for(max(100, 200 - running.count()), server)
    finally:
        running.stop()
    summary = running.summary()
    print(summary)
    log = server.log()
    assert len(re.findall(r"max-requests; starting its replacement$", log, re.M)) >= 2, log
    pids = server.worker_pids()
    assert len(set(pids)) == len(pids) >= 4
    assert set(pids[2:]).isdisjoint(first)
    assert running.count() >= 200, summary
    assert not running.failures, summary
    assert get(server)[0] == 200


@pytest.mark.parametrize("threads", ["0", "2"])
def test_timeout_dumps_stack_and_replaces_worker(
    prefork: Callable[..., ServerProcess], app_module: AppModule, threads: str
) -> None:
    # A short die-timeout keeps teardown quick if the hung request is still there.
    server = prefork("--timeout", "1", "--threads", threads, "--die-timeout", "1")
    tag = token()
    conn = server.connection()
    try:
        conn.request("GET", f"/hang?token={tag}")
        m = server.wait_for_log(rf"\[worker (\d+) pid (\d+)\] .*hang-started {tag}$")
        slot, pid = m.group(1), m.group(2)
        server.wait_for_log(
            rf"worker {slot} \(pid {pid}\) has spent [\d.]+s in the app on "
            rf"GET /hang\?token={tag} \(timeout 1s\)",
            5.0,
        )
        # faulthandler's dump, as the worker's log lines: the app's file and line.
        stack = rf'\[worker {slot} pid {pid}\]\s+File "{re.escape(str(app_module.path))}", line '
        server.wait_for_log(rf"{stack}{HANG_LINE} in app$", 5.0)
        server.wait_ready(3, REPLACE)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()
    assert not pid_alive(int(pid))
    status, text, _ = get(server)
    assert (status, text) == (200, "v1")


@pytest.mark.parametrize("case", ["missing-module", "module-raises"])
def test_app_that_cannot_be_imported(tmp_path: Path, case: str) -> None:
    (tmp_path / "cz_prefork_raising.py").write_text(
        'raise RuntimeError("cz_prefork_raising refuses to load")\n'
    )
    app, error = {
        "missing-module": ("cz_prefork_nosuchmodule:app", "no module named"),
        "module-raises": (
            "cz_prefork_raising:app",
            "RuntimeError: cz_prefork_raising refuses to load",
        ),
    }[case]
    started = time.monotonic()
    result = run_cli(
        "--app",
        app,
        "--listen",
        LOCAL_TCP,
        "--procs",
        "2",
        env={"PYTHONPATH": str(tmp_path)},
        deadline=15.0,
    )
    took = time.monotonic() - started
    out = f"status {result.returncode}\n--- stderr ---\n{result.stderr}--- stdout ---\n{result.stdout}"
    assert result.returncode == 3, out
    assert took < 10.0, f"{took:.1f}s\n{out}"
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("catalyzer:"), out
    assert "failed to boot" in lines[0], out
    assert result.stderr.count(error) == 1, out
    if case == "module-raises":
        assert result.stderr.count("Traceback (most recent call last)") == 1, out
        assert lines[-1] == error, out
    assert sum(1 for line in lines if line.startswith("catalyzer:")) == 1, out


def test_ttin_then_ttou(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork()
    server.send_signal(signal.SIGTTIN)
    server.wait_for_log(r"workers: 2 -> 3$")
    ready = server.wait_ready(3, REPLACE)
    slot, third = ready[2]
    assert slot == 2
    assert proc_title(third) == f"catalyzer worker 2 [{APP}]"
    server.send_signal(signal.SIGTTOU)
    server.wait_for_log(r"workers: 3 -> 2$")
    wait_gone(server, [third], EXIT)
    assert all(pid_alive(pid) for pid in server.worker_pids()[:2])
    assert get(server)[0] == 200
    assert server.proc.poll() is None
    assert len(server.ready_workers()) == 3, server.log()  # nothing was respawned


def test_usr1_dumps_state(prefork: Callable[..., ServerProcess]) -> None:
    server = prefork()
    pids = server.worker_pids()
    conn = server.connection()
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        _, serving = parse(response.read())
        assert conn.sock is not None
        local_port = conn.sock.getsockname()[1]
        server.send_signal(signal.SIGUSR1)
        server.wait_for_log(rf"state of master pid {server.pid}: generation 1, 2 workers")
        for pid in pids:
            # The master's table ...
            server.wait_for_log(rf"^\s+worker \d pid {pid} gen 1 ready up \d+s, ")
            # ... and the worker's own view, over its control channel.
            server.wait_for_log(rf"worker \d pid {pid} generation 1: \d+ requests, \d connections")
        # The worker holding our idle keep-alive connection lists it.
        server.wait_for_log(rf"127\.0\.0\.1:{local_port}: idle; 1 requests")
    finally:
        conn.close()
    assert serving in pids


# With --reuse-port each TCP connection lands on a worker by the kernel's hash: a binomial split,
# where with 100 connections a 2:1 imbalance (67 or more on one worker) happens about once in
# 1,500 runs. By default both workers accept from one shared socket, one connection per wake-up,
# so a burst alternates between the workers awake (200:200 on an idle machine); on a loaded one a
# worker that is not scheduled takes fewer, so the bound there is 3:1 (taking every queued
# connection at each wake-up, as Twisted does by itself, gave up to 19:1).
SPREAD_CONNECTIONS = 100
SPREAD_REQUESTS = 4


@pytest.mark.parametrize(("args", "least"), [((), 1 / 4), (("--reuse-port",), 1 / 3)])
def test_requests_spread_over_workers(
    prefork: Callable[..., ServerProcess], args: tuple[str, ...], least: float
) -> None:
    server = prefork("--access-log", "off", *args)
    pids = server.worker_pids()
    conns = [server.connection() for _ in range(SPREAD_CONNECTIONS)]
    served: Counter[int] = Counter()
    try:
        for conn in conns:
            conn.connect()
        for _ in range(SPREAD_REQUESTS):
            for conn in conns:
                conn.request("GET", "/")
                response = conn.getresponse()
                assert response.status == 200
                served[parse(response.read())[1]] += 1
    finally:
        for conn in conns:
            conn.close()
    total = SPREAD_CONNECTIONS * SPREAD_REQUESTS
    assert sum(served.values()) == total, served
    counts = [served[pid] for pid in pids]
    print(f"requests per worker: {counts}")
    assert min(counts) >= int(total * least), f"requests per worker: {counts}"


def test_master_exit_leaves_no_worker(prefork: Callable[..., ServerProcess]) -> None:
    """SIGINT: a quick stop ends the master and every worker."""
    server = prefork()
    workers = server.worker_pids()
    server.send_signal(signal.SIGINT)
    assert server.wait_exit(EXIT) == 0, server.log()
    wait_gone(server, workers, 2.0)
