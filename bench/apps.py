"""The WSGI applications every server in the benchmark runs (``bench.apps:NAME``)."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

HELLO = b"Hello, World!"
BIG = b"x" * (1024 * 1024)
STREAM_CHUNK = b"s" * (64 * 1024)
STREAM_TOTAL = 1024**3
_READ_BLOCK = 64 * 1024


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """1 MiB in one bytes object, with Content-Length."""
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))],
    )
    return [BIG]


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Read the whole request body and answer with its length in bytes."""
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH") or ""
    remaining = int(declared) if declared.isdigit() else None
    total = 0
    while remaining is None or remaining > 0:
        size = _READ_BLOCK if remaining is None else min(_READ_BLOCK, remaining)
        data = stream.read(size)
        if not data:
            break
        total += len(data)
        if remaining is not None:
            remaining -= len(data)
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def sleep50(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An application that waits 50 ms on (simulated) I/O, then says hello."""
    time.sleep(0.05)
    return hello(environ, start_response)


def _stream_body() -> Iterator[bytes]:
    for _ in range(STREAM_TOTAL // len(STREAM_CHUNK)):
        yield STREAM_CHUNK


def stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """1 GiB from a generator in 64 KiB chunks, without Content-Length."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _stream_body()


SLOW_SECONDS = 1.0


def mixed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``/slow`` blocks ``?seconds=`` (default 1 s: a report, an export); every other path says
    hello at once. The mixed-load scenario (bench/mixed.py)."""
    if environ.get("PATH_INFO") == "/slow":
        query = environ.get("QUERY_STRING", "")
        seconds = SLOW_SECONDS
        if query.startswith("seconds="):
            seconds = float(query.partition("=")[2])
        time.sleep(seconds)
    return hello(environ, start_response)


_steady_calls = itertools.count()


def steady(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Every request waits 10 to 50 ms (on simulated I/O), then says hello: an app with no fast
    endpoint, to see what a short ``--handoff-after`` costs when every call outlasts it. The
    waits cycle through 10, 27, 44, 20, 37, 13, ... ms (step 17 modulo 41: every value from 10
    to 50 once per 41 calls), the same sequence in every run."""
    if environ.get("PATH_INFO") == "/slow":
        return mixed(environ, start_response)
    n = next(_steady_calls)
    time.sleep((10 + (n * 17) % 41) / 1000)
    return hello(environ, start_response)


HUGE_SIZE = 16 * 1024 * 1024


@functools.cache
def _huge() -> bytes:
    # Made on first use, so that the other scenarios' servers do not carry 16 MiB.
    return b"h" * HUGE_SIZE


@functools.cache
def _huge_pieces() -> tuple[bytes, ...]:
    return tuple(b"h" * (1024 * 1024) for _ in range(HUGE_SIZE // (1024 * 1024)))


def huge(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """16 MiB in one bytes object (made once), with Content-Length."""
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(HUGE_SIZE))],
    )
    return [_huge()]


def huge_list(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """16 MiB as a list of sixteen 1 MiB bytes objects (made once), without Content-Length."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return list(_huge_pieces())
