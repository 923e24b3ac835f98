"""``CATALYZER_DEBUG=1``: a trace of process and request lifecycle events.

Call sites test :data:`ENABLED` before building anything, so the trace costs one attribute
lookup when it is off::

    if trace.ENABLED:
        trace.emit("accept", peer=peer)
"""

from __future__ import annotations

import os
from typing import Final

from twisted.logger import Logger

ENABLED: Final = os.environ.get("CATALYZER_DEBUG", "") not in ("", "0")

_log = Logger(namespace="catalyzer.ops.trace")


def emit(event: str, **fields: object) -> None:
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    _log.info("{event} pid={pid} {detail}", event=event, pid=os.getpid(), detail=detail)
