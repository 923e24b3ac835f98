"""The compiled build (``make compiled``: mypyc extensions built next to their sources).

Python imports a module's extension before its ``.py``, so an extension older than its source (the
source changed by a checkout or an edit, and not rebuilt) would run old code without a word. Such
modules are imported from their sources instead, with one warning saying which and how to rebuild.
"""

from __future__ import annotations

import importlib.machinery
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["SourcesOnly", "compiled_modules", "prefer_fresh_sources", "stale_modules"]

PACKAGE = Path(__file__).resolve().parent


def compiled_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Each module with a compiled extension under ``root``: its dotted name and its source."""
    found = {}
    for extension in root.glob("**/*.so"):
        source = extension.with_name(extension.name.split(".")[0] + ".py")
        if source.exists():
            dotted = source.relative_to(root.parent).with_suffix("").parts
            found[".".join(dotted)] = source
    return found


def stale_modules(root: Path = PACKAGE) -> list[str]:
    """The modules whose source is newer than their compiled extension."""
    stale = []
    for name, source in compiled_modules(root).items():
        extensions = source.parent.glob(source.stem + ".*.so")
        if any(source.stat().st_mtime > ext.stat().st_mtime for ext in extensions):
            stale.append(name)
    return sorted(stale)


class SourcesOnly:
    """A finder that imports the named modules from their ``.py`` files, passing over extensions."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self.names:
            return None
        for entry in path if path is not None else sys.path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            )
            spec = finder.find_spec(name)
            if spec is not None and spec.origin is not None:
                return spec
        return None


def prefer_fresh_sources() -> None:
    """Import stale compiled modules from their sources, and say so once."""
    stale = stale_modules()
    if stale:
        sys.meta_path.insert(0, SourcesOnly(stale))
        warnings.warn(
            "catalyzer: compiled modules older than their sources, imported from the sources: "
            + ", ".join(stale)
            + " (`make compiled` rebuilds them, `make pure` removes them)",
            stacklevel=2,
        )
