"""``twistd catalyzer-front``: the names twistd's ServiceMaker looks up (see catalyzer.split.tap)."""

from catalyzer.split.tap import FrontOptions as Options
from catalyzer.split.tap import makeFrontService as makeService

__all__ = ["Options", "makeService"]
