"""``twistd catalyzer-handler``: the names twistd's ServiceMaker looks up (see
catalyzer.split.tap)."""

from catalyzer.split.tap import HandlerOptions as Options
from catalyzer.split.tap import makeHandlerService as makeService

__all__ = ["Options", "makeService"]
