"""The mixed-load and slowloris benches' own arithmetic: plain values, no servers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from bench import apps, mixed, slowloris


def test_steady_app_waits_every_value_from_10_to_50_ms_once_per_41_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(apps.time, "sleep", waits.append)
    monkeypatch.setattr(apps, "_steady_calls", itertools.count())
    for _ in range(41):
        body = apps.steady({"PATH_INFO": "/"}, lambda status, headers: None)
        assert list(body) == [apps.HELLO]
    assert sorted(round(w * 1000) for w in waits) == list(range(10, 51))


def _result(mode: str, handed_off: int | None, requests: int = 1000) -> dict[str, Any]:
    return {
        "label": "catalyzer --procs 4",
        "mode": mode,
        "fast_p99_ms": 5.0,
        "fast_rps": 100.0,
        "fast_errors": 0,
        "slow_answered": 0,
        "slow_sent": 0,
        "handoffs": None
        if handed_off is None
        else {"handed_off": handed_off, "requests": requests},
    }


def test_mixed_table_gives_hand_offs_per_thousand_requests() -> None:
    text = mixed.table(
        [
            _result("keep-alive", 250),
            _result("keep-alive", 500, requests=2000),
            _result("close", None),
        ]
    )
    row = text.splitlines()[-1].split(" | ")
    assert row[5] == "250.0 (250.0 / 250.0)"
    assert row[-1] == "- |"  # no /status for this mode: unknown, not zero


def test_slowloris_cost_per_cycle_subtracts_the_fast_requests() -> None:
    alone = {"requests": 1000, "cpu_seconds": {"server": 0.5, "reopened": 0}}
    attacked = {"requests": 600, "cpu_seconds": {"server": 0.5, "reopened": 1000}}
    # 600 fast requests cost 0.3 s, as alone; the other 0.2 s went on 1,000 cycles.
    assert slowloris._per_cycle(alone, attacked) == pytest.approx(200.0)
    assert (
        slowloris._per_cycle(alone, {**attacked, "cpu_seconds": {"server": 1.0, "reopened": 0}})
        is None
    )
