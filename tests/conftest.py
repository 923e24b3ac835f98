"""Shared fixtures. Unit tests drive the engine in memory (StringTransport, Clock); integration
tests (marked ``integration``) start real processes on 127.0.0.1 and wait on readiness with
deadlines.

The hot modules may be compiled with mypyc (``make compiled``): the suite then runs against the
extensions, which must not be older than their sources. With ``CATALYZER_TEST_PURE=1`` it runs
against the pure-Python sources however they are built (``make pytest`` runs the compiled modules'
own tests that way too)."""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PURE = os.environ.get("CATALYZER_TEST_PURE") == "1"


class _SourcesOnly:
    """Finds ``catalyzer`` modules as ``.py`` files only, passing over compiled extensions."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "catalyzer" and not name.startswith("catalyzer."):
            return None
        for entry in path if path is not None else sys.path:
            finder = importlib.machinery.FileFinder(
                entry,
                (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            )
            spec = finder.find_spec(name)
            if spec is not None and spec.origin is not None:
                return spec
        return None


def _stale_extensions() -> list[str]:
    stale = []
    for extension in SRC.glob("catalyzer/**/*.so"):
        source = extension.with_name(extension.name.split(".")[0] + ".py")
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(str(source.relative_to(SRC)))
    return stale


if PURE:
    if any(name.startswith("catalyzer.") for name in sys.modules):
        raise RuntimeError("CATALYZER_TEST_PURE: catalyzer was imported before tests/conftest.py")
    sys.meta_path.insert(0, _SourcesOnly())


def pytest_configure(config: pytest.Config) -> None:
    if not PURE and (stale := _stale_extensions()):
        raise pytest.UsageError(
            "compiled modules older than their sources: "
            + ", ".join(stale)
            + " (run `make compiled` to rebuild them, or `make pure` to drop them)"
        )
