"""Memory check: catalyzer streaming a 1 GiB generator (``bench.apps:stream``).

Phase 1: one client reads at about 1 MB/s (a token bucket over ``recv`` of 64 KiB) for 20 s.
Phase 2: a second client reads the whole 1 GiB (chunked) as fast as it can.
Catalyzer's RSS is sampled every 100 ms throughout; the target is a peak under 64 MiB.

Run alone: ``.venv/bin/python bench/stream_rss.py`` prints the result as JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs

STREAM_TOTAL = 1024**3
TARGET_RSS = 64 * 1024**2
SLOW_RATE = 1_000_000  # bytes/s
SLOW_SECONDS = 20.0
FAST_DEADLINE = 180.0
RECV_SIZE = 64 * 1024


def catalyzer_argv(port: int) -> list[str]:
    return [
        str(procs.VENV_BIN / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        "bench.apps:stream",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--access-log",
        "off",
    ]


def _request(port: int, timeout: float) -> socket.socket:
    s = socket.create_connection((procs.HOST, port), timeout=timeout)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {procs.HOST}\r\nConnection: close\r\n\r\n".encode())
    return s


def slow_read(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Read for ``seconds`` at ``rate`` bytes/s with a token bucket; then hang up."""
    s = _request(port, timeout=5.0)
    received = 0
    tokens = 0.0
    started = time.monotonic()
    last = started
    end = started + seconds
    try:
        for _ in range(int(seconds * 1000) + 1000):  # at most one pass per ms
            now = time.monotonic()
            if now >= end:
                break
            tokens = min(tokens + (now - last) * rate, float(RECV_SIZE))
            last = now
            if tokens < RECV_SIZE:
                time.sleep(min((RECV_SIZE - tokens) / rate, end - now))
                continue
            data = s.recv(RECV_SIZE)
            if not data:
                break
            received += len(data)
            tokens -= len(data)
    finally:
        s.close()
    elapsed = time.monotonic() - started
    return {"bytes": received, "seconds": elapsed, "rate": received / elapsed if elapsed else 0}


def fast_read(port: int, deadline: float) -> dict[str, Any]:
    """Read the whole response, decoding chunked framing; count body bytes."""
    s = _request(port, timeout=10.0)
    started = time.monotonic()
    body = 0
    complete = False
    f = s.makefile("rb", buffering=256 * 1024)
    try:
        status = f.readline(8192).decode("latin-1").strip()
        chunked = False
        for _ in range(200):
            line = f.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        limit = STREAM_TOTAL * 2 // RECV_SIZE + 1000
        for _ in range(limit):
            if time.monotonic() - started > deadline:
                break
            if chunked:
                size_line = f.readline(8192)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    complete = True
                    break
                remaining = size
                for _ in range(size // 4096 + 10):
                    if remaining <= 0:
                        break
                    data = f.read(min(remaining, 1024 * 1024))
                    if not data:
                        break
                    remaining -= len(data)
                    body += len(data)
                f.readline(8192)  # the CRLF after the chunk data
            else:
                data = f.read(1024 * 1024)
                if not data:
                    complete = True
                    break
                body += len(data)
    finally:
        f.close()
        s.close()
    elapsed = time.monotonic() - started
    return {
        "status": status,
        "chunked": chunked,
        "bytes": body,
        "complete": complete and body == STREAM_TOTAL,
        "seconds": elapsed,
        "rate": body / elapsed if elapsed else 0,
    }


def run(log_dir: Path, slow_seconds: float = SLOW_SECONDS) -> dict[str, Any]:
    port = procs.free_port()
    argv = catalyzer_argv(port)
    server = procs.start_server("catalyzer", argv, port, log_dir / "catalyzer-stream_rss.log")
    result: dict[str, Any] = {
        "command": " ".join(argv).replace(str(port), "PORT"),
        "target_bytes": TARGET_RSS,
        "slow_rate": SLOW_RATE,
    }
    try:
        procs.wait_ready(server)
        result["idle_rss"] = procs.tree_rss_bytes(server.pid)
        with procs.RssSampler(server.pid) as sampler:
            result["slow"] = slow_read(port, SLOW_RATE, slow_seconds)
            sampler.sample()
            result["slow"]["peak_rss"] = sampler.peak
            sampler.reset()
            result["fast"] = fast_read(port, FAST_DEADLINE)
            sampler.sample()
            result["fast"]["peak_rss"] = sampler.peak
        result["peak_rss"] = max(result["slow"]["peak_rss"], result["fast"]["peak_rss"])
        result["under_target"] = result["peak_rss"] < TARGET_RSS
        result["ok"] = bool(result["fast"]["complete"])
    except Exception as e:
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        result["stop"] = procs.stop_server(server)
    return result


def main() -> int:
    out = run(procs.ROOT / "bench" / "results" / "logs")
    print(json.dumps(out, indent=2))
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
