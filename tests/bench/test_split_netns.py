"""bench/split.py's ``scale-netns``: layouts, the report, and that the namespaces it makes are
gone afterwards, also when a handler host fails to start (root and ``ip netns`` for that one;
skipped with a message elsewhere)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import netns, procs, run, split


def test_layouts_are_hosts_by_processes() -> None:
    assert split.parse_layout("2x1") == (2, 1)
    assert split.parse_layout("4x2") == (4, 2)
    for bad in ("2", "x1", "0x1", "9x1", "2x0", "ax1"):
        with pytest.raises(ValueError, match="layout"):
            split.parse_layout(bad)


def _row(rps: float, limit: float) -> dict[str, Any]:
    return {
        "rps": rps,
        "rps_each": [round(rps)],
        "limit_rps": limit,
        "of_limit": round(rps / limit, 3),
        "p99_ms": 200.0,
    }


def test_report_and_target() -> None:
    spread = {"1x1": _row(146.0, 160.0), "2x1": _row(300.5, 320.0)}
    data = {"method": "m", "scenarios": {"scale-netns": spread}}
    text = "\n".join(split.markdown(data))
    assert "| 2x1 | 300 | 300 | 320 | 0.939 | 200.0 ms |" in text
    assert run._host_scaling(spread) == round(300.5 / 146.0, 2)
    assert run._host_scaling({"skipped": "not root"}) is None
    assert run._host_scaling({"1x1": _row(146.0, 160.0)}) is None
    skipped = {"method": "m", "scenarios": {"scale-netns": {"skipped": "needs root"}}}
    assert "skipped (needs root)" in "\n".join(split.markdown(skipped))


def _ours(net_tag: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if net_tag in line]


@pytest.mark.integration
def test_a_handler_host_that_cannot_start_leaves_no_namespace(tmp_path: Path) -> None:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    made: list[netns.Net] = []

    def recording() -> netns.Net:
        made.append(netns.Net())
        return made[-1]

    with (
        pytest.raises(procs.NotReady, match="handler0 exited"),
        split.serving_netns("no_such_app", 1, 1, tmp_path, None, make_net=recording),
    ):
        pytest.fail("a handler of an app that does not exist joined")
    assert len(made) == 1
    assert made[0].namespaces == []
    assert _ours(made[0].tag) == []
