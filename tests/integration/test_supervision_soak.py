"""The reload-during-recycling soak, shortened: ``--procs 2 --max-requests 20`` under a request
loop while the master gets SIGHUP five times. Once the load stops the master must settle at
exactly two worker processes, both ready and of the newest generation (issue 15: replacements
started for a retiring generation's workers used to stay for good).

Real processes on 127.0.0.1; the master's table is read from its ``--stats`` unix socket and its
children from ``/proc``.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, Launcher
from tests.integration.test_prefork import APP, REPLACE, AppModule, Load
from tests.integration.test_stats import get

pytestmark = pytest.mark.integration

HUPS = 5
REPLACING = re.compile(r"max-requests; starting its replacement$", re.M)
LOAD_LIMIT = 500_000
SETTLE = 15.0  # load stopped -> old workers drained (die-timeout 2) and the table settled


@pytest.fixture
def app_module(tmp_path: Path) -> AppModule:
    module = AppModule(tmp_path / f"{APP.partition(':')[0]}.py")
    module.write("v1")
    return module


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher("single", tmp_path)  # "single" adds no arguments: --procs comes from here
    try:
        yield launcher
    finally:
        launcher.close()


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (zombies included: they are not reaped yet)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return found


def status(stats: str) -> dict[str, Any]:
    code, body = get(stats, "/status")
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def test_reloads_overlapping_recycling_settle_at_procs_workers_of_newest_generation(
    launcher: Launcher, app_module: AppModule, tmp_path: Path
) -> None:
    stats = str(tmp_path / "stats.sock")
    # This tree's sources first, so that master and workers run the code under test.
    env = dict(app_module.env)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{REPO / 'src'}"
    server = launcher(
        "--procs",
        "2",
        "--max-requests",
        "20",
        "--max-requests-jitter",
        "0",
        "--die-timeout",
        "2",
        "--access-log",
        "off",
        "--stats",
        f"unix:{stats}",
        app=APP,
        env=env,
    )
    # The limit only bounds the run: reaching it before the last HUP would stop the recycling
    # the test waits for (a quiet machine sends 20,000 requests in a few seconds).
    running = Load(server.port, connections=8, limit=LOAD_LIMIT).start()
    try:
        for generation in range(2, 2 + HUPS):
            # HUP just as a worker starts recycling: with no jitter and the load spread over
            # both, the other one is usually queued for recycling too.
            running.wait_for(10, server)
            assert not running.done(), f"the load ended early: {running.summary()}"
            recycled = len(REPLACING.findall(server.log()))
            server.wait_for_log(REPLACING.pattern, REPLACE, count=recycled + 1)
            server.send_signal(signal.SIGHUP)
            server.wait_for_log(rf"generation {generation} ready: retiring \d+$", REPLACE)
        running.wait_for(50, server)
    finally:
        running.stop()
    newest = 1 + HUPS

    def settled() -> dict[str, Any] | None:
        table = status(stats)
        workers = table["workers"]
        if (
            table["generation"] == newest
            and len(workers) == 2
            and all(w["state"] == "ready" and w["generation"] == newest for w in workers)
            and children(server.pid) == {w["pid"] for w in workers}
        ):
            return table
        return None

    def describe() -> str:
        return f"status {status(stats)['workers']}, children {children(server.pid)}"

    try:
        table = server.wait_until(
            settled, SETTLE, "exactly 2 ready workers of the newest generation"
        )
    except pytest.fail.Exception:
        print(describe())
        raise
    assert sorted(w["slot"] for w in table["workers"]) == [0, 1]
    summary = running.summary()
    print(summary)
    assert not running.failures, summary
    assert server.proc.poll() is None
