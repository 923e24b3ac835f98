"""Stale compiled extensions are passed over for their sources (catalyzer.extensions)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from catalyzer.extensions import SourcesOnly, compiled_modules, stale_modules


def _package(root: Path) -> Path:
    pkg = root / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py"):
        (root / name).write_text("")
    return pkg


def test_a_source_newer_than_its_extension_is_stale(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    for stem in ("fresh", "old"):
        (pkg / "sub" / f"{stem}.py").write_text("VALUE = 'source'\n")
        (pkg / "sub" / f"{stem}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (pkg / "lonely.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")  # no source: not ours
    os.utime(pkg / "sub" / "old.py", (2_000_000_000, 2_000_000_000))
    os.utime(pkg / "sub" / "fresh.py", (1_000_000_000, 1_000_000_000))
    assert set(compiled_modules(pkg)) == {"pkg.sub.fresh", "pkg.sub.old"}
    assert stale_modules(pkg) == ["pkg.sub.old"]


def test_sources_only_imports_the_py_past_an_extension(tmp_path: Path) -> None:
    pkg = _package(tmp_path)
    (pkg / "sub" / "mod.py").write_text("VALUE = 'source'\n")
    # Not a loadable extension: imported, it would fail, so the import proves the finder skipped it.
    (pkg / "sub" / "mod.cpython-311-x86_64-linux-gnu.so").write_bytes(b"not an ELF file")
    finder = SourcesOnly(["pkg.sub.mod"])
    sys.path.insert(0, str(tmp_path))
    sys.meta_path.insert(0, finder)
    try:
        import pkg.sub.mod  # type: ignore[import-not-found]

        assert pkg.sub.mod.VALUE == "source"
        assert finder.find_spec("pkg.sub.other", None) is None  # names it was not given: not its
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]
