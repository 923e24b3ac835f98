"""A real nginx in front of catalyzer, for the integration tests of the gateway faces.

The server blocks are the ones ``docs/deploying.md`` shows: the fenced ``nginx`` block after each
``<!-- tested-config: NAME -->`` comment is used as it stands, but for its two addresses (``listen 80`` and
the upstream's ``server 127.0.0.1:PORT``), which become free loopback ports. The rest of the
configuration (pid file, logs, temporary directories) lives in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DEPLOYING = REPO / "docs" / "deploying.md"
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0

_BLOCK = re.compile(
    r"^<!-- tested-config: (?P<name>\S+) -->\n```nginx\n(?P<body>.*?)^```$", re.M | re.S
)
_UPSTREAM_SERVER = re.compile(r"(\n\s*server )127\.0\.0\.1:\d+;")


def documented_blocks() -> dict[str, str]:
    """``{name: server configuration}`` of the tested blocks in docs/deploying.md."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(DEPLOYING.read_text())}


def require_nginx() -> None:
    if not os.path.exists(NGINX):
        pytest.skip(f"nginx is not installed ({NGINX} missing): apt-get install nginx")
    for name in ("uwsgi_params", "fastcgi_params"):
        if not (Path("/etc/nginx") / name).exists():
            pytest.skip(f"/etc/nginx/{name} missing: apt-get install nginx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def placed(block: str, listen_port: int, upstream: str) -> str:
    """``block`` with its two addresses replaced; the test fails if either is not there once."""
    out, n = re.subn(r"\blisten 80;", f"listen 127.0.0.1:{listen_port};", block)
    assert n == 1, "the documented block must say 'listen 80;' once"
    out, n = _UPSTREAM_SERVER.subn(rf"\g<1>{upstream};", out)
    assert n == 1, "the documented block's upstream must have one 'server 127.0.0.1:PORT;'"
    return out


def write_config(directory: Path, servers: str) -> Path:
    for name in ("uwsgi_params", "fastcgi_params"):
        shutil.copy(Path("/etc/nginx") / name, directory / name)
    # Running as root, nginx's workers would switch to "nobody" and could not use this
    # directory: keep them as root. As another user nginx stays that user (and says so if told).
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        f"pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {directory}/access.log;\n"
        f"    client_body_temp_path {directory}/client_body;\n"
        f"    proxy_temp_path {directory}/proxy;\n"
        f"    fastcgi_temp_path {directory}/fastcgi;\n"
        f"    uwsgi_temp_path {directory}/uwsgi;\n"
        f"    scgi_temp_path {directory}/scgi;\n"
        "    client_max_body_size 8m;\n"
        f"{servers}\n"
        "}\n"
    )
    return conf


@contextlib.contextmanager
def running_nginx(directory: Path, servers: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``servers`` in its ``http`` block, until the block ends; waits (with a
    deadline) until ``port`` accepts connections. Stopped by its PID (QUIT, then KILL)."""
    conf = write_config(directory, servers)
    log = open(directory / "nginx.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        end = time.monotonic() + START_DEADLINE
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited with {proc.returncode}:\n{_logs(directory)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > end:
                pytest.fail(f"nginx did not listen within {START_DEADLINE:g}s:\n{_logs(directory)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_DEADLINE)
        log.close()


def _logs(directory: Path) -> str:
    parts = []
    for name in ("nginx.out", "error.log"):
        path = directory / name
        if path.exists():
            parts.append(f"--- {name} ---\n{path.read_text(errors='replace')}")
    return "\n".join(parts)


def established(port: int) -> int:
    """TCP connections established to local ``port`` (the server's ends), from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count
