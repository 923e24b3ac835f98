"""Apps for the split-mode integration tests (run by catalyzer-handler processes)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from catalyzer.wsgi.types import Environ, StartResponse


def journal(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Journals ``request-id method pid`` (O_APPEND, one write) before any work, so a test can
    tell which requests ran, where and how often; then reads the body and answers with its
    digest. ``?sleep=S`` holds the request in the app; ``?size=N`` answers N more bytes."""
    rid = environ.get("HTTP_X_REQUEST_ID", "-")
    path = os.environ.get("SPLIT_JOURNAL")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{rid} {environ['REQUEST_METHOD']} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    query = dict(p.partition("=")[::2] for p in environ["QUERY_STRING"].split("&") if p)
    body = environ["wsgi.input"].read()
    if "sleep" in query:
        time.sleep(float(query["sleep"]))
    size = int(query.get("size", "0"))
    out = f"{rid} {os.getpid()} {len(body)} {hashlib.sha1(body).hexdigest()}\n".encode()
    headers: list[tuple[str, Any]] = [("Content-Type", "text/plain")]
    start_response("200 OK", headers)
    return [out, b"x" * size]


def stream(environ: Environ, start_response: StartResponse) -> Any:
    """``?mib=N``: N MiB of response in 64 KiB pieces, made as they are asked for."""
    query = dict(p.partition("=")[::2] for p in environ["QUERY_STRING"].split("&") if p)
    pieces = int(query.get("mib", "1")) * 16
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    piece = b"s" * 65536
    return (piece for _ in range(pieces))


def upload(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Reads the body in 64 KiB pieces (never whole) and answers its length and digest."""
    digest = hashlib.sha1()
    total = 0
    stream = environ["wsgi.input"]
    while piece := stream.read(65536):
        digest.update(piece)
        total += len(piece)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{total} {digest.hexdigest()}\n".encode()]
