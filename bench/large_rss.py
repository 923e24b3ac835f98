"""Memory check: a 16 MiB response (``bench.apps:huge``, one bytes object, or ``huge_list``,
sixteen 1 MiB pieces) to 10 concurrent keep-alive clients.

Each client sends its request and reads the first 64 KiB; once all ten have (so every response
has begun and none is finished), the server's RSS is read, then every client reads the rest as
fast as it can. That is repeated ``ROUNDS`` times. The server's RSS is also sampled every 20 ms
throughout. The target is at most 32 MiB over the idle RSS (the app's 16 MiB is in the idle
figure): no copy of the body per connection.

Run alone: ``.venv/bin/python bench/large_rss.py [huge|huge_list] [--procs N]`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs

CLIENTS = 10
ROUNDS = 5
BODY = 16 * 1024 * 1024
TARGET_OVER_IDLE = 32 * 1024**2
FIRST_READ = 64 * 1024
DEADLINE = 60.0


def catalyzer_argv(port: int, app: str, nprocs: int) -> list[str]:
    argv = [
        str(procs.VENV_BIN / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        f"bench.apps:{app}",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--access-log",
        "off",
    ]
    return argv + (["--procs", str(nprocs)] if nprocs > 1 else [])


class Client:
    """One keep-alive connection reading whole responses into a reused buffer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((procs.HOST, port), timeout=DEADLINE)
        self.buf = bytearray(1024 * 1024)
        self.pending = b""

    def send(self) -> None:
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {procs.HOST}\r\n\r\n".encode())

    def _fill(self) -> bytes:
        n = self.sock.recv_into(self.buf)
        if n == 0:
            raise ConnectionError("server closed the connection")
        return bytes(self.buf[:n])

    def read_head(self) -> tuple[bool, int]:
        """Reads the head and up to FIRST_READ more; returns (chunked, body bytes already read)."""
        data = self.pending
        for _ in range(1000):
            if b"\r\n\r\n" in data and len(data) >= FIRST_READ:
                break
            data += self._fill()
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"unexpected head {head[:80]!r}")
        chunked = b"chunked" in head.lower()
        self.pending = rest
        return chunked, len(rest)

    def read_rest(self, chunked: bool) -> None:
        """Reads until the body is complete (chunked: the last chunk; else BODY bytes)."""
        if chunked:
            data = self.pending
            for _ in range(100_000):
                if data.endswith(b"\r\n0\r\n\r\n"):
                    self.pending = b""
                    return
                n = self.sock.recv_into(self.buf)
                if n == 0:
                    raise ConnectionError("server closed the connection")
                # Only the tail matters to find the end: keep little of what was read.
                data = (data + bytes(self.buf[:n]))[-16:]
            raise ConnectionError("chunked body did not end")
        got = len(self.pending)
        self.pending = b""
        for _ in range(100_000):
            if got >= BODY:
                return
            n = self.sock.recv_into(self.buf, min(len(self.buf), BODY - got))
            if n == 0:
                raise ConnectionError("server closed the connection")
            got += n
        raise ConnectionError("body did not end")

    def close(self) -> None:
        self.sock.close()


def run(log_dir: Path, app: str = "huge", nprocs: int = 1) -> dict[str, Any]:
    port = procs.free_port()
    argv = catalyzer_argv(port, app, nprocs)
    server = procs.start_server("catalyzer", argv, port, log_dir / f"catalyzer-{app}.log")
    result: dict[str, Any] = {
        "command": " ".join(argv).replace(str(port), "PORT"),
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "target_over_idle": TARGET_OVER_IDLE,
    }
    clients: list[Client] = []
    try:
        procs.wait_ready(server)
        # The readiness probe hung up mid-response: settle on a figure once that is over.
        time.sleep(0.5)  # settling, not synchronisation: the figure is re-read below
        result["idle_rss"] = idle = procs.tree_rss_bytes(server.pid)
        clients = [Client(port) for _ in range(CLIENTS)]
        in_flight: list[int] = []
        errors: list[str] = []
        started = time.monotonic()
        with procs.RssSampler(server.pid, interval=0.02) as sampler:
            for _ in range(ROUNDS):
                barrier = threading.Barrier(
                    CLIENTS, action=lambda: in_flight.append(sampler.sample()), timeout=DEADLINE
                )

                def one(c: Client, barrier: threading.Barrier = barrier) -> None:
                    try:
                        c.send()
                        chunked, _ = c.read_head()
                        barrier.wait()
                        c.read_rest(chunked)
                    except Exception as e:  # reported, and the run fails
                        errors.append(f"{type(e).__name__}: {e}")
                        barrier.abort()

                threads = [threading.Thread(target=one, args=(c,)) for c in clients]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(DEADLINE)
                if errors:
                    break
        elapsed = time.monotonic() - started
        result["seconds"] = elapsed
        result["rate"] = CLIENTS * ROUNDS * BODY / elapsed
        result["in_flight_rss"] = in_flight
        result["peak_rss"] = sampler.peak
        result["peak_over_idle"] = sampler.peak - idle
        result["under_target"] = sampler.peak - idle <= TARGET_OVER_IDLE
        result["errors"] = errors
        result["ok"] = not errors
    except Exception as e:
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        for c in clients:
            c.close()
        result["stop"] = procs.stop_server(server)
    return result


def size(n: int) -> str:
    """Bytes of RSS for the page: KiB below a MiB, where a tenth of a MiB would show 0.0."""
    return f"{n / 1024:,.0f} KiB" if abs(n) < 2**20 else f"{n / 2**20:.1f} MiB"


def markdown(results: dict[str, dict[str, Any]]) -> list[str]:
    """The section of docs/benchmarks.md for ``{app: run(...)}``."""
    lines = [
        "### 16 MiB responses to 10 clients: memory (bench/large_rss.py)",
        "",
        f"catalyzer (one process) serves a 16 MiB body to {CLIENTS} keep-alive clients at once, "
        f"{ROUNDS} rounds: `huge` returns one `bytes` object, `huge_list` a list of sixteen 1 MiB "
        "pieces. Each client reads the first 64 KiB, then, once all have, the rest as fast as it "
        "can; RSS is sampled every 20 ms. The app's own 16 MiB is in the idle figure; the target "
        f"is at most {size(TARGET_OVER_IDLE)} over idle (no copy of the body per connection).",
        "",
        "| app | idle RSS | peak RSS | over idle | rate |",
        "|---|--:|--:|--:|--:|",
    ]
    for app, r in results.items():
        if "peak_rss" not in r:
            lines.append(f"| `{app}` | failed: {r.get('error') or r.get('errors')} | | | |")
            continue
        lines.append(
            f"| `{app}` | {size(r['idle_rss'])} | {size(r['peak_rss'])} | "
            f"{size(r['peak_over_idle'])} | {r['rate'] / 1e6:,.0f} MB/s |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", nargs="?", default="huge", choices=["huge", "huge_list"])
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()
    out = run(procs.ROOT / "bench" / "results" / "logs", args.app, args.procs)
    print(json.dumps(out, indent=2))
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
