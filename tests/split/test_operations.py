"""Operating split mode, end to end on 127.0.0.1: handler workers recycled under load, round
trip times in the rows, the front's manhole and state dump, ``--profile``, the front-wide buffer
budget. Real processes, readiness by their log lines, deadlines; every process stopped in
teardown."""

from __future__ import annotations

import collections
import http.client
import json
import pstats
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, child_env, twistd_path
from tests.integration.test_manhole_server import Session
from tests.split.test_integration import (
    APP,
    JOINED,
    Split,
    all_answered,
    mixed_plan,
    rss,
    run_load,
    split,
)

pytestmark = pytest.mark.integration

__all__ = ["split"]  # the fixture, imported for the tests below


def test_handler_workers_recycle_after_max_requests_with_zero_errors(split: Split) -> None:
    front = split.start_front()
    handler = split.start_handler("--threads", "2", "--procs", "2", "--max-requests", "40", joins=2)
    first = {int(pid) for pid in re.findall(JOINED, front.log())}
    plan = mixed_plan(400, seed=11, query="?sleep=0.005")
    bodies = {rid: body for rid, _, body in plan}
    all_answered(run_load(front.port, plan, workers=8), bodies)
    # Each retired worker asked, was replaced first, drained and exited 0.
    handler.wait_for_log(r"exited \(exit status 0\) after max-requests", count=2, deadline=30.0)
    assert "asking to be replaced (max-requests) after" in handler.log()
    joined = {int(pid) for pid in re.findall(JOINED, front.log())}
    assert len(joined - first) >= 2
    # No POST ran twice: the retiring worker gave back what it had not started.
    runs = collections.Counter((rid, method) for rid, method, _ in split.journal_lines())
    assert [k for k, n in runs.items() if k[1] == "POST" and n > 1] == []
    assert handler.terminate() == 0


def test_handler_workers_past_max_worker_rss_are_replaced_with_zero_errors(split: Split) -> None:
    # 1 MiB: every worker is past it, so each is replaced in turn, one at a time, all along.
    front = split.start_front()
    handler = split.start_handler(
        "--threads", "2", "--procs", "2", "--max-worker-rss", "1", joins=2
    )
    plan = mixed_plan(300, seed=12, query="?sleep=0.005")
    outcomes = run_load(front.port, plan, workers=6)
    assert [o for o in outcomes if o.status != 200] == []
    assert len(outcomes) == len(plan)
    handler.wait_for_log(r"exited \(exit status 0\) after max-worker-rss", count=2, deadline=30.0)
    assert re.search(
        r"asking to be replaced \(max-worker-rss: RSS \d+ MiB > 1 MiB\)", handler.log()
    )


def stats_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def stats_port(front: ServerProcess) -> int:
    return int(front.wait_for_log(r"listening on \S+ \(.*port=(\d+)", count=2).group(1))


def test_round_trip_time_per_handler_in_status_and_metrics(split: Split) -> None:
    front = split.start_front("--stats", "tcp:0:interface=127.0.0.1")
    port = stats_port(front)
    split.start_handler("--threads", "1", "--tag", "v42")

    def measured() -> float | None:
        (row,) = json.loads(stats_get(port, "/status"))["split"]["handlers"]
        return row["rtt"]  # type: ignore[no-any-return]

    # The first timed heartbeat goes one interval (0.2 s here) after the handler joined.
    rtt = front.wait_until(measured, deadline=10.0, what="a round trip time in /status")
    assert 0 < rtt < 1.5  # below liveness: a stamp older than that is not taken
    metrics = stats_get(port, "/metrics").decode()
    assert re.search(
        r'catalyzer_split_handler_rtt_seconds\{host="[^"]+",pid="\d+",tag="v42"\} [0-9.e-]+',
        metrics,
    )


def test_front_manhole_shows_handler_rows_and_runs_the_commands(
    split: Split, tmp_path: Path
) -> None:
    path = str(tmp_path / "manhole.sock")
    front = split.start_front("--manhole", f"unix:{path}")
    split.start_handler("--threads", "2", "--tag", "v42")
    front.wait_until(lambda: Path(path).exists() or None, 10.0, "the manhole socket")
    session = Session(path)
    try:
        banner = session.read_until(b">>> ")
        assert b"handlers(), dump(), stats(), drain(), weight(), front" in banner
        assert session.run("handlers()[0]['tag']").strip() == b"'v42'"
        assert session.run("weight('v42', 0.5)").strip() == b"1"
        assert session.run("handlers()[0]['weight']").strip() == b"0.5"
        assert b"ValueError" in session.run("weight('v42', -1)")
        text = session.run("print(dump())")
        assert b"split front: 1 handlers" in text and b"tag v42 gen 1 ready" in text
        assert session.run("drain('v42')").strip() == b"1"
        assert session.run("handlers()[0]['state']").strip() == b"'draining'"
    finally:
        session.close()


def test_usr1_dumps_show_handler_rows_and_sessions_as_text(split: Split) -> None:
    front = split.start_front()
    master = split.start_handler("--threads", "2", "--procs", "2", "--tag", "v7", joins=2)
    single = split.start_handler("--threads", "1", "--tag", "v8", "--prefetch", "0")
    front.send_signal(signal.SIGUSR1)
    dump = front.wait_for_log(
        r"split front: 3 handlers, 0 queued, 0 at handlers, 0 of 67108864 budget bytes buffered, 0 waiting for it\n((?:\s+\S.*\n)+)"
    )
    rows = dump.group(1)
    assert rows.count(" tag v7 gen 1 ready: 2 slots + 8 prefetch, 10 credit, 0 in flight") == 2
    assert rows.count(" tag v8 gen 1 ready: 1 slots, 1 credit, 0 in flight") == 1
    master.send_signal(signal.SIGUSR1)
    sessions = r"handler worker \d pid \d+ generation 1: 1 sessions\n\s+tcp://\S+: joined, 0 in"
    master.wait_for_log(sessions, count=2)
    single.send_signal(signal.SIGUSR1)
    single.wait_for_log(r"state of handler pid \d+: 1 sessions\n\s+tcp://\S+: joined, 0 in")


def test_profile_writes_a_pstats_file_per_n_requests_with_a_bounded_count(
    split: Split, tmp_path: Path
) -> None:
    directory = tmp_path / "profiles"
    front = split.start_front()
    split.start_handler(
        "--threads", "2", "--procs", "2", "--profile", str(directory), "--profile-every", "5",
        "--profile-keep", "3", joins=2,
    )  # fmt: skip
    plan = [(f"g{i}", f"GET /get/{i}", b"") for i in range(60)]
    outcomes = run_load(front.port, plan, workers=4)
    assert [o for o in outcomes if o.status != 200] == []
    # 60 requests over two workers: at least 10 profiles written, never more than 3 kept.
    front.wait_until(
        lambda: len(list(directory.iterdir())) == 3 or None, 10.0, "three profile files"
    )
    names = sorted(p.name for p in directory.iterdir())
    assert all(re.fullmatch(r"\d{13}-.+-\d+-\d+\.pstats", n) for n in names), names
    stats = pstats.Stats(*(str(directory / n) for n in names))
    assert any(name == "journal" for (_f, _l, name) in stats.stats)  # type: ignore[attr-defined]


@pytest.mark.parametrize("procs", ["1", "2"])
def test_profile_into_a_directory_that_cannot_be_made_is_one_line(
    tmp_path: Path, procs: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "catalyzer-handler", "--app", APP, "--connect",
         "tcp://127.0.0.1:9", "--procs", procs, "--profile", str(blocker / "sub")],
        capture_output=True, text=True, timeout=60, env=child_env(), check=False,
        cwd=Path(__file__).parents[2],  # where the test app is importable
    )  # fmt: skip
    assert result.returncode != 0
    assert "catalyzer-handler: error: --profile" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_total_front_buffering_stays_within_the_budget(split: Split) -> None:
    """Eight clients reading 32 MiB responses slower than the handlers send them, with 4 MiB
    windows (32 MiB of windows in all) and a 2 MiB budget: the bytes the front holds for them
    stay within the budget, and its memory within a few times it (each byte is in a libzmq
    message, a Python bytes and a transport buffer on its way: +6 MiB measured here, +18 MiB
    with a 6 MiB budget, +69 MiB without one)."""
    budget = 2 * 1024 * 1024
    front = split.start_front(
        "--window", str(4 * 1024 * 1024), "--buffer-budget", str(budget),
        "--stats", "tcp:0:interface=127.0.0.1",
    )  # fmt: skip
    port = stats_port(front)
    split.start_handler("--threads", "8", "--app", "tests.split.apps:stream")
    status, _, body = front.request("GET", "/?mib=4")  # warm up both sides
    assert (status, len(body)) == (200, 4 * 1024 * 1024)
    base = rss(front.pid)
    peaks = {"rss": base, "buffered": 0, "waiting": 0}
    lock = threading.Lock()
    totals: list[int] = []

    def client() -> None:
        # Each read is followed by a look at the front's numbers: a client slower than the
        # handler, so that the front holds whatever its windows and budget let through.
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=60)
        try:
            conn.request("GET", "/?mib=32")
            response = conn.getresponse()
            total = 0
            while chunk := response.read(256 * 1024):
                total += len(chunk)
                split_status = json.loads(stats_get(port, "/status"))["split"]
                now_rss = rss(front.pid)
                with lock:
                    peaks["buffered"] = max(peaks["buffered"], split_status["buffered"])
                    peaks["waiting"] = max(peaks["waiting"], split_status["waiting_for_budget"])
                    peaks["rss"] = max(peaks["rss"], now_rss)
        finally:
            conn.close()
        with lock:
            totals.append(total)

    clients = [threading.Thread(target=client) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=240)
        assert not t.is_alive(), "a client did not finish within 240 s"
    growth = (peaks["rss"] - base) // (1024 * 1024)
    assert totals == [32 * 1024 * 1024] * 8
    assert peaks["waiting"] > 0  # the budget was spent: responses waited for it
    assert peaks["buffered"] <= budget
    assert growth < 4 * budget // (1024 * 1024) + 8, growth
