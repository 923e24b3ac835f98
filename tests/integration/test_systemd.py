"""systemd socket activation: the server serves on a listening socket it inherits as fd 3."""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).parent / "twistd")


def _get(port: int, deadline: float) -> tuple[int, bytes]:
    """GET / until it answers or the deadline passes (the listening socket exists from the start,
    so connections queue; the first answer comes once the server has adopted it)."""
    end = time.monotonic() + deadline
    while True:
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=max(0.5, end - time.monotonic())
        )
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            if time.monotonic() > end:
                raise
        finally:
            conn.close()


@pytest.mark.parametrize("procs", ["1", "2"])
def test_serves_on_inherited_socket(tmp_path: Path, procs: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    command = [
        TWISTD,
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        "tests.integration.apps:app",
        "--listen",
        "systemd:domain=INET:index=0",
        "--procs",
        procs,
    ]
    # bash (dash takes only one-digit fds) moves the socket to fd 3 (where systemd puts the first one), sets LISTEN_PID to
    # its own pid and becomes twistd, which keeps that pid.
    fd = listener.fileno()
    move = "" if fd == 3 else f"exec 3<&{fd} {fd}<&-; "
    script = f"{move}LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http exec {shlex.join(command)}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        ["/bin/bash", "-c", script], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,)
    )
    try:
        status, body = _get(port, deadline=20.0)
        assert status == 200, (tmp_path / "server.log").read_text()
        assert body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        listener.close()
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()


def test_missing_systemd_socket_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "catalyzer",
            "--app",
            "tests.integration.apps:app",
            "--listen",
            "systemd:domain=INET:index=0",
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "catalyzer: error: --listen 'systemd:domain=INET:index=0': no socket" in result.stderr
