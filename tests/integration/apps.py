"""WSGI applications served by the integration tests: ``--app tests.integration.apps:NAME``.

``app`` routes on the path to the small applications below, so that one server process can answer
most of the serving tests. Every wait inside an application is bounded (they are test fixtures,
not load), except :func:`hang`, whose whole point is a request that never finishes by itself.
Markers written to ``wsgi.errors`` show up as lines of the server's log; tests poll for them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

# The bounded wait of the rendezvous application, long enough for any loaded test machine.
RENDEZVOUS_WAIT = 15.0
# What "forever" means for hang(): the process is killed long before this.
HANG_WAIT = 600.0

SECRET = "kaboom-secret-4242"


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _respond(
    start_response: StartResponse,
    body: bytes,
    content_type: str = "text/plain",
    status: str = "200 OK",
) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def _mark(environ: Environ, text: str) -> None:
    errors = environ["wsgi.errors"]
    errors.write(text + "\n")
    errors.flush()


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return _respond(start_response, b"hello\n")


def echo(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """The request as the application saw it, as JSON: body length and sha256 included."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    length = 0
    while True:
        block = stream.read(65536)
        if not block:
            break
        digest.update(block)
        length += len(block)
    info = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ.get("QUERY_STRING", ""),
        "content_length": environ.get("CONTENT_LENGTH"),
        "content_type": environ.get("CONTENT_TYPE"),
        "body_length": length,
        "body_sha256": digest.hexdigest(),
        "url_scheme": environ["wsgi.url_scheme"],
        "remote_addr": environ.get("REMOTE_ADDR"),
        "remote_port": environ.get("REMOTE_PORT"),
        "server_name": environ.get("SERVER_NAME"),
        "server_port": environ.get("SERVER_PORT"),
        "server_protocol": environ.get("SERVER_PROTOCOL"),
        "http_host": environ.get("HTTP_HOST"),
        "https": environ.get("HTTPS"),
        "script_name": environ.get("SCRIPT_NAME"),
        "proxy_headers": {k: v for k, v in environ.items() if "FORWARDED" in k},
        "multithread": environ.get("wsgi.multithread"),
        "pid": os.getpid(),
    }
    return _respond(start_response, json.dumps(info).encode(), "application/json")


def stream_chunk(i: int, size: int) -> bytes:
    """Chunk ``i`` of :func:`stream`'s body, so that the test can rebuild what it should get."""
    return (b"%08d" % i) * (size // 8)


def stream(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """A generator response of ``n`` chunks of ``size`` bytes, with no Content-Length."""
    q = _query(environ)
    n, size = int(q.get("n", "100")), int(q.get("size", "1024"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for i in range(n):
        yield stream_chunk(i, size)


def blob(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """A list body of ``n`` pieces of ``size`` bytes (:func:`stream_chunk`), no Content-Length:
    the server computes it and sends the pieces as they are."""
    q = _query(environ)
    n, size = int(q.get("n", "4")), int(q.get("size", "1048576"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [stream_chunk(i, size) for i in range(n)]


def file(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The file named by ``?path=`` through ``wsgi.file_wrapper``."""
    path = _query(environ)["path"]
    f = open(path, "rb")  # noqa: SIM115 -- the server closes it through the wrapper
    headers = [("Content-Type", "application/octet-stream")]
    if _query(environ).get("length", "1") == "1":
        headers.append(("Content-Length", str(os.fstat(f.fileno()).st_size)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 65536)


def boom(environ: Environ, start_response: StartResponse) -> list[bytes]:
    raise RuntimeError(f"the application failed on purpose: {SECRET}")


def slow(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Says it started (``slow-started TOKEN`` in the log), takes ``?seconds=`` and answers."""
    q = _query(environ)
    _mark(environ, f"slow-started {q.get('token', '-')}")
    time.sleep(float(q.get("seconds", "2")))
    return _respond(start_response, b"slow done\n")


def hang(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Says it started (``hang-started TOKEN`` in the log), then waits for what never comes."""
    _mark(environ, f"hang-started {_query(environ).get('token', '-')}")
    threading.Event().wait(HANG_WAIT)
    return _respond(start_response, b"hang gave up\n")


def rendezvous(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Two requests meet through the FIFO ``?fifo=``: it works across threads and processes.

    ``role=a`` holds the FIFO open for reading, says ``rendezvous-a-entered TOKEN`` in the log and
    waits (at most RENDEZVOUS_WAIT) for a byte. ``role=b`` opens the FIFO for writing without
    blocking, which succeeds only while ``a`` is inside the application, and writes that byte.
    Both answer with what happened, so the test proves the two ran at the same time without
    measuring any time.
    """
    q = _query(environ)
    path = q["fifo"]
    if q["role"] == "a":
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            _mark(environ, f"rendezvous-a-entered {q.get('token', '-')}")
            deadline = time.monotonic() + RENDEZVOUS_WAIT
            result = b"a: timed out waiting for b\n"
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    continue
                try:
                    data = os.read(fd, 1)
                except BlockingIOError:
                    continue
                if data:
                    result = b"a: met b\n"
                    break
                # End of file without data: a writer came and went. Stop busy-looping on it.
                result = b"a: writer closed without data\n"
                break
        finally:
            os.close(fd)
        return _respond(start_response, result)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return _respond(start_response, b"b: a was not there\n")
    try:
        os.write(fd, b"!")
    finally:
        os.close(fd)
    return _respond(start_response, b"b: met a\n")


# What /leak keeps for good: the leak of a real app (a cache that never evicts).
_LEAKED: list[bytes] = []
LEAK_MIB = 20


def leak(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Keeps LEAK_MIB MiB more of this process's memory resident for every request (pages
    written, so the RSS grows), and answers with the worker's pid."""
    _LEAKED.append(b"\x01" * (LEAK_MIB * 1024 * 1024))
    return _respond(start_response, f"leaked pid={os.getpid()}\n".encode())


ROUTES: dict[str, Callable[[Environ, StartResponse], Iterable[bytes]]] = {
    "/": hello,
    "/hello": hello,
    "/echo": echo,
    "/stream": stream,
    "/blob": blob,
    "/file": file,
    "/boom": boom,
    "/slow": slow,
    "/hang": hang,
    "/rendezvous": rendezvous,
    "/leak": leak,
}


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        return _respond(start_response, b"not found\n", status="404 Not Found")
    return handler(environ, start_response)


def make_app(greeting: str = "made by a factory") -> Callable[..., list[bytes]]:
    """``--app 'tests.integration.apps:make_app()'``."""
    body = greeting.encode() + b"\n"

    def made(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return _respond(start_response, body)

    return made


def failing_factory() -> Callable[..., list[bytes]]:
    raise ValueError("failing_factory refuses to build an app")


not_callable = 42
