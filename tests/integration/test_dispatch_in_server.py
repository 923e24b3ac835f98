"""A task dispatcher run by the app inside catalyzer's prefork workers shows in the USR1 dump."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import Launcher, pid_alive

pytestmark = pytest.mark.integration

_CHILD = re.compile(r"child 0 pid (\d+) (?:idle|busy)")


def test_usr1_dump_shows_the_dispatchers_of_the_workers(tmp_path: Path) -> None:
    launcher = Launcher("prefork", tmp_path)
    children: set[int] = set()
    try:
        server = launcher("--threads", "2", app="tests.dispatch.app:app")
        status, _, body = server.request("GET", "/")
        assert status == 200 and body.isdigit()
        task_pid = int(body)
        workers = server.worker_pids()
        assert task_pid not in workers and pid_alive(task_pid)
        server.send_signal(signal.SIGUSR1)
        server.wait_for_log(r"dispatcher 'app jobs' in pid \d+: 1/1 children", count=2)
        dumped = {
            m.group(0) for m in re.finditer(r"dispatcher 'app jobs' in pid (\d+)", server.log())
        }
        assert {f"dispatcher 'app jobs' in pid {pid}" for pid in workers} <= dumped
        children.update(int(pid) for pid in _CHILD.findall(server.log()))
        assert task_pid in children
    finally:
        launcher.close()
    for pid in children:
        assert not pid_alive(pid), f"dispatcher child {pid} outlived the server"
