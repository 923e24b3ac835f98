"""catalyzer behind a real nginx over uwsgi and FastCGI, with the configurations that
docs/deploying.md shows (see tests/integration/nginx.py), in single-process and prefork mode."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration import apps
from tests.integration.conftest import CLIENT_TIMEOUT, Launcher, ServerProcess
from tests.integration.nginx import (
    documented_blocks,
    established,
    free_port,
    placed,
    require_nginx,
    running_nginx,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.split_skip("a split front serves HTTP only: no --uwsgi or --fastcgi face"),
]

FACES = ("uwsgi", "fastcgi")
HOST = "app.example.test"
# Clients reach nginx from this address: not catalyzer's own peer (nginx, 127.0.0.1), and not in
# the default --forwarded-allow-ips, so what the application sees can only come from nginx.
CLIENT = "127.0.0.3"
SPOOF = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"}


@dataclass
class Front:
    face: str
    port: int  # nginx's
    backend: int  # catalyzer's
    server: ServerProcess

    def connection(self, source: str = CLIENT) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=CLIENT_TIMEOUT, source_address=(source, 0)
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        source: str = CLIENT,
    ) -> tuple[int, http.client.HTTPMessage, bytes, int]:
        """``(status, headers, body, client port)`` of one request on a new connection."""
        conn = self.connection(source)
        try:
            conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
            assert conn.sock is not None
            client_port = conn.sock.getsockname()[1]
            response = conn.getresponse()
            return response.status, response.headers, response.read(), client_port
        finally:
            conn.close()


@contextlib.contextmanager
def fronted(face: str, launcher: Launcher, directory: Path, *args: str) -> Iterator[Front]:
    """catalyzer serving ``face`` (with ``args``) behind nginx configured as the docs say."""
    require_nginx()
    block = documented_blocks().get(face)
    assert block is not None, f"docs/deploying.md has no 'tested-config: {face}' nginx block"
    server = launcher(
        f"--{face}", "tcp:0:interface=127.0.0.1", "--access-log", "-", *args, listen=()
    )
    backend = server.port
    port = free_port()
    directory.mkdir()
    with running_nginx(directory, placed(block, port, f"127.0.0.1:{backend}"), port):
        yield Front(face, port, backend, server)


@contextlib.contextmanager
def shared_front(
    face: str, server_mode: str, factory: pytest.TempPathFactory, *args: str
) -> Iterator[Front]:
    """One nginx and catalyzer for the tests of this module that leave the processes as they
    found them."""
    directory = factory.mktemp(f"front-{face}")
    launcher = Launcher(server_mode, directory)
    try:
        with fronted(face, launcher, directory / "nginx", *args) as served:
            yield served
    finally:
        launcher.close()


@pytest.fixture(scope="module", params=FACES)
def front(
    request: pytest.FixtureRequest, server_mode: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    with shared_front(request.param, server_mode, tmp_path_factory) as served:
        yield served


@pytest.fixture(scope="module", params=FACES)
def threaded_front(
    request: pytest.FixtureRequest, server_mode: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    with shared_front(request.param, server_mode, tmp_path_factory, "--threads", "4") as served:
        yield served


@pytest.fixture(params=FACES)
def own_front(
    request: pytest.FixtureRequest, start_server: Launcher, tmp_path: Path
) -> Iterator[Front]:
    """A fresh nginx and catalyzer, for a test that counts connections or reloads."""
    with fronted(request.param, start_server, tmp_path / "nginx") as served:
        yield served


def test_get_environ(front: Front) -> None:
    status, _, body, client_port = front.request("GET", "/echo?x=1&y=%20", headers=SPOOF)
    assert status == 200, body
    info: dict[str, Any] = json.loads(body)
    assert info["method"] == "GET"
    assert info["path"] == "/echo"
    assert info["query"] == "x=1&y=%20"
    assert info["script_name"] == ""
    # Who the client is, as nginx saw it: its address and port, not nginx's upstream socket.
    assert info["remote_addr"] == CLIENT
    assert info["remote_port"] == str(client_port)
    assert info["url_scheme"] == "http"
    # The client is not a trusted proxy: what it claims is removed, not believed.
    assert info["proxy_headers"] == {}
    assert info["http_host"] == HOST
    assert info["server_port"] == str(front.port)
    assert info["server_protocol"] == "HTTP/1.1"
    assert info["body_length"] == 0
    # The access log has the request, as the HTTP face would log it.
    front.server.wait_for_log(r'"GET /echo\?x=1&y=%20 HTTP/1\.1" 200 ')


def test_forwarded_from_a_trusted_client(front: Front) -> None:
    """A client nginx reports as 127.0.0.1 (a proxy in front of nginx, as far as catalyzer can
    tell) is in the default --forwarded-allow-ips: its X-Forwarded-* are believed, on this face
    as on HTTP."""
    status, _, body, _ = front.request("GET", "/echo", headers=SPOOF, source="127.0.0.1")
    assert status == 200
    info = json.loads(body)
    assert info["remote_addr"] == "6.6.6.6"
    assert info["url_scheme"] == "https"


def test_post_body(front: Front) -> None:
    payload = os.urandom(1024 * 1024)
    status, _, body, _ = front.request("POST", "/echo", body=payload)
    assert status == 200, body
    info = json.loads(body)
    assert info["method"] == "POST"
    assert info["body_length"] == len(payload)
    assert info["content_length"] == str(len(payload))
    assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_large_streamed_response(front: Front) -> None:
    n, size = 256, 16384  # 4 MiB, no Content-Length: chunked by nginx to the client
    status, headers, body, _ = front.request("GET", f"/stream?n={n}&size={size}")
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert len(body) == n * size
    assert body == b"".join(apps.stream_chunk(i, size) for i in range(n))


def test_status_and_head(front: Front) -> None:
    status, _, body, _ = front.request("GET", "/nowhere")
    assert (status, body) == (404, b"not found\n")
    status, headers, body, _ = front.request("HEAD", "/hello")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "6"


def test_keep_alive_between_nginx_and_catalyzer(own_front: Front) -> None:
    """FastCGI: nginx keeps one connection for successive requests (fastcgi_keep_conn). uwsgi:
    nginx cannot keep one, and catalyzer closes each after its response."""
    front = own_front
    conn = front.connection()
    try:
        for i in range(5):
            conn.request("GET", f"/hello?i={i}", headers={"Host": HOST})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello\n")
        open_now = established(front.backend)
        if front.face == "fastcgi":
            assert open_now == 1
        else:
            # The close is on its way: wait (bounded) for the kernel to see it.
            front.server.wait_until(
                lambda: True if established(front.backend) == 0 else None,
                5.0,
                "every uwsgi connection closed",
            )
    finally:
        conn.close()


def test_chunked_upload(front: Front) -> None:
    """nginx reads a chunked request body whole and sends it with its length."""
    payload = os.urandom(300_000)
    conn = front.connection()
    try:
        pieces = (payload[i : i + 70_000] for i in range(0, len(payload), 70_000))
        conn.request("POST", "/echo", body=pieces, headers={"Host": HOST}, encode_chunked=True)
        response = conn.getresponse()
        info = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200
    assert info["body_length"] == len(payload)
    assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_client_gone_mid_response(front: Front) -> None:
    """The client hangs up during an endless response: nginx drops its connection to catalyzer,
    whose response is abandoned (the app's iterable closed) instead of running on."""
    conn = front.connection()
    conn.request("GET", "/stream?n=100000000&size=65536", headers={"Host": HOST})
    response = conn.getresponse()
    assert response.status == 200
    assert len(response.read(1 << 20)) == 1 << 20
    conn.close()
    front.server.wait_for_log(
        r"GET /stream: (client disconnected|the web server closed the connection) before the "
        r"response (was complete|ended)",
        deadline=30,
    )


def test_threads(threaded_front: Front) -> None:
    """--threads: the app runs in a pool; the faces' sinks are written from the reactor only."""
    payload = os.urandom(200_000)
    status, _, body, _ = threaded_front.request("POST", "/echo", body=payload)
    assert status == 200
    info = json.loads(body)
    assert info["multithread"] is True
    assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    n, size = 64, 32768
    status, _, body, _ = threaded_front.request("GET", f"/stream?n={n}&size={size}")
    assert status == 200
    assert body == b"".join(apps.stream_chunk(i, size) for i in range(n))


@pytest.mark.parametrize("face", FACES)
def test_graceful_reload(
    face: str, server_mode: str, start_server: Launcher, tmp_path: Path
) -> None:
    """--procs 2, SIGHUP: the new workers take over the same gateway sockets; every request
    through nginx meanwhile is answered."""
    if server_mode != "prefork":
        pytest.skip("a reload needs the prefork master")
    with fronted(face, start_server, tmp_path / "nginx") as front:
        reload_under_requests(front)


def reload_under_requests(front: Front) -> None:
    server = front.server
    first = set(server.worker_pids())
    server.send_signal(signal.SIGHUP)
    statuses = []
    deadline = time.monotonic() + 30
    while "generation 2 ready" not in server.log():
        assert time.monotonic() < deadline, f"no reload within 30s\n{server.log()}"
        statuses.append(front.request("GET", "/hello")[0])
    for _ in range(20):
        status, _, body, _ = front.request("GET", "/echo")
        statuses.append(status)
    assert set(statuses) == {200}
    # The last answers came from the new generation.
    assert json.loads(body)["pid"] not in first


def test_file_wrapper(front: Front, tmp_path: Path) -> None:
    """wsgi.file_wrapper: sendfile on the uwsgi socket, FCGI_STDOUT records for FastCGI."""
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    for length in ("1", "0"):  # with and without the app's Content-Length
        status, _, body, _ = front.request("GET", f"/file?path={path}&length={length}")
        assert status == 200
        assert body == data
