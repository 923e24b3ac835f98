"""``twistd -n catalyzer-dispatch``: a module's functions over XML-RPC, on 127.0.0.1, called with
xmlrpc.client. Every wait has a deadline; every process started is stopped by pid."""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    CLIENT_TIMEOUT,
    POLL,
    REPO,
    START_DEADLINE,
    STOP_DEADLINE,
    child_env,
    pid_alive,
    twistd_path,
)

pytestmark = pytest.mark.integration

_LISTENING = re.compile(
    r"listening on \S+ \(IPv4Address\(type='TCP', host='127\.0\.0\.1', port=(\d+)\)"
)
_READY = re.compile(r"child (\d+) \(pid (\d+)\) ready")


class Face:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self.argv = [twistd_path(), "-n", "--pidfile=", "catalyzer-dispatch", *args]
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_for(self, pattern: re.Pattern[str], count: int = 1) -> list[re.Match[str]]:
        end = time.monotonic() + START_DEADLINE
        while True:
            found = list(pattern.finditer(self.log()))
            if len(found) >= count:
                return found
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"no {pattern.pattern!r} x{count}: {self.argv}\n{self.log()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=POLL)  # the polling interval

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE)
                return None
        return self.proc.returncode


class _Transport(xmlrpc.client.Transport):
    def make_connection(self, host: object) -> http.client.HTTPConnection:
        conn = super().make_connection(host)  # type: ignore[arg-type]
        conn.timeout = CLIENT_TIMEOUT
        return conn


@pytest.fixture
def face(tmp_path: Path) -> Iterator[Face]:
    server = Face(
        [
            "--methods",
            "tests.dispatch.tasks",
            "--procs",
            "2",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--timeout",
            "5",
            "--verbose",
            "1",
        ],
        tmp_path / "face.log",
    )
    children: list[int] = []
    try:
        yield server
    finally:
        children = [int(m.group(2)) for m in _READY.finditer(server.log())]
        server.stop()
        for pid in children:
            assert not pid_alive(pid), f"child {pid} outlived catalyzer-dispatch"


def test_xmlrpc_calls_run_in_the_pool(face: Face) -> None:
    port = int(face.wait_for(_LISTENING)[0].group(1))
    ready = face.wait_for(_READY, count=2)
    pids = {int(m.group(2)) for m in ready}
    proxy = xmlrpc.client.ServerProxy(
        f"http://127.0.0.1:{port}/",
        allow_none=True,
        transport=_Transport(use_builtin_types=True),
    )
    assert proxy.add(2, 3) == 5
    assert proxy.echo({"a": [1, 2.5, None, "é"]}) == {"a": [1, 2.5, None, "é"]}
    assert proxy.pid() in pids
    assert len(proxy.big(200_000)) == 200_000  # more than one AMP message each way
    for method, code, text in [
        ("boom", 8002, "ValueError: hi"),
        ("nothing_here", 8001, "UnknownMethod"),
        ("_private", 8001, "no method"),
        ("os:system", 8001, "no method"),  # never an import path from the network
        ("system.listMethods", 8001, "no method"),
    ]:
        with pytest.raises(xmlrpc.client.Fault) as info:
            getattr(proxy, method)("hi")
        assert info.value.faultCode == code and text in info.value.faultString
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy.crash()
    assert info.value.faultCode == 8002 and "ChildDied" in info.value.faultString
    assert "Traceback" not in info.value.faultString
    assert proxy.add(1, 1) == 2  # the pool goes on
    face.proc.send_signal(signal.SIGUSR1)
    face.wait_for(re.compile(r"dispatcher 'catalyzer dispatch' in pid \d+: 2/2 children"))
    assert face.stop() == 0
    assert "stopped: no child left" in face.log()


def test_methods_module_that_does_not_import_exits_3(tmp_path: Path) -> None:
    server = Face(
        [
            "--methods",
            "no_such_module_here",
            "--procs",
            "1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ],
        tmp_path / "face.log",
    )
    try:
        status = server.proc.wait(timeout=START_DEADLINE)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"still running\n{server.log()}")
    assert status == 3, server.log()
    assert "No module named 'no_such_module_here'" in server.log()


def test_methods_is_required(tmp_path: Path) -> None:
    server = Face(["--procs", "1"], tmp_path / "face.log")
    try:
        status = server.proc.wait(timeout=START_DEADLINE)
    finally:
        server.stop()
    assert status != 0 and "--methods MODULE is required" in server.log()
