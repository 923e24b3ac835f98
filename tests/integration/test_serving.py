"""Serving over real sockets: methods, bodies, streaming, keep-alive, environ, access log, unix
and TLS endpoints, file_wrapper, threads and application errors."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration import apps
from tests.integration.conftest import (
    CLIENT_TIMEOUT,
    REPO,
    Launcher,
    ServerProcess,
    read_until_closed,
)

pytestmark = pytest.mark.integration

# Combined log format plus the duration in microseconds.
ACCESS_LINE = (
    r"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "
    r'"GET /hello\?from=access-test HTTP/1\.1" 200 6 "http://referer\.test/" "itest-agent/1\.0" '
    r"(?P<duration>\d+)$"
)


def echo(server: ServerProcess, method: str = "GET", body: bytes | None = None) -> dict[str, Any]:
    status, _, data = server.request(method, "/echo", body=body)
    assert status == 200, data
    result: dict[str, Any] = json.loads(data)
    return result


def token() -> str:
    return uuid.uuid4().hex[:12]


# -- basics


def test_get(served: ServerProcess) -> None:
    status, headers, body = served.request("GET", "/hello")
    assert status == 200
    assert body == b"hello\n"
    assert headers["Content-Length"] == "6"
    assert headers["Content-Type"] == "text/plain"
    assert headers["Date"]


def test_not_found_route(served: ServerProcess) -> None:
    status, _, body = served.request("GET", "/no/such/route")
    assert (status, body) == (404, b"not found\n")


def test_head(served: ServerProcess) -> None:
    conn = served.connection()
    try:
        conn.request("HEAD", "/hello")
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Content-Length"] == "6"
        assert response.read() == b""
        # Nothing of the body was sent: the next request on the connection parses cleanly.
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        conn.request("GET", "/blob?n=3&size=400000")
        response = conn.getresponse()
        blob = b"".join(apps.stream_chunk(i, 400000) for i in range(3))
        assert (response.status, response.read()) == (200, blob)
    finally:
        conn.close()


def test_post_small(served: ServerProcess) -> None:
    status, _, data = served.request(
        "POST",
        "/echo?a=1",
        body=b"name=value",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    info = json.loads(data)
    assert info["method"] == "POST"
    assert info["query"] == "a=1"
    assert info["content_length"] == "10"
    assert info["content_type"] == "application/x-www-form-urlencoded"
    assert info["body_length"] == 10
    assert info["body_sha256"] == hashlib.sha256(b"name=value").hexdigest()


def test_post_larger_than_spool_threshold(served: ServerProcess) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # the spool threshold is 1 MiB by default
    info = echo(served, "POST", body)
    assert info["body_length"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_large_list_bodies_pipelined_on_one_connection(served: ServerProcess) -> None:
    # Sent from the app's objects with sendmsg, a piece at a time as the socket takes them: the
    # next response must not start before this one's last byte.
    queries = ["n=3&size=1048576", "n=1&size=8", "n=40&size=65536", "n=1&size=5000000"]
    wire = b"".join(
        b"GET /blob?%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % q.encode() for q in queries
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(wire)
        stream = sock.makefile("rb")  # one buffered reader for every response on the connection
        for q in queries:
            n, size = (int(kv.split("=")[1]) for kv in q.split("&"))
            head = [stream.readline(65537)]
            for _ in range(20):
                if head[-1] == b"\r\n":
                    break
                head.append(stream.readline(65537))
            assert head[0].startswith(b"HTTP/1.1 200 "), head
            assert b"Content-Length: %d\r\n" % (n * size) in head
            assert stream.read(n * size) == b"".join(apps.stream_chunk(i, size) for i in range(n))


def test_chunked_post(served: ServerProcess) -> None:
    pieces = [b"a" * 1, b"b" * 1000, os.urandom(70000), b"c" * 4096, b"tail"]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = (
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(head + wire)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        data = response.read()
    assert response.status == 200, data
    info = json.loads(data)
    whole = b"".join(pieces)
    assert info["body_length"] == len(whole)
    assert info["body_sha256"] == hashlib.sha256(whole).hexdigest()


def test_streaming_generator_response(served: ServerProcess) -> None:
    n, size = 300, 4096
    status, headers, body = served.request("GET", f"/stream?n={n}&size={size}")
    assert status == 200
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert len(body) == n * size
    assert body == b"".join(apps.stream_chunk(i, size) for i in range(n))


def test_keep_alive_reuses_the_connection(served: ServerProcess) -> None:
    conn = served.connection()
    try:
        conn.request("GET", "/echo")
        first = conn.getresponse()
        first_info = json.loads(first.read())
        assert first.status == 200
        assert not first.will_close
        sock = conn.sock
        assert sock is not None
        local_port = sock.getsockname()[1]
        conn.request("GET", "/echo")
        second = conn.getresponse()
        second_info = json.loads(second.read())
        assert second.status == 200
        assert conn.sock is sock, "http.client had to open a second connection"
    finally:
        conn.close()
    # The server saw both requests come from the same client socket.
    assert first_info["remote_port"] == second_info["remote_port"] == str(local_port)


def test_half_closed_client_gets_its_answer(served: ServerProcess) -> None:
    """A client that shuts down its sending side after its request (``nc -N``, some health
    checkers) is answered, then closed: the EOF arrives while the app runs (in a pool thread with
    ``--threads``), and only a half-closeable channel hears it as "no more requests" rather
    than as the connection lost."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"GET /slow?seconds=0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert data.endswith(b"\r\n\r\nslow done\n"), data[-200:]


def test_environ_seen_by_the_app(served: ServerProcess) -> None:
    conn = served.connection()
    try:
        conn.request("GET", "/echo")
        info = json.loads(conn.getresponse().read())
        assert conn.sock is not None
        local_port = conn.sock.getsockname()[1]
    finally:
        conn.close()
    assert info["url_scheme"] == "http"
    assert info["remote_addr"] == "127.0.0.1"
    assert info["remote_port"] == str(local_port)
    assert info["server_name"] == "127.0.0.1"
    assert info["server_port"] == str(served.port)
    assert info["server_protocol"] == "HTTP/1.1"


# -- access log


def _access_request(server: ServerProcess) -> None:
    status, _, body = server.request(
        "GET",
        "/hello?from=access-test",
        headers={"User-Agent": "itest-agent/1.0", "Referer": "http://referer.test/"},
    )
    assert (status, body) == (200, b"hello\n")


def test_access_log_to_a_file(start_server: Launcher, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    server = start_server("--access-log", str(path))
    _access_request(server)

    def entry() -> re.Match[str] | None:
        text = path.read_text() if path.exists() else ""
        return re.search(ACCESS_LINE, text, re.M)

    # The file is flushed about once a second: poll for the line.
    match = server.wait_until(entry, 10.0, f"access log line in {path}")
    assert int(match.group("duration")) >= 0
    assert not re.search(ACCESS_LINE, server.log(), re.M), "the entry went to stdout too"


def test_access_log_counts_the_500_body(start_server: Launcher, tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    server = start_server("--access-log", str(path))
    status, _, body = server.request("GET", "/boom")
    assert status == 500

    def entry() -> re.Match[str] | None:
        text = path.read_text() if path.exists() else ""
        return re.search(r'"GET /boom HTTP/1\.1" 500 (\S+) ', text)

    match = server.wait_until(entry, 10.0, f"access log line for /boom in {path}")
    assert match.group(1) == str(len(body)), match.group(0)


def test_access_log_to_stdout_by_default(start_server: Launcher) -> None:
    server = start_server()
    _access_request(server)
    server.wait_for_log(ACCESS_LINE, deadline=10.0)


def test_access_log_off_writes_nothing(start_server: Launcher, tmp_path: Path) -> None:
    stray = REPO / "off"
    existed = stray.exists()
    server = start_server("--access-log", "off")
    _access_request(server)
    assert server.terminate() == 0  # a graceful stop flushes whatever access log there is
    log = server.log()
    assert "access-test" not in log, log
    assert not re.search(r'" 200 \d+ "', log), log
    assert existed or not stray.exists(), "'--access-log off' created a file named 'off'"


# -- other endpoints


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=CLIENT_TIMEOUT)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@pytest.fixture
def unix_dir() -> Iterator[Path]:
    # Short on purpose: a unix socket path has to fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="cz-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_unix_socket(start_server: Launcher, unix_dir: Path) -> None:
    path = unix_dir / "s.sock"
    server = start_server(listen=[f"unix:{path}"])
    assert server.listening[0].description == f"unix:{path}"
    conn = UnixHTTPConnection(str(path))
    try:
        conn.request("POST", "/echo", body=b"over a unix socket")
        response = conn.getresponse()
        info = json.loads(response.read())
        assert response.status == 200
        # A second request on the same unix connection.
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        conn.request("GET", "/blob?n=3&size=400000")
        response = conn.getresponse()
        blob = b"".join(apps.stream_chunk(i, 400000) for i in range(3))
        assert (response.status, response.read()) == (200, blob)
    finally:
        conn.close()
    assert info["body_length"] == len(b"over a unix socket")
    assert info["url_scheme"] == "http"
    assert info["remote_addr"] == ""


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls(start_server: Launcher, tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    server = start_server(listen=[f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"])
    assert server.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, timeout=CLIENT_TIMEOUT, context=context
    )
    try:
        conn.request("POST", "/echo", body=b"secret")
        response = conn.getresponse()
        info = json.loads(response.read())
        assert response.status == 200
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        conn.request("GET", "/blob?n=3&size=400000")
        response = conn.getresponse()
        blob = b"".join(apps.stream_chunk(i, 400000) for i in range(3))
        assert (response.status, response.read()) == (200, blob)
    finally:
        conn.close()
    assert info["url_scheme"] == "https"
    assert info["body_sha256"] == hashlib.sha256(b"secret").hexdigest()
    assert info["server_port"] == str(server.port)
    # Browsers and curl offer ALPN, h2 first: the handshake settles on http/1.1 (Twisted refuses
    # every ALPN offer when the factory names no protocol).
    offering = ssl.create_default_context(cafile=str(cert))
    offering.set_alpn_protocols(["h2", "http/1.1"])
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.port, timeout=CLIENT_TIMEOUT, context=offering
    )
    try:
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
    finally:
        conn.close()
    # A client that speaks nothing but h2 is refused at the handshake, not answered in HTTP/1.1.
    h2_only = ssl.create_default_context(cafile=str(cert))
    h2_only.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        h2_only.wrap_socket(raw, server_hostname="127.0.0.1")


# -- file_wrapper


@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "chunked"])
def test_file_wrapper(served: ServerProcess, tmp_path: Path, with_length: bool) -> None:
    content = os.urandom(5 * 1024 * 1024 + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    status, headers, body = served.request(
        "GET", f"/file?path={quote(str(path))}&length={int(with_length)}"
    )
    assert status == 200
    if with_length:
        assert headers["Content-Length"] == str(len(content))
    assert len(body) == len(content)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(content).hexdigest()


# -- threads


def test_threads_run_requests_concurrently(start_server: Launcher, tmp_path: Path) -> None:
    fifo = tmp_path / "rendezvous.fifo"
    os.mkfifo(fifo)
    server = start_server("--threads", "4")
    tag = token()
    a = server.connection(timeout=apps.RENDEZVOUS_WAIT + CLIENT_TIMEOUT)
    b = server.connection()
    try:
        a.request("GET", f"/rendezvous?role=a&token={tag}&fifo={quote(str(fifo))}")
        server.wait_for_log(rf"rendezvous-a-entered {tag}$")
        # A is now inside the application; B is answered only if it gets in at the same time.
        b.request("GET", f"/rendezvous?role=b&token={tag}&fifo={quote(str(fifo))}")
        response_b = b.getresponse()
        body_b = response_b.read()
        response_a = a.getresponse()
        body_a = response_a.read()
    finally:
        a.close()
        b.close()
    assert (response_b.status, body_b) == (200, b"b: met a\n")
    assert (response_a.status, body_a) == (200, b"a: met b\n")


# -- application errors


@pytest.mark.parametrize("threads", ["0", "2"])
def test_app_exception_gives_500_and_server_keeps_serving(
    start_server: Launcher, threads: str
) -> None:
    server = start_server("--threads", threads)
    conn = server.connection()
    try:
        conn.request("GET", "/boom")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 500
        # The next request, on the same connection if the server kept it open.
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        conn.request("GET", "/blob?n=3&size=400000")
        response = conn.getresponse()
        blob = b"".join(apps.stream_chunk(i, 400000) for i in range(3))
        assert (response.status, response.read()) == (200, blob)
    finally:
        conn.close()
    assert apps.SECRET.encode() not in body
    assert b"Traceback" not in body
    assert b"RuntimeError" not in body
    status, _, again = server.request("GET", "/hello")
    assert (status, again) == (200, b"hello\n")
    # The traceback goes to the log (twistd indents it and may qualify the exception's name).
    server.wait_for_log(r"Traceback \(most recent call last\):")
    server.wait_for_log(rf"RuntimeError: the application failed on purpose: {apps.SECRET}$")
    server.wait_for_log(r'"GET /boom HTTP/1\.1" 500 ')
