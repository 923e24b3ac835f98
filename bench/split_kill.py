"""Requests lost when a handler is killed with SIGKILL mid-run: Debian's mongrel2 against
catalyzer's split mode (issue 13, "The same kill -9 run against mongrel2-core").

    .venv/bin/python -m bench.split_kill [--system mongrel2|catalyzer] [--requests 3000]
                                         [--clients 20] [--work-ms 10]

Starts the front (``mongrel2`` with a generated config, or ``twistd catalyzer-front``) and two
handler processes on 127.0.0.1, sends ``--requests`` GETs from ``--clients`` keep-alive clients,
each with its own ``X-Request-Id``, and kills the first handler with SIGKILL (by PID) once a third
of them are answered. The handler journals ``request-id method pid`` before any work, then works
``--work-ms``. A request is *answered* (2xx), *failed* (another status, or the connection broke:
the client knows) or *lost* (no answer within ``ANSWER_TIMEOUT``: the client is left hanging).
Prints the counts as JSON. Everything is bounded in time and count and stops by itself.

The mongrel2 handler is the protocol's minimal one: a PULL socket for requests, a PUB socket for
replies, as mongrel2's own examples connect them.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import procs

ANSWER_TIMEOUT = 5.0  # seconds a client waits for an answer before counting it lost
RUN_DEADLINE = 300.0  # the whole run, whatever happens
SERVER_UUID = "f400bf85-4538-4f7a-8908-67e313d515c2"
SENDER_ID = "54c6755b-9628-40a4-9a2d-cc82a816345e"

# -- the app both systems run: journal first, then work


def journal_line(request_id: str, method: str) -> bytes:
    return f"{request_id} {method} {os.getpid()}\n".encode()


def journal(path: str, request_id: str, method: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, journal_line(request_id, method))
    finally:
        os.close(fd)


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI app of the catalyzer handlers (``--app bench.split_kill:app``)."""
    journal(
        os.environ["SPLIT_KILL_JOURNAL"],
        environ.get("HTTP_X_REQUEST_ID", "-"),
        environ["REQUEST_METHOD"],
    )
    time.sleep(int(os.environ.get("SPLIT_KILL_WORK_MS", "10")) / 1000)
    body = b"done\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- a minimal mongrel2 handler


def _netstring_parse(data: bytes) -> tuple[bytes, bytes]:
    size, rest = data.split(b":", 1)
    n = int(size)
    return rest[:n], rest[n + 1 :]


def mongrel2_handler(send_spec: str, recv_spec: str, journal_path: str, work_ms: int) -> None:
    import zmq  # the bench extra's pyzmq; only this function needs it

    ctx = zmq.Context()
    requests = ctx.socket(zmq.PULL)
    requests.connect(send_spec)
    replies = ctx.socket(zmq.PUB)
    replies.setsockopt(zmq.IDENTITY, SENDER_ID.encode())
    replies.connect(recv_spec)
    while True:
        msg = requests.recv()
        sender, conn_id, _path, rest = msg.split(b" ", 3)
        headers_raw, rest = _netstring_parse(rest)
        headers = json.loads(headers_raw)
        if headers.get("METHOD") == "JSON":
            continue  # a disconnect notice: nothing to answer
        journal(journal_path, headers.get("x-request-id", "-"), headers.get("METHOD", "?"))
        time.sleep(work_ms / 1000)
        body = b"done\n"
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        ids = conn_id
        replies.send(sender + b" " + str(len(ids)).encode() + b":" + ids + b", " + response)


MONGREL2_CONFIG = """\
handler = Handler(send_spec='{send}', send_ident='{sender}', recv_spec='{recv}', recv_ident='')
main = Server(
    uuid="{uuid}",
    access_log="/logs/access.log",
    error_log="/logs/error.log",
    chroot="./",
    default_host="localhost",
    name="bench",
    pid_file="/run/mongrel2.pid",
    bind_addr="127.0.0.1",
    port={port},
    hosts=[Host(name="localhost", routes={{'/': handler}})]
)
settings = {{"zeromq.threads": 1}}
servers = [main]
"""


# -- the client side


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered = 0
        self.failed = 0
        self.lost = 0
        self.lost_ids: list[str] = []
        self.next_id = 0

    def take(self, limit: int) -> int | None:
        with self.lock:
            if self.next_id >= limit:
                return None
            self.next_id += 1
            return self.next_id

    @property
    def done(self) -> int:
        return self.answered + self.failed + self.lost


def client(port: int, total: int, tally: Tally, deadline: float) -> None:
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline and (n := tally.take(total)) is not None:
        request_id = f"r{n}"
        if conn is None:
            conn = http.client.HTTPConnection(procs.HOST, port, timeout=ANSWER_TIMEOUT)
        try:
            conn.request("GET", f"/?n={n}", headers={"X-Request-Id": request_id})
            response = conn.getresponse()
            response.read()
            outcome = "answered" if 200 <= response.status < 300 else "failed"
            closing = response.will_close
        except TimeoutError:
            outcome = "lost"
        except (OSError, http.client.HTTPException):
            outcome = "failed"
        if outcome != "answered" or closing:
            conn.close()
            conn = None
        with tally.lock:
            if outcome == "answered":
                tally.answered += 1
            elif outcome == "failed":
                tally.failed += 1
            else:
                tally.lost += 1
                tally.lost_ids.append(request_id)
    if conn is not None:
        conn.close()


# -- the systems


def _start(name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> Any:
    log_file = open(log, "wb")  # noqa: SIM115 (closed with the run)
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_mongrel2(workdir: Path, port: int, env: dict[str, str]) -> tuple[Any, list[Any]]:
    if shutil.which("mongrel2") is None or shutil.which("m2sh") is None:
        sys.exit(
            "bench.split_kill: mongrel2 is not installed (Debian: apt-get install mongrel2-core)"
        )
    for sub in ("run", "logs", "tmp"):
        (workdir / sub).mkdir()
    send, recv = f"tcp://127.0.0.1:{procs.free_port()}", f"tcp://127.0.0.1:{procs.free_port()}"
    config = MONGREL2_CONFIG.format(
        send=send, recv=recv, sender=SENDER_ID, uuid=SERVER_UUID, port=port
    )
    (workdir / "m2.conf").write_text(config)
    subprocess.run(
        ["m2sh", "load", "-config", "m2.conf", "-db", "config.sqlite"],
        cwd=workdir,
        check=True,
        capture_output=True,
        env={**env, "LOGNAME": "bench"},
    )
    front = _start(
        "mongrel2",
        ["mongrel2", "config.sqlite", SERVER_UUID],
        workdir / "front.log",
        {**env, "LOGNAME": "bench"},
        workdir,
    )
    handlers = [
        _start(
            f"handler{i}",
            [sys.executable, "-m", "bench.split_kill", "--mongrel2-handler", send, recv],
            workdir / f"handler{i}.log",
            env,
            procs.ROOT,
        )
        for i in range(2)
    ]
    return front, handlers


def start_catalyzer(workdir: Path, port: int, env: dict[str, str]) -> tuple[Any, list[Any]]:
    handlers_at = f"tcp://127.0.0.1:{procs.free_port()}"
    twistd = str(procs.VENV_BIN / "twistd")
    front = _start(
        "front",
        [
            twistd,
            "-n",
            "--pidfile=",
            "catalyzer-front",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--handlers",
            handlers_at,
            "--access-log",
            "off",
        ],
        workdir / "front.log",
        env,
        procs.ROOT,
    )
    handlers = [
        _start(
            f"handler{i}",
            [
                twistd,
                "-n",
                "--pidfile=",
                "catalyzer-handler",
                "--app",
                "bench.split_kill:app",
                "--connect",
                handlers_at,
                "--access-log",
                "off",
            ],
            workdir / f"handler{i}.log",
            env,
            procs.ROOT,
        )
        for i in range(2)
    ]
    return front, handlers


def wait_answering(port: int, deadline: float) -> None:
    for _ in range(10_000):
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(procs.HOST, port, timeout=2)
            conn.request("GET", "/", headers={"X-Request-Id": "ready"})
            if conn.getresponse().status == 200:
                conn.close()
                return
        if time.monotonic() > deadline:
            raise SystemExit("bench.split_kill: the front never answered")
        time.sleep(0.05)  # polling interval, not synchronisation


def run(system: str, total: int, clients: int, work_ms: int, keep: bool = False) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_DEADLINE
    workdir = Path(tempfile.mkdtemp(prefix=f"split-kill-{system}-"))
    journal_path = workdir / "journal"
    env = {
        **os.environ,
        "PYTHONPATH": str(procs.ROOT),
        "SPLIT_KILL_JOURNAL": str(journal_path),
        "SPLIT_KILL_WORK_MS": str(work_ms),
    }
    port = procs.free_port()
    start = start_mongrel2 if system == "mongrel2" else start_catalyzer
    front, handlers = start(workdir, port, env)
    everyone = [front, *handlers]
    try:
        wait_answering(port, time.monotonic() + 30)
        tally = Tally()
        threads = [
            threading.Thread(target=client, args=(port, total, tally, deadline), daemon=True)
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        killed_at = None
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            if killed_at is None and tally.done >= total // 3:
                os.kill(handlers[0].pid, signal.SIGKILL)
                killed_at = tally.done
            time.sleep(0.01)  # polling the tally, not synchronisation
        for t in threads:
            t.join(ANSWER_TIMEOUT + 1)
    finally:
        # mongrel2 goes on in a forked child: the PID to stop is the one its pid file names.
        pid_file = workdir / "run" / "mongrel2.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        for p in everyone:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in everyone:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
    lines = journal_path.read_text().splitlines() if journal_path.exists() else []
    ran = [line.split()[0] for line in lines if not line.startswith("ready ")]
    result = {
        "system": system,
        "requests": total,
        "clients": clients,
        "work_ms": work_ms,
        "killed_after": killed_at,
        "answered": tally.answered,
        "failed": tally.failed,
        "lost": tally.lost,
        "ran_twice": len(ran) - len(set(ran)),
        "lost_ids_sample": tally.lost_ids[:10],
    }
    if keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--mongrel2-handler":
        mongrel2_handler(
            sys.argv[2],
            sys.argv[3],
            os.environ["SPLIT_KILL_JOURNAL"],
            int(os.environ.get("SPLIT_KILL_WORK_MS", "10")),
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("mongrel2", "catalyzer"), default="mongrel2")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--work-ms", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the logs and the journal")
    args = parser.parse_args()
    result = run(args.system, args.requests, args.clients, args.work_ms, args.keep)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
