"""Shared fixtures. Unit tests drive the engine in memory (StringTransport, Clock); integration
tests (marked ``integration``) start real processes on 127.0.0.1 and wait on readiness with
deadlines.

The hot modules may be compiled with mypyc (``make compiled``): the suite then runs against the
extensions, which must not be older than their sources. With ``CATALYZER_TEST_PURE=1`` it runs
against the pure-Python sources however they are built (``make pytest`` runs the compiled modules'
own tests that way too)."""

from __future__ import annotations

import os
import sys

import pytest

from catalyzer.extensions import SourcesOnly, compiled_modules, stale_modules

PURE = os.environ.get("CATALYZER_TEST_PURE") == "1"


if PURE:
    if any(
        name.startswith("catalyzer.") and name != "catalyzer.extensions" for name in sys.modules
    ):
        raise RuntimeError("CATALYZER_TEST_PURE: catalyzer was imported before tests/conftest.py")
    sys.meta_path.insert(0, SourcesOnly(compiled_modules()))


def pytest_configure(config: pytest.Config) -> None:
    if not PURE and (stale := stale_modules()):
        raise pytest.UsageError(
            "compiled modules older than their sources: "
            + ", ".join(stale)
            + " (run `make compiled` to rebuild them, or `make pure` to drop them)"
        )
