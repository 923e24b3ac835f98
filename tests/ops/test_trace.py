"""CATALYZER_DEBUG: on only when asked, and then it says what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.logger import formatEvent, globalLogPublisher

from catalyzer.ops import trace


def enabled_with(value: str | None) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "CATALYZER_DEBUG"}
    if value is not None:
        env["CATALYZER_DEBUG"] = value
    out = subprocess.run(
        [sys.executable, "-c", "import catalyzer.ops.trace as t; print(t.ENABLED)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip() == "True"


def test_enabled_only_when_set() -> None:
    assert enabled_with(None) is False
    assert enabled_with("0") is False
    assert enabled_with("1") is True


def test_emit_logs_event_with_fields() -> None:
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        trace.emit("spawn", worker=3)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any(line.startswith("spawn pid=") and "worker=3" in line for line in seen)
