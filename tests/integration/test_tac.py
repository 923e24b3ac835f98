"""The documented .tac example runs under `twistd -ny`, in both modes."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def get(path: Path) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    conn = http.client.HTTPConnection("localhost")
    conn.sock = sock
    try:
        conn.request("GET", "/")
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.mark.parametrize("procs", ["1", "2"])
def test_tac_example_serves(tmp_path: Path, procs: str) -> None:
    sock = tmp_path / "tac.sock"
    env = dict(os.environ, CATALYZER_LISTEN=f"unix:{sock}", CATALYZER_PROCS=procs)
    log = (tmp_path / "tac.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "twistd"),
            "-n",
            "--pidfile=",
            "-y",
            "examples/catalyzer.tac",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        end = time.monotonic() + 20
        while True:
            try:
                body = get(sock)
                break
            except OSError:
                assert time.monotonic() < end, (tmp_path / "tac.log").read_text()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)  # a pause that ends early if it dies
                assert proc.poll() is None, (tmp_path / "tac.log").read_text()
        assert body == b"Hello from catalyzer!\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
    assert proc.returncode == 0, (tmp_path / "tac.log").read_text()
