"""Keep what start-up built out of the garbage collector's way.

A server process builds a large, long-lived heap at start-up (Twisted, the application and its
imports) and then allocates a few short-lived containers per request. Every full collection
would walk that whole start-up heap again although none of it is garbage; moving it into the
permanent generation (``gc.freeze``, as CPython's docs suggest for pre-fork servers) makes each
collection cost only what requests allocated. Measured with callgrind on the hello benchmark:
about 3% of the instructions per request.

The youngest generation is then collected after :data:`YOUNG_THRESHOLD` net allocations instead
of CPython's 700. A request or connection leaves no reference cycle behind (tests pin that), but
what outlives a request for a while (its connection's objects, Twisted's cancelled timers, which
stay in the reactor's heap until it is compacted) still fills the youngest generation, and every
collection walks all of it: on hello with ``Connection: close``, 3% of the instructions per
request went to collections at 700, none measurable at 10,000. At most a few megabytes of
cyclic garbage wait longer for their collection.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = [
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "YOUNG_THRESHOLD",
    "freeze_startup_heap",
    "keep_large_blocks",
]

YOUNG_THRESHOLD = 10_000

# glibc's malloc serves a block of more than 128 KiB (at first) with mmap and gives it back at
# free, and trims the top of its heap past 128 KiB free: a 1 MiB request body kept in memory,
# or a 1 MiB frame in split mode, was then fresh pages to fault in and zero on every request
# (a 1 MiB POST: 100-113 page faults a request, 563-634 us of CPU, against 0.2 faults and
# 391-464 us with the blocks kept; split mode's 256 KiB frames, in libzmq and as Python bytes,
# the same). A server process keeps such blocks in its heap instead, up to TRIM_THRESHOLD free
# at its top. MMAP_THRESHOLD is above the largest split frame a peer may send (4 MiB) and the
# default body-spool-threshold (1 MiB), with room: a larger block (a 16 MiB response body
# built by the app) is still mapped and given back at once.
MMAP_THRESHOLD: Final = 8 * 1024 * 1024
TRIM_THRESHOLD: Final = 16 * 1024 * 1024
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def freeze_startup_heap() -> None:
    """Collect once, exempt every object alive now from future collections, and collect the
    youngest generation less often (the older generations keep their default ratios)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


def keep_large_blocks() -> bool:
    """Tune glibc's malloc to keep blocks up to :data:`MMAP_THRESHOLD` in the heap, and up to
    :data:`TRIM_THRESHOLD` of it free (see above); False where the C library is not glibc
    (nothing is changed)."""
    import ctypes

    # The interpreter's own symbols include its C library's; ctypes.util.find_library would
    # run ldconfig in a subprocess at every start.
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
