"""The cost of a request in one catalyzer process, counted rather than timed: user-space CPU
instructions per request (``perf stat -e instructions:u`` attached to the server while a client
sends a fixed number of requests) and, with ``--strace``, system calls per request
(``strace -c``).

    .venv/bin/python -m bench.conncost [--requests N] [--only keepalive,close,uwsgi] [--strace]

Two more cases send a 1 MiB body: ``post`` (HTTP, Connection: close) and ``uwsgi-post``.

One server process (``bench.apps:hello``, access log off) listens for HTTP and uwsgi on free
loopback ports. The client is a single connection at a time (sequential, so every accept finds
one connection waiting): ``keepalive`` sends N requests on one connection, ``close`` opens a
connection per request (``Connection: close``), ``uwsgi`` sends one uwsgi packet per connection as
nginx does. A warm-up of 1,000 requests precedes each count. Instruction counts are close to
deterministic (a few tenths of a percent between runs on a quiet or busy machine alike), which
is what makes them usable on a shared machine where req/s is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs

HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
WARMUP = 300
POST_SIZE = 1024 * 1024
POST_REQUEST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n" % POST_SIZE
) + b"x" * POST_SIZE
READY_TIMEOUT = 120.0


def _uwsgi_packet(body: bytes = b"") -> bytes:
    variables = {
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "localhost",
    }
    if body:
        variables.update(REQUEST_METHOD="POST", CONTENT_LENGTH=str(len(body)))
    block = b"".join(
        struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
        for k, v in variables.items()
    )
    return struct.pack("<BHB", 0, len(block), 0) + block + body


def _one_per_connection(port: int, request: bytes) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            with socket.create_connection((procs.HOST, port)) as s:
                s.sendall(request)
                while s.recv(65536):
                    pass

    return run


def _keepalive(port: int) -> Callable[[int], None]:
    def run(n: int) -> None:
        with socket.create_connection((procs.HOST, port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(n):
                s.sendall(HELLO_REQUEST)
                data = b""
                while not data.endswith(b"Hello, World!"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("connection closed")
                    data += chunk

    return run


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((procs.HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not bound yet, with a deadline
    raise RuntimeError(f"server not listening on {port} within {READY_TIMEOUT}s")


def _counted(pid: int, argv: list[str], client: Callable[[int], None], n: int) -> str:
    """Run ``argv`` (perf or strace, attached to ``pid``) around ``client(n)``; its stderr."""
    with tempfile.TemporaryFile() as err:
        tool = subprocess.Popen(argv, stderr=err)
        time.sleep(0.3)  # the tool attaches asynchronously; there is no readiness signal
        client(n)
        tool.send_signal(signal.SIGINT)
        tool.wait(timeout=30)
        err.seek(0)
        return err.read().decode(errors="replace")


def _instructions(
    pid: int, client: Callable[[int], None], n: int, out: Path, keep: str | None
) -> float:
    """Instructions the server (running under callgrind) executes during ``client(n)``."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    client(n)
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    dumps = sorted(set(out.parent.glob(out.name + "*")) - before)
    if keep:
        shutil.copy(dumps[-1], keep)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1]) / n
    raise RuntimeError(f"no totals in {dumps[-1]}")


def _syscalls(pid: int, client: Callable[[int], None], n: int) -> dict[str, float]:
    out = _counted(pid, ["strace", "-c", "-f", "-p", str(pid)], client, n)
    calls: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = round(int(m.group(1)) / n, 2)
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


def _start(root: Path, http: int, uwsgi: int, wrapper: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *wrapper,
            str(root / ".venv" / "bin" / "python"),
            str(root / ".venv" / "bin" / "twistd"),
            "-n",
            "--pidfile=",
            "catalyzer",
            "--app",
            "bench.apps:hello",
            "--listen",
            f"tcp:{http}:interface={procs.HOST}",
            "--uwsgi",
            f"tcp:{uwsgi}:interface={procs.HOST}",
            "--access-log",
            "off",
        ],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # The tree's own src first: an editable install points at one tree only (--root A/B).
        env={**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root}"},
    )


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=procs.STOP_TIMEOUT * 4)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", default="keepalive,close,uwsgi")
    parser.add_argument("--strace", action="store_true", help="count system calls instead")
    parser.add_argument("--keep", help="copy each case's callgrind profile to KEEP.CASE")
    parser.add_argument("--root", default=str(procs.ROOT), help="the tree whose server runs")
    args = parser.parse_args(argv)
    tool = "strace" if args.strace else "valgrind"
    if shutil.which(tool) is None:
        print(f"{tool} is not installed", file=sys.stderr)
        return 2
    root = Path(args.root).resolve()
    http, uwsgi = procs.free_port(), procs.free_port()
    with tempfile.TemporaryDirectory(prefix="conncost-") as work:
        out = Path(work) / "callgrind.out"
        wrapper = (
            []
            if args.strace
            else [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
            ]
        )
        server = _start(root, http, uwsgi, wrapper)
        try:
            _wait_ready(http)
            clients = {
                "keepalive": _keepalive(http),
                "close": _one_per_connection(http, CLOSE_REQUEST),
                "uwsgi": _one_per_connection(uwsgi, _uwsgi_packet()),
                "uwsgi-post": _one_per_connection(uwsgi, _uwsgi_packet(b"x" * POST_SIZE)),
                "post": _one_per_connection(http, POST_REQUEST),
            }
            for name in args.only.split(","):
                client = clients[name]
                client(WARMUP)
                result: dict[str, object] = {"case": name, "requests": args.requests}
                if args.strace:
                    result["syscalls_per_request"] = _syscalls(server.pid, client, args.requests)
                else:
                    result["instructions_per_request"] = round(
                        _instructions(
                            server.pid,
                            client,
                            args.requests,
                            out,
                            f"{args.keep}.{name}" if args.keep else None,
                        )
                    )
                print(json.dumps(result), flush=True)
        finally:
            _stop(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
