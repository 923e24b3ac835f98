"""Small WSGI apps and parsing helpers shared by the unit tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def statuses(raw: bytes) -> list[int]:
    """Status codes of every final response in ``raw`` (interim 1xx included)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out = []
    pos = 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 4 + size


class Recorder:
    """A WSGI app that records what it was called with and answers per a plan."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        self.calls.append({**environ, "body": body})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode("latin-1")]


class CountingIterable:
    """A response iterable that counts how far it was consumed and whether close() ran."""

    def __init__(
        self, chunks: int, size: int = 1024, fail_at: int | None = None, fail_close: bool = False
    ) -> None:
        self.chunks = chunks
        self.size = size
        self.fail_at = fail_at
        self.fail_close = fail_close
        self.produced = 0
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.produced == self.fail_at:
            raise RuntimeError("iteration failed on purpose")
        if self.produced >= self.chunks:
            raise StopIteration
        self.produced += 1
        return b"x" * self.size

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("close failed on purpose")
