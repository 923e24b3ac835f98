"""Real ``twistd -n catalyzer`` processes on 127.0.0.1 for the integration tests.

``start_server(*args)`` starts one, waits until its log says ``listening on`` for every
``--listen`` it was given, and reads the real ports from those lines (so ``tcp:0`` needs no free
port guessing). Every process started is stopped in teardown: SIGTERM, then SIGKILL after a
deadline, by PID.

Every test that takes ``server_mode`` (directly or through ``start_server`` / ``served``) runs once
per entry of :data:`KINDS`: each of :data:`MODES`, so adding ``"prefork": ["--procs", "2"]`` there
runs the same tests against a pre-forking server: there the master logs ``listening on`` and, for
each worker, ``worker N (pid P) ready``; a server counts as started once all ``--procs`` workers
are ready. And ``"split"``: the same HTTP behaviour end to end through a ``catalyzer-front`` and
one ``catalyzer-handler`` running the app (:class:`SplitServer`), started once the front says
where handlers connect and counted as started once the handler has joined.

A test that cannot apply to split mode says so with ``@pytest.mark.split_skip("why")``; one that
shows a split-mode bug not fixed yet with ``@pytest.mark.split_xfail("exact reason")`` (strict:
it fails the run the day the bug is fixed, so the mark goes with the fix).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
APPS = "tests.integration.apps"
LOCAL_TCP = "tcp:0:interface=127.0.0.1"

# Mode name -> extra command-line arguments.
MODES: dict[str, list[str]] = {"single": [], "prefork": ["--procs", "2"]}
# Every server kind the behaviour suites run against: the modes of one ``catalyzer`` process, and
# split mode (a front and a handler).
KINDS: list[str] = [*MODES, "split"]

START_DEADLINE = 20.0  # from exec to "listening on" (twistd imports take ~0.3 s when idle)
STOP_DEADLINE = 10.0  # from SIGTERM to exit, before teardown falls back to SIGKILL
POLL = 0.05  # how long one poll waits on the process before looking at its log again
CLIENT_TIMEOUT = 15.0  # socket timeout of every client in these tests

_LISTENING = re.compile(r"listening on (?P<description>\S+) \((?P<address>.*)\)\s*$", re.M)
# In prefork mode the workers' own log lines reach the master's log tagged with this prefix.
_WORKER_LINE = re.compile(r"\[worker \d+ pid \d+\] ")
# The master's line for a worker that finished booting (prefork mode).
READY = re.compile(
    r"\[catalyzer\.prefork\.master#\w+\] worker (?P<slot>\d+) \(pid (?P<pid>\d+)\) ready$", re.M
)
_PORT = re.compile(r"port=(\d+)")
# A split front's line naming the ZeroMQ endpoint its handlers connect to, and its line for each
# handler that joined.
HANDLERS_AT = r"front: handlers connect to (tcp://\S+)"
JOINED = r"handler \S+ pid (\d+) tag \S+ joined with"
_HOST = re.compile(r"host='([^']*)'")


def twistd_path() -> str:
    here = Path(sys.executable).parent / "twistd"
    if here.exists():
        return str(here)
    found = shutil.which("twistd") or str(REPO / ".venv" / "bin" / "twistd")
    return found


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Listening:
    description: str
    address: str

    @property
    def port(self) -> int | None:
        m = _PORT.search(self.address)
        return int(m.group(1)) if m else None

    @property
    def host(self) -> str | None:
        m = _HOST.search(self.address)
        return m.group(1) if m else None


class ServerProcess:
    """One ``twistd -n catalyzer`` process, its output captured in a file."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str],
        command: str = "catalyzer",
        prefix: Sequence[str] = (),
    ) -> None:
        # ``prefix`` runs it through another command that execs it (ip netns exec NS): the pid
        # is still the server's.
        self.args = [*prefix, twistd_path(), "-n", "--pidfile=", command, *args]
        self.log_path = log_path
        self.expected_listens = max(
            1, sum(1 for a in args if a in ("--listen", "-l", "--uwsgi", "--fastcgi"))
        )
        self.procs = _procs(args)
        self._children: dict[int, int] = {}  # worker pid -> start time (prefork mode)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.proc.pid
        self.listening: list[Listening] = []
        # Set once the test itself asked the process to stop (and so gave it a deadline).
        self.stop_requested = False

    # -- output

    def own_log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def log(self) -> str:
        """What the tests read as the server's log (a split server adds its handler's)."""
        return self.own_log()

    def _describe(self) -> str:
        status = self.proc.poll()
        state = "running" if status is None else f"exited with status {status}"
        return f"server pid {self.pid} ({state}), command {self.args}\n--- log ---\n{self.log()}"

    def _pause(self, seconds: float) -> None:
        """Wait a little for the process to exit; this is the polling interval."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(0.0, seconds))

    def wait_until(self, check: Callable[[], T | None], deadline: float, what: str) -> T:
        """Poll ``check`` until it returns something other than None; fail (with the log) when
        ``deadline`` seconds pass or the process exits first."""
        end = time.monotonic() + deadline
        while True:
            result = check()
            if result is not None:
                return result
            if self.proc.poll() is not None:
                result = check()  # one last look: it may have happened just before the exit
                if result is not None:
                    return result
                pytest.fail(f"server exited before {what}\n{self._describe()}")
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} within {deadline:g}s\n{self._describe()}")
            self._pause(min(POLL, left))

    def wait_for_log(self, pattern: str, deadline: float = 10.0, count: int = 1) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (a regex) ``count`` times; return the last
        match."""
        regex = re.compile(pattern, re.M)

        def check() -> re.Match[str] | None:
            matches = list(regex.finditer(self.log()))
            return matches[count - 1] if len(matches) >= count else None

        return self.wait_until(check, deadline, f"{pattern!r} in the log")

    def _own_listening(self) -> list[Listening]:
        """The ``listening on`` lines of the process itself (not those its workers log)."""
        return [
            Listening(m.group("description"), m.group("address"))
            for m in _LISTENING.finditer(self.own_log())
            if not _WORKER_LINE.search(_line_of(m.string, m.start()))
        ]

    def wait_listening(self, deadline: float = START_DEADLINE) -> None:
        """Wait until the process listens on every endpoint and, in prefork mode, until all its
        workers are ready."""
        end = time.monotonic() + deadline

        def listening() -> list[Listening] | None:
            found = self._own_listening()
            return found if len(found) >= self.expected_listens else None

        self.listening = self.wait_until(listening, deadline, "'listening on' in the log")
        if self.procs > 1:
            self.wait_ready(self.procs, max(0.0, end - time.monotonic()))

    # -- prefork workers

    def ready_workers(self) -> list[tuple[int, int]]:
        """``(slot, pid)`` of every ``worker N (pid P) ready`` line so far, oldest first."""
        ready = [(int(m.group("slot")), int(m.group("pid"))) for m in READY.finditer(self.log())]
        for _, pid in ready:
            if pid not in self._children:
                stat = _stat(pid)
                if stat is not None and stat[1] == self.pid:
                    # Our child: remember it by pid and start time, for the teardown.
                    self._children[pid] = stat[2]
        return ready

    def wait_ready(self, count: int, deadline: float = START_DEADLINE) -> list[tuple[int, int]]:
        """Wait until ``count`` workers have been ready (in all); return them all."""

        def check() -> list[tuple[int, int]] | None:
            ready = self.ready_workers()
            return ready if len(ready) >= count else None

        return self.wait_until(check, deadline, f"{count} 'worker N (pid P) ready' lines")

    def worker_pids(self) -> list[int]:
        """Every worker pid this master reported ready, oldest first."""
        return [pid for _, pid in self.ready_workers()]

    # -- addresses

    @property
    def port(self) -> int:
        for entry in self.listening:
            if entry.port is not None:
                return entry.port
        raise AssertionError(f"no TCP endpoint in {self.listening}")

    @property
    def url(self) -> str:
        for entry in self.listening:
            if entry.port is not None:
                scheme = "https" if entry.description.startswith("ssl:") else "http"
                return f"{scheme}://127.0.0.1:{entry.port}"
        raise AssertionError(f"no TCP endpoint in {self.listening}")

    # -- process control

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop_requested = True

    def wait_exit(self, deadline: float) -> int:
        """The exit status, failing the test (with the log) if it takes longer than ``deadline``."""
        try:
            return self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit within {deadline:g}s\n{self._describe()}")

    def terminate(self, deadline: float = STOP_DEADLINE) -> int:
        """SIGTERM, then SIGKILL if still running after ``deadline``. Returns the exit status.

        A process the test already sent SIGTERM or SIGINT to, and which is still running, has
        had its deadline (the test's): it is killed at once rather than waited for again."""
        if self.stop_requested:
            self.kill()
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait(timeout=STOP_DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_DEADLINE)

    def kill_stray_workers(self) -> list[int]:
        """After the master has exited: SIGKILL any worker it left running. Only processes seen
        as this master's children are touched, recognised by pid and start time (a pid can be
        reused). Returns the pids killed."""
        killed = []
        for pid, started in self._children.items():
            stat = _stat(pid)
            if stat is not None and stat[0] not in ("Z", "X") and stat[2] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    # -- clients

    def connection(self, timeout: float = CLIENT_TIMEOUT) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request on a new connection: (status, headers, body)."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()


# Split mode: the options that are the handler's alone (the app and how it runs), and those both
# sides take. Every other option is the front's; one neither takes is refused here, so a test
# that needs it must be marked ``split_skip`` rather than silently run without it.
_HANDLER_ONLY = frozenset(
    [
        "--app",
        "--threads",
        "--procs",
        "-p",
        "--timeout",
        "--worker-liveness",
        "--tag",
        "--weight",
        "--max-requests",
        "--max-requests-jitter",
        "--max-worker-rss",
    ]
)
_BOTH = frozenset(["--die-timeout", "--write-timeout"])
_NEITHER = frozenset(
    [
        "--handoff-after",
        "--reload",
        "--watch",
        "--reuse-port",
        "--uwsgi",
        "--fastcgi",
    ]
)
_FLAGS = frozenset(["--reload", "--reuse-port", "--insecure-handlers"])
# Heartbeats fast enough that a lost handler shows within the tests' deadlines.
_SPLIT_TIMING = ["--heartbeat-interval", "0.2", "--handler-liveness", "1.5"]


def split_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(front, handler)`` arguments from one ``catalyzer`` command line."""
    front: list[str] = []
    handler: list[str] = []
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        takes_value = not eq and name not in _FLAGS
        option = list(args[i : i + (2 if takes_value else 1)])
        i += len(option)
        if name in _NEITHER:
            raise AssertionError(
                f"split mode has no {name}: mark the test split_skip with the reason"
            )
        if name in _HANDLER_ONLY:
            handler += option
        elif name in _BOTH:
            front += option
            handler += option
        else:
            front += option
    return front, handler


class SplitServer(ServerProcess):
    """A ``catalyzer-front`` and one ``catalyzer-handler`` connected to it, as one server.

    It is the front for everything HTTP (pid, port, signals, exit status); its log is the
    front's followed by the handler's, so app output (tracebacks, markers written to
    ``wsgi.errors``) is found where the tests look for it. The access log is the front's (the
    handler's own is turned off, or every request would be logged twice)."""

    def __init__(
        self, args: Sequence[str], directory: Path, env: Mapping[str, str], index: int
    ) -> None:
        front_args, handler_args = split_arguments(args)
        super().__init__(
            ["--handlers", "tcp://127.0.0.1:*", *_SPLIT_TIMING, *front_args],
            directory / f"front-{index}.log",
            env,
            command="catalyzer-front",
        )
        self.procs = 1  # the front has no workers; the handler's --procs is the handler's
        self.joins = max(1, _procs(handler_args))
        self.handler: ServerProcess | None = None
        # The front says where handlers connect as soon as it runs (it loads no app): the
        # handler starts then, whether or not the caller waits for it to join.
        try:
            endpoint = self.wait_for_log(HANDLERS_AT, START_DEADLINE).group(1)
        except BaseException:
            self.kill()  # not the launcher's yet: it would not stop it
            raise
        self.handler = ServerProcess(
            ["--connect", endpoint, "--access-log", "off", *_SPLIT_TIMING, *handler_args],
            directory / f"handler-{index}.log",
            env,
            command="catalyzer-handler",
        )

    def log(self) -> str:
        text = self.own_log()
        if self.handler is not None:
            text += "\n" + self.handler.own_log()
        return text

    def wait_listening(self, deadline: float = START_DEADLINE) -> None:
        """Until the front listens and the handler has joined (each of its processes, with
        ``--procs``)."""
        end = time.monotonic() + deadline
        super().wait_listening(deadline)
        assert self.handler is not None
        self.handler.wait_until(
            lambda: True if len(re.findall(JOINED, self.own_log())) >= self.joins else None,
            max(0.0, end - time.monotonic()),
            f"{self.joins} handler process(es) joined in the front's log",
        )

    def ready_workers(self) -> list[tuple[int, int]]:
        """The handler's workers (with ``--procs``): the processes that run the app. Noted, as
        for a prefork master, for the teardown."""
        return self.handler.ready_workers() if self.handler is not None else []

    def kill_stray_workers(self) -> list[int]:
        return self.handler.kill_stray_workers() if self.handler is not None else []

    def terminate(self, deadline: float = STOP_DEADLINE) -> int:
        status = super().terminate(deadline)
        if self.handler is not None:
            self.handler.terminate(deadline)
        return status

    def kill(self) -> None:
        super().kill()
        if self.handler is not None:
            self.handler.kill()


class Launcher:
    """Starts servers for a test (or a module) and stops them all afterwards."""

    def __init__(self, mode: str, directory: Path) -> None:
        self.mode = mode
        self.directory = directory
        self.servers: list[ServerProcess] = []

    def __call__(
        self,
        *args: str,
        app: str | None = f"{APPS}:app",
        listen: Sequence[str] | None = (LOCAL_TCP,),
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        argv: list[str] = []
        if app is not None:
            argv += ["--app", app]
        for endpoint in listen or ():
            argv += ["--listen", endpoint]
        argv += MODES.get(self.mode, [])
        argv += args
        server: ServerProcess
        if self.mode == "split":
            server = SplitServer(argv, self.directory, child_env(env), len(self.servers))
        else:
            log_path = self.directory / f"server-{len(self.servers)}.log"
            server = ServerProcess(argv, log_path, child_env(env))
        self.servers.append(server)
        if wait:
            server.wait_listening()
        return server

    def close(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.ready_workers()  # note the workers while they are still the master's
            server.terminate()
            server.kill_stray_workers()


def _procs(args: Sequence[str]) -> int:
    """The ``--procs`` value among command-line arguments (1 if absent)."""
    procs = 1
    for i, arg in enumerate(args):
        if arg in ("--procs", "-p") and i + 1 < len(args):
            procs = int(args[i + 1])
        elif arg.startswith("--procs="):
            procs = int(arg.partition("=")[2])
    return procs


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start : end if end >= 0 else len(text)]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` from ``/proc/PID/stat``, None if there is no PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The fields after the parenthesised command name (which may itself contain ")").
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[19])


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server still sends before it closes the connection (bounded by the timeout)."""
    sock.settimeout(CLIENT_TIMEOUT)
    data = b""
    for _ in range(1000):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        pytest.fail(f"the server kept sending: {data[:200]!r}...")
    return data


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process: a zombie (exited, not yet reaped) counts as gone."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def proc_title(pid: int) -> str:
    """``/proc/PID/cmdline`` as text (setproctitle's title, for our masters and workers)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In split mode, skip the tests marked ``split_skip`` and expect the ``split_xfail`` ones to
    fail (strictly), each with its mark's reason."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("server_mode") != "split":
            continue
        for mark in item.iter_markers("split_skip"):
            item.add_marker(pytest.mark.skip(reason=f"split mode: {mark.args[0]}"))
        for mark in item.iter_markers("split_xfail"):
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"split mode: {mark.args[0]}"))


@pytest.fixture(scope="session", params=KINDS)
def server_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def start_server(server_mode: str, tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(server_mode, tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module", params=["0", "4"], ids=["threads0", "threads4"])
def served(
    request: pytest.FixtureRequest, server_mode: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server shared by the tests of a module that don't need a process of their own, running
    ``apps:app`` both in the reactor thread (``--threads 0``) and in a pool (``--threads 4``)."""
    launcher = Launcher(server_mode, tmp_path_factory.mktemp("served"))
    try:
        yield launcher("--threads", request.param, "--access-log", "off")
    finally:
        launcher.close()


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    deadline: float = 20.0,
    command: str = "catalyzer",
    address_space: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """``twistd -n --pidfile= COMMAND ARGS`` to completion; the test fails if it outlives
    ``deadline`` (the child is killed). ``address_space`` limits the child's (``RLIMIT_AS``, in
    bytes): a machine that refuses memory, as an ulimit or a container would."""
    argv = [twistd_path(), "-n", "--pidfile=", command, *args]

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    try:
        return subprocess.run(
            argv,
            check=False,
            cwd=REPO,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=deadline,
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{argv} still running after {deadline:g}s; output so far: {e.output!r}")
