"""Which build of the hot modules the suite runs against: the mypyc extensions when they are
built (``make compiled``), the sources under ``CATALYZER_TEST_PURE=1`` (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import catalyzer.http.reader
import catalyzer.wsgi.environ

MODULES = (catalyzer.http.reader, catalyzer.wsgi.environ)


def _built(module_file: str) -> bool:
    path = Path(module_file)
    stem = path.name.split(".")[0]
    return any(path.parent.glob(stem + ".*.so"))


def test_the_build_in_use() -> None:
    pure = os.environ.get("CATALYZER_TEST_PURE") == "1"
    for module in MODULES:
        assert module.__file__ is not None
        compiled = module.__file__.endswith(".so")
        assert compiled == (not pure and _built(module.__file__)), module.__file__
