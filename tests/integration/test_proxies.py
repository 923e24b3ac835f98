"""catalyzer behind a real nginx and a real HAProxy, configured as ``docs/deploying.md`` says.

The proxy configurations are the fenced blocks after the ``<!-- tested-config: NAME -->``
comments of ``docs/deploying.md``, used as written but for their addresses (see
:func:`doc_config`). Each test starts its own proxy in a temporary directory (no daemon, logs and
pid there, loopback ports) and stops it by pid. Without nginx or HAProxy installed
(``apt-get install nginx haproxy``; ``.ci/run`` does) the tests are skipped.

Addresses: nginx connects to catalyzer from 127.0.0.2 (``proxy_bind``), the only address catalyzer
is told to trust; clients connect from 127.0.0.3 through a proxy, and from 127.0.0.1 directly, so
that an address the application sees could only have come from where the test expects.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Launcher
from tests.integration.test_serving import _self_signed

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")
HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin:/usr/local/sbin")
SS = shutil.which("ss", path="/usr/bin:/bin:/usr/sbin:/sbin")
PROXY_START_DEADLINE = 10.0
TIMEOUT = 15.0
CLIENT = "127.0.0.3"  # where the test's clients come from when they go through a proxy
NGINX_SOURCE = "127.0.0.2"  # where nginx connects to catalyzer from (the trusted proxy)

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)"
)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; .ci/run does)"
)


def doc_config(name: str) -> str:
    """The fenced block that follows ``<!-- tested-config: NAME -->`` in docs/deploying.md."""
    text = (REPO / "docs" / "deploying.md").read_text()
    m = re.search(
        rf"<!-- tested-config: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL
    )
    assert m is not None, f"no tested-config {name!r} block in docs/deploying.md"
    return m.group(1) + "\n"


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` (which must occur exactly once) replaced: the doc and the test
    cannot drift apart silently."""
    assert text.count(old) == 1, f"{old!r} should occur once in the documented config:\n{text}"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ProxyProcess:
    """A proxy started by the test, stopped by its pid."""

    def __init__(self, argv: list[str], directory: Path, port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self.directory = directory
        with open(directory / "stdout.log", "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_accepting()

    def logs(self) -> str:
        parts = []
        for path in (self.directory / "stdout.log", self.log_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + PROXY_START_DEADLINE
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"proxy exited with {self.proc.returncode}:\n{self.logs()}")
            with socket.socket() as s:
                s.settimeout(1.0)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"proxy not accepting within {PROXY_START_DEADLINE}s:\n{self.logs()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def running(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    try:
        yield proxy
    finally:
        proxy.stop()


def start_nginx(directory: Path, upstream_port: int) -> tuple[ProxyProcess, Path]:
    """nginx serving the documented site on a free port, over TLS with a test certificate."""
    assert NGINX is not None
    key, cert = _self_signed(directory)
    port = free_port()
    site = doc_config("nginx")
    site = replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replace_once(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    site = replace_once(site, "/etc/ssl/certs/example.com.pem", str(cert))
    site = replace_once(site, "/etc/ssl/private/example.com.key", str(key))
    (directory / "site.conf").write_text(site)
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    # What a distribution's nginx.conf holds around a site, kept inside the temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"""daemon off;
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    proxy_bind {NGINX_SOURCE};
    include {directory}/site.conf;
}}
"""
    )
    argv = [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    argv += ["-e", str(directory / "error.log")]
    return ProxyProcess(argv, directory, port, directory / "error.log"), cert


def echo(conn: http.client.HTTPConnection, headers: dict[str, str] | None = None) -> Any:
    conn.request("GET", "/echo", headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    return json.loads(body)


def upstream_connections(server_port: int) -> int:
    """Established connections from nginx's address to catalyzer's port (``ss``)."""
    assert SS is not None
    out = subprocess.run(
        [
            SS,
            "-Htn",
            "state",
            "established",
            "src",
            NGINX_SOURCE,
            "dst",
            f"127.0.0.1:{server_port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    return len(out.splitlines())


SPOOF = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "admin.internal",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/admin",
    "Forwarded": "for=6.6.6.6;proto=http;host=admin.internal",
}


@needs_nginx
def test_behind_nginx(start_server: Launcher, tmp_path: Path) -> None:
    server = start_server("--forwarded-allow-ips", NGINX_SOURCE, "--access-log", "-")
    proxy, cert = start_nginx(tmp_path, server.port)
    with running(proxy):
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", proxy.port, timeout=TIMEOUT, context=context, source_address=(CLIENT, 0)
        )
        try:
            for _ in range(3):
                info = echo(conn, {"Host": "example.com", **SPOOF})
                assert info["remote_addr"] == CLIENT  # the rightmost untrusted hop
                assert info["remote_port"] == ""
                assert (info["url_scheme"], info["https"]) == ("https", "on")
                assert info["http_host"] == f"example.com:{proxy.port}"
                assert (info["server_name"], info["server_port"]) == (
                    "example.com",
                    str(proxy.port),
                )
                assert info["script_name"] == ""  # the client's X-Forwarded-Prefix was cleared
                assert info["proxy_headers"] == {
                    "HTTP_X_FORWARDED_FOR": f"6.6.6.6, {CLIENT}",
                    "HTTP_X_FORWARDED_PROTO": "https",
                    "HTTP_X_FORWARDED_HOST": "example.com",
                    "HTTP_X_FORWARDED_PORT": str(proxy.port),
                }
        finally:
            conn.close()
        # proxy_http_version 1.1 + keepalive: the three requests shared one upstream connection.
        if SS is not None:
            assert upstream_connections(server.port) == 1
        # The access log names the client, not nginx.
        server.wait_for_log(rf'^.*{re.escape(CLIENT)} - - \[.*"GET /echo HTTP/1.1" 200 ', count=3)

        # A client reaching catalyzer directly (from 127.0.0.1, not trusted) cannot spoof.
        direct = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        try:
            info = echo(direct, {"Host": "backend", **SPOOF})
        finally:
            direct.close()
        assert info["remote_addr"] == "127.0.0.1"
        assert (info["url_scheme"], info["https"]) == ("http", None)
        assert (info["http_host"], info["server_port"]) == ("backend", str(server.port))
        assert info["script_name"] == ""
        assert info["proxy_headers"] == {}  # removed: the app cannot be fooled either


def start_haproxy(directory: Path, upstream_port: int) -> ProxyProcess:
    """HAProxy with the documented configuration, on a free port."""
    assert HAPROXY is not None
    port = free_port()
    config = doc_config("haproxy")
    config = replace_once(config, "bind :80", f"bind 127.0.0.1:{port}")
    config = replace_once(config, "127.0.0.1:8000", f"127.0.0.1:{upstream_port}")
    path = directory / "haproxy.cfg"
    path.write_text(config)
    # -db: in the foreground, not a daemon; no stats socket, no chroot, no pid file.
    return ProxyProcess([HAPROXY, "-db", "-f", str(path)], directory, port, directory / "none")


@needs_haproxy
def test_behind_haproxy_with_proxy_protocol_v2(start_server: Launcher, tmp_path: Path) -> None:
    server = start_server("--access-log", "-", listen=["haproxy:tcp:0:interface=127.0.0.1"])
    with running(start_haproxy(tmp_path, server.port)) as proxy:
        conn = http.client.HTTPConnection(
            "127.0.0.1", proxy.port, timeout=TIMEOUT, source_address=(CLIENT, 0)
        )
        try:
            conn.connect()
            assert conn.sock is not None
            client_port = conn.sock.getsockname()[1]
            for _ in range(3):  # keep-alive: one client connection, one PROXY header
                info = echo(conn, {"Host": "example.com", **SPOOF})
                assert (info["remote_addr"], info["remote_port"]) == (CLIENT, str(client_port))
                assert (info["url_scheme"], info["http_host"]) == ("http", "example.com")
                # The client (127.0.0.3) is not a trusted proxy: its headers are gone.
                assert info["proxy_headers"] == {}
                assert info["script_name"] == ""
        finally:
            conn.close()
        server.wait_for_log(rf'^.*{re.escape(CLIENT)} - - \[.*"GET /echo HTTP/1.1" 200 ', count=3)

    # A connection that bypasses the proxy gets nothing, and the log says why.
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024) == b""
    server.wait_for_log(
        r"closed connection from 127\.0\.0\.1 without a valid PROXY header \(not a PROXY header\)"
    )


def test_trusting_everyone_is_warned_about_once(start_server: Launcher) -> None:
    server = start_server("--forwarded-allow-ips", "*")
    warning = "--forwarded-allow-ips '*': every client can set REMOTE_ADDR"
    server.wait_for_log(re.escape(warning))
    status, _, body = server.request("GET", "/echo", headers={"X-Forwarded-For": "192.0.2.1"})
    assert (status, json.loads(body)["remote_addr"]) == (200, "192.0.2.1")
    assert server.log().count(warning) == 1  # from the master only, in prefork mode
