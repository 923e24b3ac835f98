"""The benchmark suite: catalyzer against other WSGI servers, driven by wrk.

    .venv/bin/python bench/run.py [--runs N] [--duration SECONDS | --quick] [--wrk-threads N]
                                  [--only NAME[,NAME...]] [--doc [PATH]] [--render RESULTS.json]

Every server runs as a subprocess on 127.0.0.1 on a free port, configured as its users run it:
access logs off where the server can turn them off, twistd web logging to a file in the run's
log directory. Each (scenario, server) is measured ``--runs`` times (default 3), interleaved:
round 1 measures every server of the scenario once, then round 2, and so on. One measurement:
start the server, poll until it answers, check its answer, run wrk while sampling the RSS of the
server's process tree every 100 ms, stop the server by PID. Raw results, every run's included,
go to ``bench/results/`` as JSON and server logs to ``bench/results/logs/RUN_ID/``;
``docs/benchmarks.md`` is rendered from that JSON with the median and every run's figure (a run
restricted with ``--only`` writes the doc only when ``--doc`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import json
import math
import os
import platform
import re
import select
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import large_rss, prefork, procs, stream_rss

BENCH = procs.ROOT / "bench"
RESULTS = BENCH / "results"
# A full run's results, kept in the repository so the page can be rendered again (--render).
OFFICIAL = BENCH / "official"
DOC = procs.ROOT / "docs" / "benchmarks.md"
# Sections of DOC written by other scripts, kept when this one rewrites the rest.
KEPT_SECTIONS = ("## Task dispatch (bench/dispatch.py)",)
POST_SCRIPT = "bench/post1m.lua"  # wrk runs in the repository root
BIN = procs.VENV_BIN

WRK_THREADS = 2  # default of --wrk-threads
RUNS = 3  # default of --runs
DURATION = 8  # seconds per measurement, default of --duration
QUICK_DURATION = 3  # with --quick
SLOW_CLIENTS = 300
SLOW_TRICKLE_SECONDS = 2.0  # one more header byte per slow client this often
SLOW_HEADER_TIMEOUT = 60  # seconds, for servers that bound header reception by default
SLOW_PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\nX-a: "

# -- servers

# (app, port, scenario, logfile) -> argv. ``logfile`` is a file in the run's log directory for a
# server that has to log its requests somewhere (twistd web); the others log none.
ArgvFactory = Callable[[str, int, str, Path], list[str]]


def _catalyzer(app: str, port: int, scenario: str, logfile: Path) -> list[str]:
    argv = [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        f"bench.apps:{app}",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--access-log",
        "off",
    ]
    if app == "sleep50":
        argv += ["--threads", "8"]
    if scenario == "slow_clients":
        argv += ["--header-timeout", str(SLOW_HEADER_TIMEOUT)]
    return argv


def _gunicorn(worker_class: str) -> ArgvFactory:
    def argv(app: str, port: int, scenario: str, logfile: Path) -> list[str]:
        # gunicorn writes no access log unless --access-logfile is given.
        args = [
            str(BIN / "gunicorn"),
            "--bind",
            f"{procs.HOST}:{port}",
            "--workers",
            "2",
            "--worker-class",
            worker_class,
        ]
        if worker_class == "gthread":
            args += ["--threads", "4"]
        return [*args, f"bench.apps:{app}"]

    return argv


def _waitress(app: str, port: int, scenario: str, logfile: Path) -> list[str]:
    # waitress has no access log; its default is 4 threads and a 120 s channel timeout.
    argv = [str(BIN / "waitress-serve"), f"--listen={procs.HOST}:{port}"]
    if scenario == "slow_clients":
        # At its default connection limit (100) waitress stops accepting, and the fast clients
        # would wait in the backlog behind the slow ones; 1000 is catalyzer's max-connections.
        argv.append("--connection-limit=1000")
    return [*argv, f"bench.apps:{app}"]


def _twistd_web(app: str, port: int, scenario: str, logfile: Path) -> list[str]:
    # twistd web has no switch to turn its access log off; its users log to a file (twistd.log,
    # twistd's default when it daemonizes), so it logs to a file in the run's log directory,
    # rotated by twistd at 1 MB as by default. (Never /dev/null: twistd rotates its log files by
    # renaming them, and would rename /dev/null.)
    return [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "web",
        "--wsgi",
        f"bench.apps.{app}",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--logfile",
        str(logfile),
    ]


def _catalyzer_prefork(n: int, *extra: str) -> ArgvFactory:
    def argv(app: str, port: int, scenario: str, logfile: Path) -> list[str]:
        return [*_catalyzer(app, port, scenario, logfile), "--procs", str(n), *extra]

    return argv


def _granian(app: str, port: int, scenario: str, logfile: Path, workers: int = 1) -> list[str]:
    argv = [
        str(BIN / "granian"),
        "--interface",
        "wsgi",
        "--host",
        procs.HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "1",
        "--no-access-log",
    ]
    if app == "sleep50":
        argv += ["--blocking-threads", "8"]
    if scenario == "slow_clients":
        # Its header read timeout defaults to 30 s; 60 s is the most it accepts.
        argv += ["--http1-header-read-timeout", str(SLOW_HEADER_TIMEOUT * 1000)]
    return [*argv, f"bench.apps:{app}"]


def _uwsgi(app: str, port: int, scenario: str, logfile: Path, processes: int = 1) -> list[str]:
    # --http-socket never keeps a connection alive in uWSGI 2.0 (and --http-keepalive belongs to
    # the --http router); --http11-socket is the keep-alive variant of the HTTP socket. But
    # --http11-socket ignores a request's "Connection: close" (it answers without "Connection:
    # close" and keeps the connection), so wrk would measure keep-alive in hello_close: that
    # scenario uses --http-socket, which closes after every response.
    socket_option = "--http-socket" if scenario == "hello_close" else "--http11-socket"
    return [
        str(BIN / "uwsgi"),
        socket_option,
        f"{procs.HOST}:{port}",
        "--processes",
        str(processes),
        "--listen",
        "1024",
        "--disable-logging",
        "--die-on-term",
        "--virtualenv",
        str(procs.ROOT / ".venv"),
        "--wsgi",
        f"bench.apps:{app}",
    ]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    argv: ArgvFactory
    package: str


GUNICORN_SYNC = ServerSpec(
    "gunicorn-sync", "gunicorn sync, 2 workers", _gunicorn("sync"), "gunicorn"
)
GUNICORN_GTHREAD = ServerSpec(
    "gunicorn-gthread", "gunicorn gthread, 2 workers x 4 threads", _gunicorn("gthread"), "gunicorn"
)
SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("catalyzer", "catalyzer (1 process)", _catalyzer, "catalyzer"),
    GUNICORN_SYNC,
    GUNICORN_GTHREAD,
    ServerSpec("waitress", "waitress (4 threads)", _waitress, "waitress"),
    ServerSpec("twistd-web", "twistd web --wsgi", _twistd_web, "twisted"),
    ServerSpec("granian", "granian wsgi, 1 worker", _granian, "granian"),
    ServerSpec("uwsgi", "uWSGI, 1 process", _uwsgi, "uwsgi"),
)
# The multi-process section: every server with 2 processes (waitress and twistd web have no
# multi-process mode). gunicorn runs exactly as in the single-process section.
MULTI_PROCS = 2
CATALYZER_PREFORK = ServerSpec(
    "catalyzer-procs2",
    f"catalyzer --procs {MULTI_PROCS}",
    _catalyzer_prefork(MULTI_PROCS),
    "catalyzer",
)
GRANIAN2 = "granian-workers2"
UWSGI2 = "uwsgi-procs2"
MULTI_SERVERS: tuple[ServerSpec, ...] = (
    CATALYZER_PREFORK,
    GUNICORN_SYNC,
    GUNICORN_GTHREAD,
    ServerSpec(
        UWSGI2,
        f"uWSGI, {MULTI_PROCS} processes",
        lambda app, port, scenario, logfile: _uwsgi(
            app, port, scenario, logfile, processes=MULTI_PROCS
        ),
        "uwsgi",
    ),
    ServerSpec(
        GRANIAN2,
        f"granian wsgi, {MULTI_PROCS} workers",
        lambda app, port, scenario, logfile: _granian(
            app, port, scenario, logfile, workers=MULTI_PROCS
        ),
        "granian",
    ),
)
ALL_SERVERS: tuple[ServerSpec, ...] = tuple(
    {s.name: s for s in (*SERVERS, *MULTI_SERVERS)}.values()
)
BY_SERVER = {s.name: s for s in ALL_SERVERS}
SECTION_SERVERS = {"single": SERVERS, "multi": MULTI_SERVERS}
SECTION_REFERENCE = {"single": "catalyzer", "multi": CATALYZER_PREFORK.name}

# -- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    app: str
    connections: int
    wrk_extra: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    note: str = ""
    section: str = "single"  # "single" (SERVERS) or "multi" (MULTI_SERVERS)
    kind: str = ""  # the single-process scenario this one repeats (default: its own name)

    @property
    def base(self) -> str:
        return self.kind or self.name


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "hello_keepalive",
        "hello, keep-alive, 50 connections",
        "hello",
        50,
        note="13-byte response with Content-Length; wrk reuses its connections.",
    ),
    Scenario(
        "hello_close",
        "hello, Connection: close, 50 connections",
        "hello",
        50,
        ("-H", "Connection: close"),
        note="A new TCP connection for every request. uWSGI runs with --http-socket here "
        "instead of --http11-socket, which ignores the request's `Connection: close` and keeps "
        "the connection (wrk would then measure keep-alive).",
    ),
    Scenario(
        "big_response",
        "1 MiB response, 10 connections",
        "big",
        10,
        note="One 1 MiB bytes object with Content-Length.",
    ),
    Scenario(
        "post_1m",
        "1 MiB POST body to echo, 10 connections",
        "echo",
        10,
        ("-s", POST_SCRIPT),
        note="The app reads wsgi.input to the end and answers with its length (bench/post1m.lua).",
    ),
    Scenario(
        "sleep50",
        "sleep50 (50 ms blocking app), 50 connections",
        "sleep50",
        50,
        skip=("gunicorn-sync", "uwsgi"),
        note="catalyzer runs with --threads 8, granian with --blocking-threads 8; gunicorn "
        "gthread has 2x4 threads, waitress 4, and twistd web its own WSGI thread pool (Twisted's "
        "ThreadPool default: up to 20 threads). The ceiling is threads / 50 ms: 160 req/s for "
        "8 threads, 80 for 4, 400 for 20. gunicorn sync "
        "(2 single-threaded workers: at most 40 req/s) and uWSGI (1 single-threaded process: at "
        "most 20 req/s) are skipped: their result is fixed by construction.",
    ),
    Scenario(
        "slow_clients",
        f"{SLOW_CLIENTS} slow clients, hello keep-alive on 10 fast connections",
        "hello",
        10,
        note=f"First 10 fast keep-alive connections alone, then again while {SLOW_CLIENTS} other "
        "connections each hold a partial request (`GET / HTTP/1.1`, `Host`, and an unfinished "
        f"header that grows by one byte every {SLOW_TRICKLE_SECONDS:g} s). catalyzer runs with "
        f"--header-timeout {SLOW_HEADER_TIMEOUT} (default 10 s) and granian with "
        f"--http1-header-read-timeout {SLOW_HEADER_TIMEOUT * 1000} (default 30 s) so that "
        "neither drops the slow clients during the measurement; waitress runs with "
        "--connection-limit=1000 (catalyzer's max-connections default; at its default of 100 "
        "it stops accepting and the fast clients wait in the backlog). The other servers "
        "have no deadline that would fire within the measurement (waitress closes channels "
        "idle for 120 s, twistd web's Site after 12 h; gunicorn and uWSGI have no header "
        "deadline in these modes), and no option was changed for them. wrk opens its 10 "
        "connections after the slow ones: a server that hands each accepted connection to a "
        "worker (gunicorn sync and gthread, uWSGI) has every worker blocked reading a slow "
        "client's headers, and the fast clients are never served.",
    ),
)
MULTI_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "procs2_hello_keepalive",
        f"{MULTI_PROCS} processes: hello, keep-alive, 50 connections",
        "hello",
        50,
        section="multi",
        kind="hello_keepalive",
    ),
    Scenario(
        "procs2_hello_close",
        f"{MULTI_PROCS} processes: hello, Connection: close, 50 connections",
        "hello",
        50,
        ("-H", "Connection: close"),
        note="uWSGI runs with --http-socket here, as in the single-process section.",
        section="multi",
        kind="hello_close",
    ),
    Scenario(
        "procs2_big_response",
        f"{MULTI_PROCS} processes: 1 MiB response, 10 connections",
        "big",
        10,
        section="multi",
        kind="big_response",
    ),
    Scenario(
        "procs2_post_1m",
        f"{MULTI_PROCS} processes: 1 MiB POST body to echo, 10 connections",
        "echo",
        10,
        ("-s", POST_SCRIPT),
        section="multi",
        kind="post_1m",
    ),
)
BY_SCENARIO = {s.name: s for s in (*SCENARIOS, *MULTI_SCENARIOS)}

# -- wrk

_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _LATENCY_UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """requests/s, p50/p99 latency (ms), request count and errors from wrk --latency output."""
    out: dict[str, Any] = {
        "rps": 0.0,
        "requests": 0,
        "p50_ms": None,
        "p99_ms": None,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0},
    }
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+)", text):
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+\w+)\s*$", text, re.MULTILINE):
            out[key] = _latency_ms(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        for i, key in enumerate(("connect", "read", "write", "timeout"), start=1):
            out["errors"][key] = int(m.group(i))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["errors"]["non2xx"] = int(m.group(1))
    out["error_total"] = sum(out["errors"].values())
    return out


def run_wrk(
    port: int,
    connections: int,
    duration: int,
    extra: tuple[str, ...] = (),
    threads: int = WRK_THREADS,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """``prefix`` runs wrk through a command that execs it (``ip netns exec NS``)."""
    argv = [
        *prefix,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        *extra,
        f"http://{procs.HOST}:{port}/",
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=procs.ROOT,
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"wrk timed out: {e}", -1
    result = parse_wrk(text)
    result["wrk_argv"] = shlex.join(argv).replace(str(port), "PORT")
    result["wrk_rc"] = rc
    result["wrk_seconds"] = round(time.monotonic() - started, 2)
    result["raw"] = text
    return result


# -- plain-socket HTTP checks


def _read_response(s: socket.socket, deadline: float) -> tuple[str, dict[str, str], bytes]:
    """One response with a Content-Length body (all the checked apps send one)."""
    data = b""
    for _ in range(100_000):
        if b"\r\n\r\n" in data or time.monotonic() > deadline:
            break
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    for _ in range(100_000):
        if len(body) >= length or time.monotonic() > deadline:
            break
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(1024 * 1024)
        if not chunk:
            break
        body += chunk
    return lines[0], headers, body


def _exchange(
    s: socket.socket, request: bytes, timeout: float
) -> tuple[str, dict[str, str], bytes]:
    s.sendall(request)
    return _read_response(s, time.monotonic() + timeout)


def _get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {procs.HOST}\r\n\r\n".encode()


def check_app(port: int, app: str) -> dict[str, Any]:
    """Is the answer right? (wrk counts responses, it does not look at them.)"""
    try:
        with socket.create_connection((procs.HOST, port), timeout=5) as s:
            if app == "echo":
                body = b"y" * (1024 * 1024)
                request = (
                    f"POST / HTTP/1.1\r\nHost: {procs.HOST}\r\nContent-Length: {len(body)}\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode() + body
                expected = b"1048576"
            elif app == "big":
                request, expected = _get(), b"x" * (1024 * 1024)
            else:
                request, expected = _get(), b"Hello, World!"
            status, _, got = _exchange(s, request, 10)
        ok = status.split(" ")[1:2] == ["200"] and got == expected
        return {"ok": ok, "status": status, "body_bytes": len(got)}
    except OSError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def check_close(port: int) -> dict[str, Any]:
    """After answering a request with "Connection: close", does the server close?"""
    out: dict[str, Any] = {"closes": False}
    try:
        with socket.create_connection((procs.HOST, port), timeout=3) as s:
            request = f"GET / HTTP/1.1\r\nHost: {procs.HOST}\r\nConnection: close\r\n\r\n"
            status, headers, _ = _exchange(s, request.encode(), 3)
            out["status"] = status
            out["connection_header"] = headers.get("connection", "")
            s.settimeout(1.0)
            with contextlib.suppress(TimeoutError):
                out["closes"] = s.recv(1) == b""
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def check_keepalive(port: int) -> dict[str, Any]:
    """Does connection A stay open after a response, and is B served while A is open and idle?"""
    out: dict[str, Any] = {"keeps_alive": False, "serves_second_connection": False}
    try:
        with (
            socket.create_connection((procs.HOST, port), timeout=3) as a,
            socket.create_connection((procs.HOST, port), timeout=3) as b,
        ):
            status, headers, _ = _exchange(a, _get(), 3)
            out["first"] = status
            out["connection_header"] = headers.get("connection", "")
            try:
                status_b, _, _ = _exchange(b, _get(), 1.5)
                out["serves_second_connection"] = status_b.startswith("HTTP/1.1 200")
            except OSError:
                pass
            try:
                status_a, _, _ = _exchange(a, _get(), 3)
                out["keeps_alive"] = status_a.startswith("HTTP/1.1 200")
            except OSError:
                pass
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


# -- slow clients


class SlowClients:
    """Holds ``count`` connections that each send a partial request head, then one more byte
    every ``interval`` seconds, from a helper thread. Bounded in count and in time."""

    def __init__(self, port: int, count: int, interval: float, max_seconds: float = 120) -> None:
        self.port = port
        self.count = count
        self.interval = interval
        self.max_seconds = max_seconds
        self.socks: list[socket.socket] = []
        self.connect_failed = 0
        self.send_failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="slow-clients", daemon=True)

    def open(self, deadline: float = 10.0) -> None:
        """Non-blocking connects, all at once; those not connected by the deadline count as
        failed. Then the partial request head on each."""
        pending: dict[int, socket.socket] = {}
        for _ in range(self.count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            code = s.connect_ex((procs.HOST, self.port))
            if code not in (0, errno.EINPROGRESS):
                self.connect_failed += 1
                s.close()
                continue
            pending[s.fileno()] = s
        end = time.monotonic() + deadline
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        for _ in range(10_000):
            if not pending or time.monotonic() > end:
                break
            for fd, _ in poller.poll(100):
                s = pending.pop(fd)
                poller.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    self.socks.append(s)
                else:
                    self.connect_failed += 1
                    s.close()
        for s in pending.values():
            self.connect_failed += 1
            s.close()
        self._send(SLOW_PARTIAL)
        self._thread.start()

    def _send(self, data: bytes) -> None:
        for s in self.socks:
            if s.fileno() < 0:
                continue
            try:
                s.send(data)
            except BlockingIOError:
                pass
            except OSError:
                self.send_failed += 1
                s.close()

    def _trickle(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.interval) and time.monotonic() < end:
            self._send(b"a")

    def close(self) -> dict[str, Any]:
        """Stop trickling; report how many are still open, answered, or closed by the server."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        still_open = answered = closed = 0
        for s in self.socks:
            if s.fileno() < 0:
                closed += 1
                continue
            try:
                data = s.recv(4096)
                if data:
                    answered += 1
                else:
                    closed += 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                closed += 1
            s.close()
        return {
            "requested": self.count,
            "connected": len(self.socks),
            "connect_failed": self.connect_failed,
            "still_open": still_open,
            "answered": answered,
            "closed_by_server": closed,
        }


# -- running


@dataclass(frozen=True)
class Method:
    """How each measurement is made: the same for every server in a run."""

    duration: int = DURATION  # seconds of wrk per measurement
    runs: int = RUNS  # measurements of each (scenario, server), interleaved
    wrk_threads: int = WRK_THREADS


@contextlib.contextmanager
def serving(
    spec: ServerSpec, scenario: Scenario, log_dir: Path, record: dict[str, Any], run: int = 1
) -> Iterator[tuple[procs.Server, procs.RssSampler]]:
    port = procs.free_port()
    stem = f"{spec.name}-{scenario.name}-run{run}"
    logfile = log_dir / f"{stem}.access.log"
    argv = spec.argv(scenario.app, port, scenario.base, logfile)
    record["command"] = shlex.join(argv).replace(str(port), "PORT").replace(str(logfile), "RUNLOG")
    server = procs.start_server(spec.name, argv, port, log_dir / f"{stem}.log")
    try:
        record["ready_seconds"] = round(procs.wait_ready(server), 2)
        with procs.RssSampler(server.pid) as sampler:
            yield server, sampler
    finally:
        record["stop"] = procs.stop_server(server)


def _max_accept_queue(port: int, stop: threading.Event, into: dict[str, Any]) -> None:
    """Once a second: how many connections wait in the server's listen backlog (not accepted)."""
    for _ in range(1000):
        q = procs.accept_queue(port)
        if q is not None:
            into["max_accept_queue"] = max(into.get("max_accept_queue", 0), q)
        if stop.wait(1.0):
            break


def measure(
    server: procs.Server,
    sampler: procs.RssSampler,
    scenario: Scenario,
    method: Method,
    watch_backlog: bool = True,
) -> dict[str, Any]:
    sampler.reset()
    extra: dict[str, Any] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_max_accept_queue, args=(server.port, stop, extra), daemon=True
    )
    if watch_backlog:
        watcher.start()
    result = run_wrk(
        server.port, scenario.connections, method.duration, scenario.wrk_extra, method.wrk_threads
    )
    stop.set()
    if watcher.is_alive():
        watcher.join(timeout=5)
    sampler.sample()
    result["peak_rss"] = sampler.peak
    result["rss_samples"] = sampler.samples
    result.update(extra)
    if server.proc.poll() is not None:
        result["server_exited"] = server.proc.returncode
    return result


def run_one(
    spec: ServerSpec, scenario: Scenario, method: Method, log_dir: Path, run: int = 1
) -> dict[str, Any]:
    """One measurement: a fresh server, the checks, wrk; the server stopped by PID."""
    record: dict[str, Any] = {"server": spec.name, "run": run, "loadavg": os.getloadavg()}
    try:
        with serving(spec, scenario, log_dir, record, run) as (server, sampler):
            record["check"] = check_app(server.port, scenario.app)
            if scenario.base == "hello_keepalive":
                record["keepalive"] = check_keepalive(server.port)
            if scenario.base == "hello_close":
                record["close"] = check_close(server.port)
            if scenario.base != "slow_clients":
                # /proc/net/tcp gets long with the TIME_WAIT sockets of Connection: close.
                watch = scenario.base != "hello_close"
                if spec.name == CATALYZER_PREFORK.name:
                    # Per-worker request counts (SIGUSR1 state dumps) around the measurement.
                    prefork.wait_for(server, prefork.READY, MULTI_PROCS, 30)
                    before = prefork.usr1_dump(server)
                record.update(measure(server, sampler, scenario, method, watch))
                if spec.name == CATALYZER_PREFORK.name:
                    record["split"] = prefork.split(before, prefork.usr1_dump(server))
            else:
                undisturbed = measure(server, sampler, scenario, method)
                slow = SlowClients(server.port, SLOW_CLIENTS, SLOW_TRICKLE_SECONDS)
                try:
                    slow.open()
                    disturbed = measure(server, sampler, scenario, method)
                finally:
                    record["slow_clients"] = slow.close()
                record["undisturbed"] = undisturbed
                record.update(disturbed)
                base = undisturbed["rps"]
                record["ratio"] = disturbed["rps"] / base if base else None
    except procs.NotReady as e:
        record["error"] = str(e)
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    return record


# -- repeated runs: every run kept, medians for the tables and the targets


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _split_key(split: dict[str, Any]) -> float:
    ratio = split.get("ratio")
    return math.inf if ratio is None else float(ratio)  # None: a worker served nothing


def median_split(splits: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The run whose busiest/least ratio is the median (the lower one of an even count), with
    every run's split under ``runs``: its worker counts stay those of one real run."""
    measured = [s for s in splits if s and not s.get("error")]
    if not measured:
        return next((s for s in splits if s), None)
    chosen = sorted(measured, key=_split_key)[(len(measured) - 1) // 2]
    return {**chosen, "runs": splits}


def aggregate(server: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's result in one scenario from its runs (each kept whole under ``runs``):
    req/s, p50, p99 and the slow-client share are medians over the runs that did not fail;
    requests and errors are summed; peak RSS and backlog are the highest of any run."""
    out: dict[str, Any] = {"server": server, "runs": runs}
    if runs and runs[0].get("command"):
        out["command"] = runs[0]["command"]
    done = [r for r in runs if not r.get("error")]
    if not done:
        out["error"] = runs[0].get("error", "not run") if runs else "not run"
        return out
    out["failed_runs"] = [r.get("run") for r in runs if r.get("error")]
    for key in ("rps", "p50_ms", "p99_ms"):
        out[key] = _median([r.get(key) for r in done])
    out["requests"] = sum(r.get("requests", 0) for r in done)
    errors: dict[str, int] = {}
    for r in done:
        for name, count in r.get("errors", {}).items():
            errors[name] = errors.get(name, 0) + count
    out["errors"] = errors
    out["error_total"] = sum(errors.values())
    out["peak_rss"] = max(r.get("peak_rss") or 0 for r in done)
    backlogs = [r["max_accept_queue"] for r in done if r.get("max_accept_queue") is not None]
    if backlogs:
        out["max_accept_queue"] = max(backlogs)
    if any("undisturbed" in r for r in done):
        out["undisturbed"] = {"rps": _median([r["undisturbed"].get("rps") for r in done])}
        out["ratio"] = _median([r.get("ratio") for r in done])
    if any("split" in r for r in done):
        out["split"] = median_split([r.get("split") for r in done])
    return out


def runs_of(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run behind a result (results saved before --runs existed are their own run)."""
    runs: list[dict[str, Any]] = r.get("runs") or [r]
    return runs


_T = TypeVar("_T")


def round_order(specs: list[_T], run: int) -> list[_T]:
    """Round ``run`` (1-based) measures every server once, starting one server further on each
    round, so that no server is always measured first (or right after a given other one)."""
    if not specs:
        return []
    shift = (run - 1) % len(specs)
    return [*specs[shift:], *specs[:shift]]


# -- prefork: reload and recycling under load, request split

PREFORK_SECONDS = 10  # the wrk run that is the load during a reload or recycling
PREFORK_CONNECTIONS = 50
HUP_AT = 4.0  # seconds into the wrk run
MAX_REQUESTS = 1000
PACED_RATE = 50  # new connections per second
PACED_SECONDS = 5
PREFORK_RUNS = ("reload_hup", "max_requests", "split_paced")
# Runs besides the wrk scenarios, named in --only like scenarios; all but the prefork runs
# measure catalyzer alone (nginx: catalyzer's faces beside uWSGI's and gunicorn's uwsgi).
EXTRA_RUNS = ("stream_rss", "large_rss", "scaling", "split", "nginx", *PREFORK_RUNS)


def _start_prefork(name: str, extra: tuple[str, ...], log_dir: Path) -> procs.Server:
    port = procs.free_port()
    argv = _catalyzer_prefork(MULTI_PROCS, *extra)(
        "hello", port, "hello_keepalive", log_dir / f"{CATALYZER_PREFORK.name}-{name}.access.log"
    )
    server = procs.start_server(
        CATALYZER_PREFORK.name, argv, port, log_dir / f"{CATALYZER_PREFORK.name}-{name}.log"
    )
    procs.wait_ready(server)
    if not prefork.wait_for(server, prefork.READY, MULTI_PROCS, 30):
        procs.stop_server(server)
        raise procs.NotReady(f"{MULTI_PROCS} workers not ready in 30 s:\n" + server.log_tail())
    return server


def _log_summary(server: procs.Server) -> dict[str, Any]:
    text = prefork.log_text(server)
    return {
        "ready_lines": len(prefork.READY.findall(text)),
        "recycles_started": len(prefork.RECYCLE.findall(text)),
        "generations_ready": [int(g) for g, _ in prefork.GENERATION_READY.findall(text)],
        "trouble": [line for line in text.splitlines() if prefork.TROUBLE.search(line)][:20],
    }


def run_prefork_load(
    name: str,
    extra: tuple[str, ...],
    hup_at: float | None,
    log_dir: Path,
    wrk_threads: int = WRK_THREADS,
) -> dict[str, Any]:
    """catalyzer --procs 2 under a bounded wrk run (hello, keep-alive); with ``hup_at``, SIGHUP
    to the master (by PID) that many seconds into it, from a timer thread."""
    record: dict[str, Any] = {"name": name, "hup_at": hup_at}
    try:
        server = _start_prefork(name, extra, log_dir)
    except procs.NotReady as e:
        record["error"] = str(e)
        return record
    record["command"] = shlex.join(server.argv).replace(str(server.port), "PORT")
    sent: dict[str, float] = {}

    def hup() -> None:
        sent["t"] = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)

    timer = threading.Timer(hup_at, hup) if hup_at is not None else None
    try:
        first = [int(pid) for _, pid in prefork.READY.findall(prefork.log_text(server))]
        record["first_pids"] = first
        with (
            procs.RssSampler(server.pid) as sampler,
            prefork.LogWatch(server, first) as watch,
        ):
            origin = time.monotonic()
            if timer is not None:
                timer.daemon = True
                timer.start()
            result = run_wrk(server.port, PREFORK_CONNECTIONS, PREFORK_SECONDS, threads=wrk_threads)
            if timer is not None:
                timer.cancel()
                # The old generation leaves once the new one is ready and its responses are
                # done: give it a bounded while after the load.
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not all(p in watch.gone for p in first):
                    time.sleep(0.1)  # polling interval
        record.update(result)
        record["peak_rss"] = sampler.peak
        record["timeline"] = watch.timeline(origin)
        record.update(_log_summary(server))
        if "t" in sent:
            hup_t = sent["t"]
            record["hup_sent_at"] = round(hup_t - origin, 2)
            ready_at = [t for t, line in watch.events if prefork.GENERATION_READY.search(line)]
            if ready_at:
                record["new_generation_ready_after_hup"] = round(ready_at[0] - hup_t, 2)
            if first and all(p in watch.gone for p in first):
                record["old_generation_gone_after_hup"] = round(
                    max(watch.gone[p] for p in first) - hup_t, 2
                )
        record["first_pids_gone"] = sorted(watch.gone)
        done = {int(pid) for _, pid in prefork.WORKER_DONE.findall(prefork.log_text(server))}
        record["first_pids_logged_exit"] = sorted(set(first) & done)
        record["dump_after"] = prefork.usr1_dump(server)
        if server.proc.poll() is not None:
            record["server_exited"] = server.proc.returncode
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        if timer is not None:
            timer.cancel()
        record["stop"] = procs.stop_server(server)
    return record


def run_paced_split(log_dir: Path) -> dict[str, Any]:
    """``PACED_RATE`` new connections a second, one GET with Connection: close each, for
    ``PACED_SECONDS``; then the per-worker request counts from SIGUSR1 dumps."""
    record: dict[str, Any] = {"name": "split_paced", "rate": PACED_RATE, "seconds": PACED_SECONDS}
    try:
        server = _start_prefork("split_paced", (), log_dir)
    except procs.NotReady as e:
        record["error"] = str(e)
        return record
    record["command"] = shlex.join(server.argv).replace(str(server.port), "PORT")
    try:
        before = prefork.usr1_dump(server)
        ok = failed = 0
        start = time.monotonic()
        for i in range(PACED_RATE * PACED_SECONDS):
            delay = start + i / PACED_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the client, not synchronisation
            try:
                line = procs.status_line(server.port, timeout=2.0)
                ok += line.startswith("HTTP/1.1 200")
                failed += not line.startswith("HTTP/1.1 200")
            except OSError:
                failed += 1
        record["elapsed"] = round(time.monotonic() - start, 2)
        record["ok"], record["failed"] = ok, failed
        record["split"] = prefork.split(before, prefork.usr1_dump(server))
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
    finally:
        record["stop"] = procs.stop_server(server)
    return record


# -- machine


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _kept_sections() -> str:
    """The part of the current DOC from the first of KEPT_SECTIONS on ("" if none)."""
    try:
        text = DOC.read_text()
    except OSError:
        return ""
    starts = [i for i in (text.find(f"\n{head}\n") for head in KEPT_SECTIONS) if i >= 0]
    return "\n" + text[min(starts) :].lstrip("\n") if starts else ""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    venv_python = subprocess.run(
        [str(BIN / "python"), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = subprocess.run(
        ["git", "-C", str(procs.ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(procs.ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit + (" (with uncommitted changes under src/)" if dirty else ""),
        "loadavg_before": os.getloadavg(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": venv_python.stdout.strip() or platform.python_version(),
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0] if (wrk.stdout + wrk.stderr) else "?",
        "versions": {s.package: _version(s.package) for s in SERVERS},
    }


# -- report


def _fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} us" if v < 1 else f"{v:,.1f} ms"


def _fmt_mib(v: int | None) -> str:
    return "-" if not v else f"{v / 1024**2:.1f} MiB"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _errors(r: dict[str, Any]) -> str:
    if "errors" not in r:
        return "-"
    parts = [f"{k} {v}" for k, v in r["errors"].items() if v]
    return "0" if not parts else f"{r['error_total']:,} ({', '.join(parts)})"


def _with_runs(
    r: dict[str, Any], value: Callable[[dict[str, Any]], float | None], fmt: Callable[..., str]
) -> str:
    """``median (run 1 / run 2 / ...)``; a failed run shows as "failed"; one run: the figure."""
    runs = runs_of(r)
    text = fmt(value(r))
    if len(runs) > 1:
        text += (
            " ("
            + " / ".join("failed" if run.get("error") else fmt(value(run)) for run in runs)
            + ")"
        )
    return text


def _find(results: list[dict[str, Any]], server: str) -> dict[str, Any] | None:
    return next((r for r in results if r["server"] == server), None)


def _scenario_table(scn: dict[str, Any]) -> list[str]:
    results = scn["results"]
    cat = _find(results, scn.get("reference", "catalyzer"))
    cat_rps = cat.get("rps") if cat and not cat.get("error") else None
    slow = scn["name"] == "slow_clients"
    if slow:
        head = (
            "| server | req/s alone | req/s with slow clients | disturbed/alone | vs catalyzer "
            "| p50 | p99 | errors | peak RSS | slow clients open at end |"
        )
        sep = "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"
    else:
        head = "| server | req/s | vs catalyzer | p50 | p99 | errors | peak RSS | max backlog |"
        sep = "|---|---:|---:|---:|---:|---|---:|---:|"
    lines = [head, sep]
    for r in results:
        label = BY_SERVER[r["server"]].label if r["server"] in BY_SERVER else r["server"]
        if r.get("error"):
            first = r["error"].splitlines()[0]
            cols = 10 if slow else 8
            lines.append(f"| {label} | failed: {first} |" + " |" * (cols - 2))
            continue
        vs = _fmt_ratio(r["rps"] / cat_rps) if cat_rps else "-"
        served = bool(r.get("requests"))
        p50 = _fmt_ms(r["p50_ms"] if served else None)
        p99 = _fmt_ms(r["p99_ms"] if served else None)
        if not r.get("check", {}).get("ok", True):
            label += " (wrong answer!)"
        rps = _with_runs(r, lambda x: x.get("rps"), _fmt_rps)
        if slow:
            held = "; ".join(
                _slow_held(run.get("slow_clients", {}))
                for run in runs_of(r)
                if not run.get("error")
            )
            alone = _with_runs(r, lambda x: x.get("undisturbed", {}).get("rps"), _fmt_rps)
            share = _with_runs(r, lambda x: x.get("ratio"), _fmt_pct)
            lines.append(
                f"| {label} | {alone} | {rps} | {share} | {vs} | "
                f"{p50} | {p99} | {_errors(r)} | "
                f"{_fmt_mib(r['peak_rss'])} | {held} |"
            )
        else:
            backlog = r.get("max_accept_queue")
            lines.append(
                f"| {label} | {rps} | {vs} | {p50} | {p99} | {_errors(r)} | "
                f"{_fmt_mib(r['peak_rss'])} | "
                f"{'-' if backlog is None else backlog} |"
            )
    return lines


def _slow_held(sc: dict[str, Any]) -> str:
    held = f"{sc.get('still_open', 0)}/{sc.get('requested', 0)}"
    if sc.get("answered"):
        held += f", {sc['answered']} answered"
    if sc.get("connect_failed"):
        held += f", {sc['connect_failed']} not connected"
    return held


@dataclass(frozen=True)
class Ratio:
    """``a / b`` from the medians, and the same ratio within each round (run n of a over run n
    of b, measured in the same round when a and b are in the same scenario)."""

    median: float | None
    rounds: tuple[float | None, ...] = ()


def _target(
    label: str,
    value: float | Ratio | None,
    goal: float,
    fmt: Callable[[float], str],
) -> str:
    rounds: tuple[float | None, ...] = ()
    if isinstance(value, Ratio):
        rounds = value.rounds
        value = value.median
    if value is None:
        return f"- **not measured** — {label}"
    met = value >= goal
    verdict = "**met**" if met else "**missed**"
    line = f"- {verdict} — {label}: {fmt(value)} (target {fmt(goal)})"
    if not met:
        line += f"; short by {fmt(goal - value)}, i.e. at {value / goal:.0%} of the target"
    if len(rounds) > 1:
        line += "; per round " + " / ".join("-" if v is None else fmt(v) for v in rounds)
    return line


def _host_scaling(spread: dict[str, Any] | None) -> float | None:
    """req/s of two handler hosts of one process over one (bench/split.py ``scale-netns``)."""
    if not spread or "skipped" in spread:
        return None
    one, two = (spread.get(k) or {} for k in ("1x1", "2x1"))
    if not one.get("rps") or not two.get("rps"):
        return None
    return round(float(two["rps"]) / float(one["rps"]), 2)


def _measured(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if r is None or r.get("error") else r


def rps_ratio(
    data: dict[str, Any], a: tuple[str, str], b: tuple[str, str], key: str = "rps"
) -> Ratio:
    """(scenario, server) ``a`` over ``b``: the ratio of their medians, and round by round."""
    by = {s["name"]: s["results"] for s in data["scenarios"]}
    ra = _measured(_find(by.get(a[0], []), a[1]))
    rb = _measured(_find(by.get(b[0], []), b[1]))
    if ra is None or rb is None or ra.get(key) is None or not rb.get(key):
        return Ratio(None)
    runs_b = {run.get("run", i): run for i, run in enumerate(runs_of(rb), start=1)}
    rounds = []
    for i, run_a in enumerate(runs_of(ra), start=1):
        run_b = runs_b.get(run_a.get("run", i))
        va = None if run_a.get("error") else run_a.get(key)
        vb = None if run_b is None or run_b.get("error") else run_b.get(key)
        rounds.append(None if va is None or not vb else va / vb)
    return Ratio(ra[key] / rb[key], tuple(rounds))


def targets(data: dict[str, Any]) -> list[str]:
    by = {s["name"]: s["results"] for s in data["scenarios"]}
    x = "{:.2f}x".format
    lines = [
        _target(
            "catalyzer hello keep-alive vs `twistd web --wsgi`",
            rps_ratio(data, ("hello_keepalive", "catalyzer"), ("hello_keepalive", "twistd-web")),
            10.0,
            x,
        ),
        _target(
            "catalyzer hello keep-alive vs gunicorn sync (2 workers)",
            rps_ratio(data, ("hello_keepalive", "catalyzer"), ("hello_keepalive", "gunicorn-sync")),
            3.0,
            x,
        ),
    ]
    slow = _measured(_find(by.get("slow_clients", []), "catalyzer"))
    lines.append(
        _target(
            f"catalyzer fast-client throughput with {SLOW_CLIENTS} slow clients, as a share "
            "of undisturbed (median of the runs' shares)",
            None
            if slow is None
            else Ratio(slow.get("ratio"), tuple(r.get("ratio") for r in runs_of(slow))),
            0.95,
            "{:.1%}".format,
        )
    )
    split_scenarios = (data.get("split") or {}).get("scenarios", {})
    for name, label, goal in (
        ("hello", "split mode (front + 1 handler) hello keep-alive vs one process", 0.5),
        ("big", "split mode (front + 1 handler) 1 MiB response vs one process", 0.7),
    ):
        lines.append(
            _target(label, (split_scenarios.get(name) or {}).get("ratio"), goal, "{:.0%}".format)
        )
    lines.append(
        _target(
            "split mode, 50 ms app: a second handler host (2 namespaces x 1 process vs 1 x 1; "
            "the app's limit doubles, so a host that adds throughput gives well over 1)",
            _host_scaling(split_scenarios.get("scale-netns")),
            1.5,
            "{:.2f}x".format,
        )
    )
    st = data.get("stream_rss")
    if not st or "peak_rss" not in st:
        lines.append("- **not measured** — 1 GiB stream peak RSS < 64 MiB")
    else:
        peak, goal = st["peak_rss"], st["target_bytes"]
        if peak < goal:
            lines.append(
                f"- **met** — 1 GiB stream peak RSS: {_fmt_mib(peak)} (target < {_fmt_mib(goal)})"
            )
        else:
            lines.append(
                f"- **missed** — 1 GiB stream peak RSS: {_fmt_mib(peak)} (target < "
                f"{_fmt_mib(goal)}); over by {_fmt_mib(peak - goal + 1)}"
            )
    lines += _memory_and_scaling_targets(data)
    cat2 = CATALYZER_PREFORK.name
    n = MULTI_PROCS
    lines += [
        _target(
            f"catalyzer --procs {n} hello keep-alive vs granian --workers {n}",
            rps_ratio(data, ("procs2_hello_keepalive", cat2), ("procs2_hello_keepalive", GRANIAN2)),
            1.0,
            x,
        ),
        _target(
            f"catalyzer --procs {n} hello keep-alive vs gunicorn sync (2 workers, "
            "multi-process section)",
            rps_ratio(
                data, ("procs2_hello_keepalive", cat2), ("procs2_hello_keepalive", "gunicorn-sync")
            ),
            4.0,
            x,
        ),
        _target(
            f"catalyzer --procs {n} hello Connection: close vs granian --workers {n}",
            rps_ratio(data, ("procs2_hello_close", cat2), ("procs2_hello_close", GRANIAN2)),
            1.0,
            x,
        ),
    ]
    big = ("procs2_big_response", cat2), ("procs2_big_response", GRANIAN2)
    p99 = rps_ratio(data, big[1], big[0], key="p99_ms")  # granian's p99 over ours: >= 1 is met
    lines += [
        _target(
            f"catalyzer --procs {n} 1 MiB response vs granian --workers {n}",
            rps_ratio(data, *big),
            1.0,
            x,
        ),
        _target(
            f"catalyzer --procs {n} 1 MiB response p99 no worse than granian --workers {n}'s "
            "(granian's median p99 over ours)",
            p99,
            1.0,
            x,
        ),
        _target(
            f"catalyzer --procs {n} 1 MiB POST vs granian --workers {n}",
            rps_ratio(data, ("procs2_post_1m", cat2), ("procs2_post_1m", GRANIAN2)),
            1.0,
            x,
        ),
        _target(
            f"catalyzer --procs {n} 1 MiB POST vs uWSGI {n} processes",
            rps_ratio(data, ("procs2_post_1m", cat2), ("procs2_post_1m", UWSGI2)),
            1.0,
            x,
        ),
    ]
    for kind, what in (
        ("hello_keepalive", "hello keep-alive"),
        ("hello_close", "hello Connection: close"),
        ("big_response", "1 MiB response"),
        ("post_1m", "1 MiB POST"),
    ):
        lines.append(
            _target(
                f"catalyzer --procs {n} vs 1 process, {what} (never slower)",
                rps_ratio(data, (f"procs2_{kind}", cat2), (kind, "catalyzer")),
                1.0,
                x,
            )
        )
    pf = data.get("prefork", {})
    lines.append(
        _zero_errors_target(
            f"SIGHUP (reload) {HUP_AT:g} s into a {PREFORK_SECONDS} s hello keep-alive run "
            f"against --procs {MULTI_PROCS}",
            pf.get("reload_hup"),
        )
    )
    lines.append(
        _zero_errors_target(
            f"--max-requests {MAX_REQUESTS} during a {PREFORK_SECONDS} s hello keep-alive run "
            f"against --procs {MULTI_PROCS}",
            pf.get("max_requests"),
        )
    )
    for kind, what in (("hello_keepalive", "keep-alive"), ("hello_close", "Connection: close")):
        lines.append(
            _split_target(
                f"per-worker request split, --procs {MULTI_PROCS}, hello {what} (busiest/least)",
                _split_of(data, kind),
            )
        )
    return lines + _nginx_targets(data.get("nginx"))


def _memory_and_scaling_targets(data: dict[str, Any]) -> list[str]:
    """Issue 11's one-process targets that bench/large_rss.py and bench/scaling.py measure."""
    from bench import scaling  # it imports this module

    lines = []
    big = data.get("large_rss") or {}
    for app, what in (("huge", "one `bytes`"), ("huge_list", "a list of 1 MiB pieces")):
        label = f"16 MiB response ({what}) to {large_rss.CLIENTS} clients, peak RSS over idle"
        r = big.get(app)
        if r is None or "peak_over_idle" not in r:
            lines.append(f"- **not measured** — {label}")
            continue
        over, goal = r["peak_over_idle"], r["target_over_idle"]
        verdict = "met" if over <= goal and r.get("ok") else "missed"
        failed = "" if r.get("ok") else f"; the clients failed: {r.get('errors')}"
        lines.append(
            f"- **{verdict}** — {label}: {large_rss.size(over)} (target at most "
            f"{large_rss.size(goal)})" + failed
        )
    sc = data.get("scaling") or {}
    threads = sc.get("threads")
    if threads is None or threads.get("overhead") is None:
        lines.append("- **not measured** — `--threads 4` overhead on hello keep-alive")
    else:
        cost, rounds = threads["overhead"], threads.get("overhead_rounds", [])
        goal = scaling.THREADS_OVERHEAD_TARGET
        verdict = "met" if cost < goal else "missed"
        line = (
            f"- **{verdict}** — `--threads {sc['thread_count']}` overhead on hello keep-alive "
            f"(1 - threaded / default, medians): {cost:.1%} (target under {goal:.0%})"
        )
        if len(rounds) > 1:
            line += "; per round " + " / ".join("-" if v is None else f"{v:.1%}" for v in rounds)
        lines.append(line)
    conc = sc.get("concurrency")
    lines.append(
        _target(
            "hello keep-alive flat from 10 to 1,000 connections (lowest median over highest; "
            "0.91 when the issue was filed)",
            None if conc is None else conc.get("flatness"),
            scaling.FLATNESS_TARGET,
            "{:.2f}".format,
        )
    )
    idle = sc.get("idle")
    if idle is None or "bytes_per_connection" not in idle:
        why = f" ({idle['skipped']})" if idle and "skipped" in idle else ""
        lines.append(f"- **not measured** — memory per idle keep-alive connection{why}")
    else:
        per = idle["bytes_per_connection"]
        goal = scaling.IDLE_TARGET
        verdict = "met" if per < goal and idle["still_open"] == idle["connections"] else "missed"
        lines.append(
            f"- **{verdict}** — memory per idle keep-alive connection ({idle['connections']:,} "
            f"open, {idle['still_open']:,} still open when measured): {per:,} bytes (target "
            f"under {goal // 1024} KiB)"
        )
    return lines


def _nginx_targets(data: dict[str, Any] | None) -> list[str]:
    """Issue 12: behind the same nginx, catalyzer --uwsgi at least equal to uWSGI and gunicorn."""
    if data is None:
        return []
    from bench import nginx_gateway

    lines = []
    for peer, label in (
        ("uwsgi-uwsgi-socket", "uWSGI `--uwsgi-socket`"),
        ("gunicorn-uwsgi", "gunicorn `--protocol uwsgi`"),
    ):
        for scenario, what in (("hello", "hello"), ("post1m", "1 MiB POST")):
            median, rounds = nginx_gateway.ratio(data, "catalyzer-uwsgi", peer, scenario)
            lines.append(
                _target(
                    f"behind nginx, catalyzer `--uwsgi` vs {label}, {what} "
                    f"({nginx_gateway.WORKERS} workers each)",
                    Ratio(median, tuple(rounds)),
                    1.0,
                    "{:.2f}x".format,
                )
            )
    return lines


def _zero_errors_target(label: str, r: dict[str, Any] | None) -> str:
    if r is None or r.get("error"):
        why = "" if r is None else f" ({str(r['error']).splitlines()[0]})"
        return f"- **not measured** — {label}: wrk errors{why}"
    errors = r["error_total"]
    confirmed = ""
    if r.get("hup_at") is not None:
        if r.get("new_generation_ready_after_hup") is None:
            confirmed = "; **the new generation never became ready**"
        elif r.get("old_generation_gone_after_hup") is None:
            confirmed = "; **the old generation did not exit**"
        else:
            confirmed = (
                f"; generation 2 ready {r['new_generation_ready_after_hup']:.1f} s after the HUP, "
                f"generation 1 gone after {r['old_generation_gone_after_hup']:.1f} s"
            )
    else:
        confirmed = f"; {r['recycles_started']} recycles"
    verdict = "**met**" if errors == 0 and "**" not in confirmed else "**missed**"
    text = f"- {verdict} — {label}: {_errors(r)} wrk errors (target 0){confirmed}"
    if errors:
        text += f"; over by {errors:,} of {r['requests'] + errors:,} requests"
    return text


def _split_target(label: str, split: dict[str, Any] | None) -> str:
    if not split or split.get("error"):
        return f"- **not measured** — {label}"
    ratio = split.get("ratio")
    counts = "/".join(f"{w['requests']:,}" for w in split["workers"])
    rounds = _split_rounds(split)
    if ratio is None:
        return f"- **missed** — {label}: {counts}, a worker served nothing (target <= 2:1{rounds})"
    if ratio <= 2.0:
        return f"- **met** — {label}: {ratio:.2f}:1 ({counts}; target <= 2:1{rounds})"
    return (
        f"- **missed** — {label}: {ratio:.2f}:1 ({counts}; target <= 2:1{rounds}); over by "
        f"{ratio - 2.0:.2f}"
    )


def _command_text(command: str) -> str:
    """Commands as run from the repository root, with the app name as ``APP``."""
    command = command.replace(f"{procs.ROOT}/", "")
    return re.sub(r"bench\.apps([.:])\w+", r"bench.apps\1APP", command)


def _commands(data: dict[str, Any]) -> list[str]:
    seen: dict[str, dict[str, list[str]]] = {}
    for scn in data["scenarios"]:
        for r in scn["results"]:
            if "command" in r:
                app = BY_SCENARIO[scn["name"]].app if scn["name"] in BY_SCENARIO else "?"
                used = seen.setdefault(r["server"], {}).setdefault(_command_text(r["command"]), [])
                used.append(f"{scn['name']} (APP={app})")
    st = data.get("stream_rss")
    if st and "command" in st:
        used = seen.setdefault("catalyzer", {}).setdefault(_command_text(st["command"]), [])
        used.append("stream_rss (APP=stream)")
    for app, r in (data.get("large_rss") or {}).items():
        if "command" in r:
            used = seen.setdefault("catalyzer", {}).setdefault(_command_text(r["command"]), [])
            used.append(f"large_rss (APP={app})")
    for name, r in data.get("prefork", {}).items():
        if "command" in r:
            by_cmd = seen.setdefault(CATALYZER_PREFORK.name, {})
            by_cmd.setdefault(_command_text(r["command"]), []).append(f"{name} (APP=hello)")
    lines: list[str] = []
    for spec in ALL_SERVERS:
        for command, used in seen.get(spec.name, {}).items():
            lines += [f"{spec.label} — {', '.join(used)}:", "", "```", command, "```", ""]
    return lines


def _scenario_section(scn: dict[str, Any]) -> list[str]:
    spec = BY_SCENARIO.get(scn["name"])
    lines = [f"### {scn['title']}", ""]
    if spec and spec.note:
        lines += [spec.note, ""]
    if scn.get("wrk_argv"):
        lines += [f"wrk: `{scn['wrk_argv']}`", ""]
    lines += _scenario_table(scn)
    lines.append("")
    lines += _scenario_notes(scn)
    split = next((r["split"] for r in scn["results"] if r.get("split")), None)
    if split:
        lines += [
            f"catalyzer --procs {MULTI_PROCS}, requests per worker during "
            + ("the median run" if len(split.get("runs") or ()) > 1 else "this measurement")
            + f" (SIGUSR1 state dumps before and after): {_fmt_split(split)}.",
            "",
        ]
    return lines


def _multi_intro(wrk_threads: int) -> list[str]:
    return [
        f"## Multi-process: {MULTI_PROCS} processes per server",
        "",
        f"Every server that has a multi-process mode, with {MULTI_PROCS} processes serving: "
        f"catalyzer `--procs {MULTI_PROCS}` (a master that only binds and supervises, and "
        f"{MULTI_PROCS} workers; how connections reach the workers: docs/prefork.md), gunicorn "
        "sync and gthread exactly "
        "as above (the arbiter and 2 workers), uWSGI `--processes 2` (a master and 2 workers; "
        "--http11-socket, and --http-socket for Connection: close as above) and granian "
        "`--workers 2`. waitress and twistd web have no multi-process mode and are not in this "
        "section. *peak RSS* sums every process of the server (master or arbiter included). "
        f"*vs catalyzer* divides by catalyzer `--procs {MULTI_PROCS}` in the same scenario. "
        f"With {MULTI_PROCS} server processes and wrk's {wrk_threads} threads on the same "
        "2 cores, a second process can only add what wrk leaves of the CPU.",
        "",
    ]


def _split_of(data: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for scn in data["scenarios"]:
        spec = BY_SCENARIO.get(scn["name"])
        if spec is None or spec.section != "multi" or spec.base != kind:
            continue
        r = _find(scn["results"], CATALYZER_PREFORK.name)
        if r is not None and r.get("split"):
            split: dict[str, Any] = r["split"]
            return split
    return None


def _fmt_split_ratio(split: dict[str, Any] | None) -> str:
    if not split or split.get("error"):
        return "not measured"
    ratio = split.get("ratio")
    return "a worker served nothing" if ratio is None else f"{ratio:.2f}:1"


def _split_rounds(split: dict[str, Any]) -> str:
    """Every run's busiest/least ratio, when the split is the median of several runs."""
    runs = split.get("runs") or []
    if len(runs) < 2:
        return ""
    every = " / ".join(_fmt_split_ratio(s) for s in runs)
    return f"; the median of {len(runs)} runs, each run: {every}"


def _fmt_split(split: dict[str, Any]) -> str:
    if split.get("error"):
        return f"not measured ({split['error']})"
    counts = " / ".join(f"worker {w['slot']}: {w['requests']:,}" for w in split["workers"])
    ratio = split.get("ratio")
    if ratio is None:
        return f"{counts} (a worker served nothing{_split_rounds(split)})"
    return f"{counts} (busiest/least {ratio:.2f}:1{_split_rounds(split)})"


def _prefork_errors(r: dict[str, Any]) -> str:
    return "-" if r.get("error") else _errors(r)


def _prefork_summary(r: dict[str, Any]) -> str:
    if r.get("error"):
        return str(r["error"]).splitlines()[0]
    text = (
        f"{r['rps']:,.0f} req/s, errors {r['error_total']}, ready lines {r['ready_lines']}, "
        f"recycles {r['recycles_started']}"
    )
    if r.get("hup_at") is not None:
        text += (
            f", HUP at {r.get('hup_sent_at', '?')} s, new generation ready after "
            f"{r.get('new_generation_ready_after_hup', '?')} s, old gone after "
            f"{r.get('old_generation_gone_after_hup', '?')} s"
        )
    return text


def _reload_outcome(r: dict[str, Any]) -> str:
    if r.get("hup_at") is not None:
        if "hup_sent_at" not in r:
            return "SIGHUP was not sent"
        parts = [f"SIGHUP at {r['hup_sent_at']:.1f} s"]
        if r.get("new_generation_ready_after_hup") is not None:
            parts.append(
                f"`generation 2 ready: retiring 1` {r['new_generation_ready_after_hup']:.1f} s "
                "later"
            )
        else:
            parts.append("**the new generation never became ready**")
        if r.get("old_generation_gone_after_hup") is not None:
            parts.append(
                f"both generation-1 workers gone {r['old_generation_gone_after_hup']:.1f} s "
                "after the HUP"
            )
            logged = len(r.get("first_pids_logged_exit", []))
            parts.append(f"{logged} of them logged `Main loop terminated.`")
        else:
            parts.append("**a generation-1 worker was still running**")
    else:
        started = r["recycles_started"]
        ready = r["ready_lines"] - MULTI_PROCS
        parts = [
            f"{started} recycles started (`max-requests; starting its replacement`), "
            f"{ready} replacements ready"
        ]
    dump = r.get("dump_after", {})
    if dump.get("workers"):
        workers = ", ".join(
            f"worker {w['slot']} gen {w['generation']} {w['state']}" for w in dump["workers"]
        )
        parts.append(
            f"SIGUSR1 afterwards: generation {dump['generation']}, {workers}, "
            f"restarts {dump['restarts']}"
        )
    if r.get("trouble"):
        parts.append("log trouble: " + "; ".join(f"`{line}`" for line in r["trouble"][:3]))
    if r.get("stop", {}).get("returncode") not in (0, None):
        parts.append(f"master exit status {r['stop']['returncode']} on SIGTERM")
    return "; ".join(parts)


def _prefork_section(data: dict[str, Any]) -> list[str]:
    pf = data.get("prefork", {})
    lines = [
        f"## Prefork: reload, recycling and the request split (catalyzer --procs {MULTI_PROCS})",
        "",
    ]
    runs = [(n, pf[n]) for n in ("reload_hup", "max_requests") if n in pf]
    if runs:
        lines += [
            f"Each run: a fresh `--procs {MULTI_PROCS}` server with `bench.apps:hello`, and one "
            f"{PREFORK_SECONDS} s wrk run (keep-alive, {PREFORK_CONNECTIONS} connections: "
            f"`wrk -t{data.get('wrk_threads', WRK_THREADS)} -c{PREFORK_CONNECTIONS} "
            f"-d{PREFORK_SECONDS}s --latency`) as "
            f"the load. *HUP*: a timer thread sends SIGHUP to the master's PID {HUP_AT:g} s into "
            "the run. *max-requests*: the server runs with "
            f"`--max-requests {MAX_REQUESTS}` and gets no signal. The log was tailed every "
            "100 ms for the master's lines, and the first generation's PIDs were checked "
            "for existence at the same pace. The master logs no line when a retired worker "
            "exits: its exit shows in the worker's own last lines (`stopping: waiting ...`, "
            "`Main loop terminated.`) and in its PID disappearing. *errors* are wrk's (connect, "
            "read, write, timeout, non-2xx).",
            "",
            "| run | req/s | p50 | p99 | errors | peak RSS | what happened |",
            "|---|---:|---:|---:|---|---:|---|",
        ]
        for name, r in runs:
            label = (
                f"HUP at {HUP_AT:g} s" if name == "reload_hup" else f"--max-requests {MAX_REQUESTS}"
            )
            if r.get("error"):
                first = str(r["error"]).splitlines()[0]
                lines.append(f"| {label} | failed: {first} | | | | | |")
                continue
            lines.append(
                f"| {label} | {_fmt_rps(r['rps'])} | {_fmt_ms(r['p50_ms'])} | "
                f"{_fmt_ms(r['p99_ms'])} | {_prefork_errors(r)} | {_fmt_mib(r['peak_rss'])} | "
                f"{_reload_outcome(r)} |"
            )
        lines.append("")
        if any(r.get("errors", {}).get("read") for _, r in runs):
            lines += [
                "A retiring worker (reload or max-requests) closes at once, without "
                "`Connection: close`, each keep-alive connection that has been idle for 100 ms "
                "or more (docs/prefork.md), and wrk counts the close of a keep-alive connection "
                "after a complete response as a read error: read errors here mean that a wrk "
                "connection had been quiet for that long when its worker retired, which the "
                "shared machine can cause. Checked separately: with wrk stopped (SIGSTOP) for "
                "300 ms before and after a worker's TERM, wrk reported one read error per "
                "connection that worker held; without the stop, none.",
                "",
            ]
        hup = pf.get("reload_hup", {})
        if hup.get("timeline"):
            lines += ["Timeline of the HUP run (seconds from the start of wrk):", "", "```"]
            lines += [f"{e['t']:6.2f}  {_strip_log_prefix(e['line'])}" for e in hup["timeline"]]
            lines += ["```", ""]
    lines += [
        "### Request split over the workers",
        "",
        "Requests each worker served, from SIGUSR1 state dumps (each worker's own count) taken "
        "before and after the load, on a server that had just started. *busiest/least* is the "
        "larger count over the smaller.",
        "",
        "| load | " + " | ".join(f"worker {i}" for i in range(MULTI_PROCS)) + " | busiest/least "
        "| within 2:1 |",
        "|---|" + "---:|" * MULTI_PROCS + "---:|---|",
    ]
    rows = [
        (
            "hello keep-alive, 50 connections (the multi-process run above)",
            _split_of(data, "hello_keepalive"),
        ),
        ("hello Connection: close, 50 connections (the run above)", _split_of(data, "hello_close")),
    ]
    paced = pf.get("split_paced")
    if paced is not None:
        rows.append(
            (
                f"{PACED_RATE} new connections a second for {PACED_SECONDS} s, one request each "
                f"(Connection: close; {paced.get('ok', 0)} answered, {paced.get('failed', 0)} "
                "failed)",
                paced.get("split") or {"error": paced.get("error", "not measured")},
            )
        )
    for label, split in rows:
        if not split or split.get("error"):
            why = split.get("error") if split else "not measured"
            lines.append(f"| {label} | {why} |" + " |" * (MULTI_PROCS + 1))
            continue
        counts = " | ".join(f"{w['requests']:,}" for w in split["workers"])
        ratio = split.get("ratio")
        lines.append(
            f"| {label} | {counts} | {'-' if ratio is None else f'{ratio:.2f}:1'} | "
            f"{'yes' if split.get('within_2_to_1') else '**no**'} |"
        )
    lines.append("")
    return lines


def _strip_log_prefix(line: str) -> str:
    """``2026-...+0000 [catalyzer.prefork.master#info] text`` -> ``text``."""
    return re.sub(r"^\S+ \[[^\]]*\] ", "", line)


def _analysis() -> list[str]:
    """The hand-written reading of the targets (bench/analysis.md), if there is one."""
    path = Path(__file__).with_name("analysis.md")
    return [*path.read_text().rstrip().split("\n"), ""] if path.exists() else []


def _method(data: dict[str, Any]) -> list[str]:
    """The header: how this run measured, so that a reader can judge (and repeat) it."""
    m = data["machine"]
    runs = int(data.get("runs", 1))
    threads = data.get("wrk_threads", WRK_THREADS)
    duration = data["duration"]
    kind = "quick run" if data.get("quick") else "partial run" if data.get("only") else "full run"
    if data.get("only"):
        kind += ", restricted to " + ", ".join(f"`{n}`" for n in data["only"])
    if data.get("log_dir"):
        twistd_log = (
            "**it logged every request to a file in the run's log directory** "
            f"(`{data['log_dir']}/`, given with `--logfile`, rotated by twistd at 1 MB as by "
            "default), as its users run it"
        )
    else:  # results saved before the log went to the run's log directory
        twistd_log = "its access log went to a scratch file"
    if runs > 1:
        repeat = (
            f"Each scenario measured every server {runs} times, interleaved: round 1 measured "
            "each server once, then round 2 (starting one server further on), and so on, every "
            "measurement with a freshly started server, so that a change in the machine's load "
            f"spreads over all servers. **Every req/s figure is the median of the {runs} runs, "
            "followed by each run's figure in run order**, e.g. `25,487 (25,327 / 25,487 / "
            "25,562)`; p50 and p99 are the medians of the runs' percentiles, errors are summed "
            "over the runs, peak RSS and max backlog are the highest of any run. **Target ratios "
            "divide medians**; each target also gives the ratio within each round."
        )
    else:
        repeat = (
            "Each figure is a single measurement (`--runs 1`): on this small shared machine two "
            "runs can differ by tens of percent for some servers."
        )
    return [
        f"Run {data['id']} ({kind}, {runs} run{'s' if runs != 1 else ''} of {duration} s per "
        f"measurement; {data['elapsed_seconds']:.0f} s in all).",
        "",
        f"**Method.** Every server ran on 127.0.0.1 and wrk measured it with {threads} "
        f"thread{'s' if threads != 1 else ''}, `--latency` and {duration} s per measurement. "
        f"{repeat} The prefork reload, recycling and paced-split runs and the 1 GiB stream ran "
        "once: their targets count errors and bytes, not requests per second.",
        "",
        "**Servers as their users run them.** catalyzer, granian and uWSGI ran with their access "
        "logs off (`--access-log off`, `--no-access-log`, `--disable-logging`); gunicorn and "
        "waitress write none unless told to. twistd web has no switch to turn its access log "
        f"off: {twistd_log}. The other options each server got are under *Server command "
        "lines* and in each scenario's notes.",
        "",
        f"**The load generator and the server share the same {m['nproc']} cores**, so a server "
        "that needs less CPU per request also leaves more to wrk: absolute numbers are low and "
        "only the ratios within one run mean something. **The machine may be shared**: other "
        "work may have been running on the same cores (see the load averages below); rerun "
        "(`make bench`, or `bench/run.py --only NAME`) before reading much into a ratio close "
        "to its target.",
        "",
    ]


def _loadavg_line(data: dict[str, Any]) -> list[str]:
    """The 1-minute load average as each measurement started (recorded since --runs)."""
    values = [
        run["loadavg"][0]
        for scn in data["scenarios"]
        for r in scn["results"]
        for run in runs_of(r)
        if run.get("loadavg")
    ]
    if not values:
        return []
    return [
        f"- 1-minute load average as each of the {len(values)} measurements started: lowest "
        f"{min(values):.2f}, median {statistics.median(values):.2f}, highest {max(values):.2f}"
    ]


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `make bench` (bench/run.py) from "
        f"{'bench/results' if data.get('only') else OFFICIAL.relative_to(procs.ROOT)}/"
        f"{data['id']}.json; do not edit by hand. -->",
        "",
        *_method(data),
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, nproc = {m['nproc']}; memory {m['memory']}; Linux {m['kernel']}",
        f"- Python {m['python']}; {m['wrk']}",
        f"- catalyzer at commit {m.get('commit') or '?'}",
        "- Load average (1, 5, 15 min) before the run: "
        + ", ".join(f"{v:.2f}" for v in m.get("loadavg_before", ()))
        + "; after: "
        + ", ".join(f"{v:.2f}" for v in m.get("loadavg_after", ())),
        *_loadavg_line(data),
        "- Versions: " + ", ".join(f"{name} {ver}" for name, ver in m["versions"].items()),
        "",
        "## Targets",
        "",
        "Checked as ratios from this run"
        + (
            f", each the ratio of two medians of {data['runs']} runs."
            if int(data.get("runs", 1)) > 1
            else "."
        ),
        "",
        *targets(data),
        "",
        *_analysis(),
        "## Scenarios",
        "",
        "Columns: req/s and p50/p99 latency as wrk reports them (medians, and each run's req/s, "
        "when there were several runs); *vs catalyzer* is the server's median req/s divided by "
        "catalyzer's in the same scenario; *errors* adds wrk's socket errors "
        "(connect, read, write, timeout) and non-2xx responses; *peak RSS* is the highest sum "
        "of VmRSS over the server process and its children, sampled every 100 ms during the "
        "measurement; *max backlog* is the longest accept queue of the listening socket(s) "
        "(connections the server has not accepted), sampled once a second (not sampled for "
        "Connection: close, where /proc/net/tcp fills with TIME_WAIT sockets).",
        "",
    ]
    for scn in data["scenarios"]:
        if scn.get("section", "single") == "single":
            lines += _scenario_section(scn)
    if data.get("split"):
        from bench import split

        lines += split.markdown(data["split"])
    st = data.get("stream_rss")
    if st:
        lines += ["### 1 GiB streamed response: memory (bench/stream_rss.py)", ""]
        if "peak_rss" in st:
            lines += [
                "catalyzer serves `bench.apps:stream`, a generator of 1 GiB in 64 KiB chunks "
                "without Content-Length. One client reads it at about 1 MB/s (token bucket over "
                "64 KiB `recv`) for 20 s and hangs up; then a second client reads all of it "
                "as fast as it can. RSS sampled every 100 ms.",
                "",
                "| phase | bytes read | time | rate | peak RSS |",
                "|---|---:|---:|---:|---:|",
                f"| idle, after start | - | - | - | {_fmt_mib(st['idle_rss'])} |",
            ]
            for phase, name in (("slow", "slow reader (~1 MB/s)"), ("fast", "full 1 GiB, fast")):
                p = st[phase]
                lines.append(
                    f"| {name} | {p['bytes']:,} | {p['seconds']:.1f} s | "
                    f"{p['rate'] / 1e6:,.1f} MB/s | {_fmt_mib(p['peak_rss'])} |"
                )
            complete = st["fast"].get("complete")
            lines += [
                "",
                f"Peak {_fmt_mib(st['peak_rss'])}: "
                + ("under" if st["under_target"] else "**not** under")
                + " 64 MiB. The fast client "
                + (
                    "received all 1,073,741,824 body bytes."
                    if complete
                    else "**did not** receive the complete body."
                ),
                "",
            ]
        else:
            lines += [f"Failed: {st.get('error', 'unknown error')}", ""]
    if data.get("large_rss"):
        lines += large_rss.markdown(data["large_rss"])
    if data.get("scaling"):
        from bench import scaling

        lines += scaling.markdown(data["scaling"])
    multi = [scn for scn in data["scenarios"] if scn.get("section") == "multi"]
    if multi:
        lines += _multi_intro(data.get("wrk_threads", WRK_THREADS))
        for scn in multi:
            lines += _scenario_section(scn)
    if data.get("prefork") or any(_split_of(data, n) for n in ("hello_keepalive", "hello_close")):
        lines += _prefork_section(data)
    if data.get("nginx"):
        from bench import nginx_gateway

        lines += nginx_gateway.markdown(data["nginx"])
    lines += [
        "## Server command lines",
        "",
        "Run from the repository root with `PYTHONPATH` set to it. `PORT` is a free port "
        "picked for each run; `APP` is the application in `bench/apps.py`; `RUNLOG` is a file "
        "in the run's log directory, one per measurement.",
        "",
    ]
    lines += _commands(data)
    return "\n".join(lines).rstrip() + "\n"


def _run_notes(scn: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """What one run of one server showed beyond its figures (checks, exits, backlog)."""
    notes: list[str] = []
    if r.get("error"):
        return [f"failed: {str(r['error']).splitlines()[0]}"]
    check = r.get("check")
    if check and not check.get("ok"):
        notes.append(f"the answer checked before the measurement was wrong: {check}")
    ka = r.get("keepalive")
    if ka is not None and not (ka["keeps_alive"] and ka["serves_second_connection"]):
        what = []
        if not ka["keeps_alive"]:
            what.append("closes the connection after each response")
        if not ka["serves_second_connection"]:
            what.append(
                "does not answer a second connection while a first keep-alive connection "
                "is open and idle, so most of wrk's connections wait in the listen backlog"
            )
        notes.append("; ".join(what) + " (checked with two raw sockets).")
    backlog = r.get("max_accept_queue") or 0
    conns = BY_SCENARIO[scn["name"]].connections if scn["name"] in BY_SCENARIO else 0
    if conns and backlog >= conns / 2 and scn["name"] != "slow_clients":
        notes.append(
            "many connections waited in the listen backlog, not accepted: the server works "
            "on fewer connections at a time than wrk opens, and its latency percentiles only "
            "cover the requests it did take."
        )
    close = r.get("close")
    if close is not None and not close["closes"]:
        notes.append(
            "keeps the connection open after answering a request with `Connection: close`, so "
            "wrk reuses it: this row measures keep-alive."
        )
    elif close is not None and "close" not in close.get("connection_header", "").lower():
        notes.append(
            "closes the connection after each response without saying so (no `Connection: "
            "close` in the response); wrk expects the connection to stay open and counts each "
            "close as a read error, so its read errors here are not failed requests."
        )
    if r.get("server_exited") is not None:
        notes.append("the server exited during the measurement.")
    if r.get("stop", {}).get("signal") == "SIGKILL":
        notes.append(f"did not exit within {procs.STOP_TIMEOUT:g} s of SIGTERM; killed.")
    return notes


def _scenario_notes(scn: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    for r in scn["results"]:
        label = BY_SERVER[r["server"]].label if r["server"] in BY_SERVER else r["server"]
        runs = runs_of(r)
        seen: dict[str, list[int]] = {}
        for i, run in enumerate(runs, start=1):
            for note in _run_notes(scn, run):
                seen.setdefault(note, []).append(run.get("run", i))
        backlog = r.get("max_accept_queue")
        for note, where in seen.items():
            text = note
            if note.startswith("many connections"):
                text = f"up to {backlog} connections" + note[len("many connections") :]
            if len(runs) > 1 and len(where) < len(runs):
                which = ", ".join(str(n) for n in where)
                text += f" (run{'s' if len(where) > 1 else ''} {which} of {len(runs)})"
            notes.append(f"- {label}: {text}")
    if scn["name"] == "slow_clients":
        notes.append(
            "- *slow clients open at end*: how many of the slow connections the server "
            "still held, neither answered nor closed, when the measurement ended (each run)."
        )
    for spec in ALL_SERVERS:
        if spec.name in scn.get("skipped", []):
            notes.append(f"- {spec.label}: skipped (see above).")
    return [*notes, ""] if notes else []


# -- main


PREFORK_ESTIMATE = 2 * (PREFORK_SECONDS + 8) + PACED_SECONDS + 5  # seconds, run once each
STREAM_ESTIMATE = 45  # seconds for stream_rss (20 s slow reader, 1 GiB fast, start and stop)
LARGE_RSS_ESTIMATE = 40  # seconds for bench/large_rss.py's two apps
IDLE_ESTIMATE = 30  # seconds for bench/scaling.py's 10,000 idle connections
NGINX_CASES = 10  # bench/nginx_gateway.py: 5 backends x 2 scenarios, each started afresh
SPLIT_ESTIMATE = 125  # seconds per run of bench/split.py's scenarios at the default duration
OVERHEAD_ESTIMATE = 1.5  # seconds per measurement besides wrk: start, checks, stop (measured ~1)


def plan(scenarios: list[Scenario], servers: set[str]) -> list[tuple[Scenario, list[ServerSpec]]]:
    """The (scenario, servers) pairs a run measures, in order."""
    out = []
    for scenario in scenarios:
        specs = [
            spec
            for spec in SECTION_SERVERS[scenario.section]
            if spec.name in servers and spec.name not in scenario.skip
        ]
        out.append((scenario, specs))
    return out


def estimate_seconds(
    planned: list[tuple[Scenario, list[ServerSpec]]], method: Method, extras: set[str]
) -> int:
    """A rough duration for the run, said before it starts (and in the README's terms)."""
    measurements = sum(
        len(specs) * (2 if scenario.base == "slow_clients" else 1) for scenario, specs in planned
    )
    starts = sum(len(specs) for _, specs in planned)
    total = method.runs * (measurements * method.duration + starts * OVERHEAD_ESTIMATE)
    total += PREFORK_ESTIMATE * len(extras & {"reload_hup", "max_requests", "split_paced"}) // 3
    total += STREAM_ESTIMATE if "stream_rss" in extras else 0
    total += SPLIT_ESTIMATE * method.runs * method.duration // DURATION if "split" in extras else 0
    total += LARGE_RSS_ESTIMATE if "large_rss" in extras else 0
    if "scaling" in extras:  # 2 thread variants and 3 concurrencies, then the idle count
        total += method.runs * 5 * (method.duration + OVERHEAD_ESTIMATE) + IDLE_ESTIMATE
    if "nginx" in extras:
        total += method.runs * NGINX_CASES * (method.duration + 2 * OVERHEAD_ESTIMATE)
    return int(total)


def measure_scenario(
    scenario: Scenario,
    specs: list[ServerSpec],
    method: Method,
    log_dir: Path,
    started: float,
) -> dict[str, Any]:
    """Every server of the scenario ``method.runs`` times, interleaved: round 1 measures each
    server once, then round 2, and so on, so that drift in the machine's load spreads over all
    servers instead of landing on whichever was measured last."""
    scn: dict[str, Any] = {
        "name": scenario.name,
        "title": scenario.title,
        "section": scenario.section,
        "reference": SECTION_REFERENCE[scenario.section],
        "skipped": list(scenario.skip),
        "runs": method.runs,
        "results": [],
    }
    by_server: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    for run in range(1, method.runs + 1):
        for spec in round_order(specs, run):
            print(
                f"[{time.monotonic() - started:6.0f}s] {scenario.name} / {spec.name} "
                f"(run {run}/{method.runs}) ...",
                flush=True,
            )
            r = run_one(spec, scenario, method, log_dir, run)
            by_server[spec.name].append(r)
            scn.setdefault("wrk_argv", r.get("wrk_argv"))
            summary = r.get("error") or (
                f"{r['rps']:,.0f} req/s, p99 {_fmt_ms(r['p99_ms'])}, errors {r['error_total']}, "
                f"peak RSS {_fmt_mib(r['peak_rss'])}"
                + (f", ratio {r['ratio']:.2f}" if r.get("ratio") is not None else "")
            )
            if r.get("split") and not r.get("error"):
                summary += f"; split {_fmt_split(r['split'])}"
            print(f"         {summary.splitlines()[0]}", flush=True)
    scn["results"] = [aggregate(spec.name, by_server[spec.name]) for spec in specs]
    return scn


def _full_run_minutes() -> int:
    everything = plan([*SCENARIOS, *MULTI_SCENARIOS], set(BY_SERVER))
    return round(estimate_seconds(everything, Method(), set(EXTRA_RUNS)) / 60)


def write_doc(path: Path, data: dict[str, Any]) -> None:
    """The page rendered from ``data``, with the sections other scripts wrote into DOC kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data) + _kept_sections())
    print(f"wrote {path}")


def _outcome(result: dict[str, Any], key: str, summary: Callable[[dict[str, Any]], str]) -> None:
    """Print a run's summary, or its error when it has no ``key``."""
    print(
        "         " + (summary(result) if key in result else result.get("error", "failed")),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"A full run with the defaults takes about {_full_run_minutes()} minutes.",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        help=f"measurements of each (scenario, server), interleaved; the tables show their "
        f"median and every run (default {RUNS})",
    )
    parser.add_argument(
        "--duration",
        type=int,
        metavar="SECONDS",
        help=f"seconds of wrk per measurement (default {DURATION}, {QUICK_DURATION} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION} s per measurement instead of {DURATION}",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=WRK_THREADS,
        metavar="N",
        help=f"wrk's -t (default {WRK_THREADS})",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated server and/or scenario names; a run with no server name measures "
        "every server, with no scenario name every scenario (the runs besides wrk's scenarios "
        f"are scenarios); servers: {', '.join(BY_SERVER)}; scenarios: {', '.join(BY_SCENARIO)}, "
        f"{', '.join(EXTRA_RUNS)}",
    )
    parser.add_argument(
        "--doc",
        nargs="?",
        const=str(DOC),
        metavar="PATH",
        help=f"where to write the page (default {DOC.relative_to(procs.ROOT)}); a full run "
        "writes it without --doc, a run with --only only with --doc",
    )
    parser.add_argument("--render", metavar="JSON", help="only render the doc from saved results")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.duration is not None and args.duration < 1:
        parser.error("--duration must be at least 1")
    if args.wrk_threads < 1:
        parser.error("--wrk-threads must be at least 1")
    doc = Path(args.doc) if args.doc else DOC

    if args.render:
        write_doc(doc, json.loads(Path(args.render).read_text()))
        return 0

    only = {n.strip() for n in args.only.split(",") if n.strip()}
    extra_runs = set(EXTRA_RUNS)
    unknown = only - set(BY_SERVER) - set(BY_SCENARIO) - extra_runs
    if unknown:
        parser.error(f"unknown name(s): {', '.join(sorted(unknown))}")
    pick_servers = {n for n in only if n in BY_SERVER} or set(BY_SERVER)
    pick_scenarios = {n for n in only if n in BY_SCENARIO or n in extra_runs} or {
        *BY_SCENARIO,
        *extra_runs,
    }
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)
    method = Method(duration=duration, runs=args.runs, wrk_threads=args.wrk_threads)
    planned = plan(
        [s for s in (*SCENARIOS, *MULTI_SCENARIOS) if s.name in pick_scenarios],
        pick_servers,
    )
    extras = set(pick_scenarios & extra_runs)
    if CATALYZER_PREFORK.name not in pick_servers:
        extras -= set(PREFORK_RUNS)
    if "catalyzer" not in pick_servers:
        extras -= {"stream_rss", "large_rss", "scaling", "split", "nginx"}
    expected = estimate_seconds(planned, method, extras)
    print(
        f"{method.runs} run(s) of {method.duration} s per (scenario, server), wrk "
        f"-t{method.wrk_threads}; about "
        + (f"{expected / 60:.0f} minutes" if expected >= 120 else f"{expected} s"),
        flush=True,
    )
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / "logs" / run_id
    started = time.monotonic()
    data: dict[str, Any] = {
        "id": run_id,
        "quick": args.quick,
        "only": sorted(only),
        "duration": method.duration,
        "runs": method.runs,
        "wrk_threads": method.wrk_threads,
        "log_dir": str(log_dir.relative_to(procs.ROOT)),
        "machine": machine(),
        "scenarios": [],
    }
    for scenario, specs in planned:
        data["scenarios"].append(measure_scenario(scenario, specs, method, log_dir, started))
    if CATALYZER_PREFORK.name in pick_servers:
        pf: dict[str, Any] = {}
        for name, extra, hup_at in (
            ("reload_hup", (), HUP_AT),
            ("max_requests", ("--max-requests", str(MAX_REQUESTS)), None),
        ):
            if name not in pick_scenarios:
                continue
            print(f"[{time.monotonic() - started:6.0f}s] {name} / {CATALYZER_PREFORK.name} ...")
            r = run_prefork_load(name, extra, hup_at, log_dir, method.wrk_threads)
            pf[name] = r
            print(f"         {_prefork_summary(r)}", flush=True)
        if "split_paced" in pick_scenarios:
            print(f"[{time.monotonic() - started:6.0f}s] split_paced / {CATALYZER_PREFORK.name}")
            r = run_paced_split(log_dir)
            pf["split_paced"] = r
            print(
                "         "
                + (
                    r.get("error")
                    or f"{r['ok']} ok, {r['failed']} failed; split " + _fmt_split(r["split"])
                ),
                flush=True,
            )
        if pf:
            data["prefork"] = pf
    if "split" in pick_scenarios and "catalyzer" in pick_servers:
        from bench import split  # it uses run_wrk from here

        print(f"[{time.monotonic() - started:6.0f}s] split / catalyzer ...", flush=True)
        data["split"] = split.run(
            ["hello", "big", "hop", "scale", "scale-netns"],
            method.runs,
            method.duration,
            [1, 2, 4],
            None,
        )
    if "stream_rss" in pick_scenarios and "catalyzer" in pick_servers:
        print(f"[{time.monotonic() - started:6.0f}s] stream_rss / catalyzer ...", flush=True)
        data["stream_rss"] = stream_rss.run(log_dir)
        _outcome(
            data["stream_rss"],
            "peak_rss",
            lambda st: f"peak RSS {_fmt_mib(st['peak_rss'])}, complete={st['fast']['complete']}",
        )
    if "large_rss" in extras:
        data["large_rss"] = {}
        for app in ("huge", "huge_list"):
            print(f"[{time.monotonic() - started:6.0f}s] large_rss {app} / catalyzer ...")
            _outcome(
                data["large_rss"].setdefault(app, large_rss.run(log_dir, app)),
                "peak_over_idle",
                lambda r: f"{large_rss.size(r['peak_over_idle'])} over idle, ok={r['ok']}",
            )
    if "scaling" in extras:
        from bench import scaling

        print(f"[{time.monotonic() - started:6.0f}s] scaling / catalyzer ...", flush=True)
        data["scaling"] = scaling.run(
            {"threads", "concurrency", "idle"}, method.runs, method.duration
        )
    if "nginx" in extras:
        from bench import nginx_gateway

        print(f"[{time.monotonic() - started:6.0f}s] nginx / catalyzer and peers ...", flush=True)
        data["nginx"] = nginx_gateway.run(method.runs, method.duration)
    data["elapsed_seconds"] = round(time.monotonic() - started, 1)
    data["machine"]["loadavg_after"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{run_id}.json"
    out.write_text(json.dumps(data, indent=2))
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2))
    print(f"results: {out}")
    if not only:
        OFFICIAL.mkdir(exist_ok=True)
        (OFFICIAL / out.name).write_text(out.read_text())
    if not only or args.doc:
        write_doc(doc, data)
    print("\n".join(targets(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
