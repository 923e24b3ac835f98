"""Keep what start-up built out of the garbage collector's way.

A server process builds a large, long-lived heap at start-up (Twisted, the application and its
imports) and then allocates a few short-lived containers per request. Every full collection
would walk that whole start-up heap again although none of it is garbage; moving it into the
permanent generation (``gc.freeze``, as CPython's docs suggest for pre-fork servers) makes each
collection cost only what requests allocated. Measured with callgrind on the hello benchmark:
about 3% of the instructions per request.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from future collections."""
    gc.collect()
    gc.freeze()
