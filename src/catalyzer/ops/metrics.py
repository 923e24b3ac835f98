"""Request counters of one process, and their sum over workers alive and gone (pure).

Each process counts into a :class:`RequestMetrics`: a fixed vector of unsigned 64-bit counters.
In a single process the vector is a private ``list``; in a prefork worker it is a region of
the worker's shared-memory scoreboard (:mod:`catalyzer.process.scoreboard`), so that the master
reads it directly, while the worker lives and once more after it has exited for any reason
(graceful retire, crash, ``kill -9``): nothing a worker answered is lost with it.
:class:`CounterTotals` is the master's sum: fed "worker W started / read as C / exited with C"
events, it folds an exited worker's final counts into a retired total, so the sum never goes
down.

The vector (native byte order, ``COUNT`` unsigned 64-bit integers, :data:`SIZE` bytes):

======================  =====================================================================
index                   counter
======================  =====================================================================
``SEQ`` (0)             update sequence number: odd while a response's counters are written
``CLASS`` (1..5)        responses by status class, 1xx..5xx (the server's own errors included)
``BUCKET`` (6..19)      request durations per histogram bucket (not cumulative; last: +Inf)
``DURATION_NS`` (20)    the sum of the request durations, in nanoseconds
``BYTES_IN`` (21)       bytes received from clients
``BYTES_OUT`` (22)      response body bytes sent
``REQUESTS`` (23)       requests answered by the app (what ``max-requests`` counts)
======================  =====================================================================

Why the reads are never torn: only the worker's reactor thread writes (every counter is updated
from the reactor thread, also with ``--threads``), and each counter is written as one aligned
8-byte store (``memoryview`` item assignment over the 8-byte-aligned ``mmap`` is one ``memcpy`` of
8 bytes, a single store on x86-64 and aarch64, where such stores are single-copy atomic): a
reader never sees half a counter. The several counters one response updates are bracketed by
``SEQ`` (a seqlock): the writer makes it odd, writes, makes it even; :func:`read_counts` retries
while it is odd or has changed, so a live read holds whole responses (the histogram's count and
the status classes agree). A writer stopped in the middle (``SIGSTOP``) makes the reader give up
after a few tries and take what is there, one response apart at most. After the worker has
exited nothing writes any more, and its counters are read once, as they are; a worker killed with
``SIGKILL`` within the microsecond between a response's first and last store leaves that one
response counted in some families and not yet in others. The seqlock relies on the stores being
seen in program order, which x86-64 guarantees; Python issues no memory barriers, so on a weaker
model (aarch64) a live read may rarely be one response apart between families. The final read
after the worker's exit is exact everywhere: the process's end orders all its stores.

When a response is counted: as it ends in the server (``HTTPChannel._response_done``, first
thing), which is just after its last bytes are handed to the kernel; the server's own answers
(400s for bad requests and the like) are counted just before they are written. See
``docs/operations.md`` ("What the counters guarantee") for what this means to a client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final, Protocol

__all__ = [
    "BUCKETS",
    "COUNT",
    "SIZE",
    "CounterTotals",
    "RequestMetrics",
    "merge",
    "read_counts",
    "snapshot_of",
]

# Upper bounds (seconds) of the request duration histogram.
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")

SEQ: Final = 0
CLASS: Final = 1
BUCKET: Final = CLASS + len(STATUS_CLASSES)
DURATION_NS: Final = BUCKET + len(BUCKETS) + 1
BYTES_IN: Final = DURATION_NS + 1
BYTES_OUT: Final = BYTES_IN + 1
REQUESTS: Final = BYTES_OUT + 1
COUNT: Final = REQUESTS + 1
SIZE: Final = COUNT * 8
# observe()'s indices: the status class (status // 100, 0..9) -> its counter; plain ints.
_CLASS_AT: Final = tuple(CLASS + min(max(k, 1), 5) - 1 for k in range(10))
_BUCKET_AT: Final = int(BUCKET)
_DURATION_AT: Final = int(DURATION_NS)
_BYTES_OUT_AT: Final = int(BYTES_OUT)
_REQUESTS_AT: Final = int(REQUESTS)

# How often a live read starts over while the worker is writing (an update takes about a
# microsecond; a reader still unlucky after this many tries finds a writer that is stopped).
_READ_TRIES: Final = 64


def _vector(counts: memoryview | None) -> memoryview | list[int]:
    if counts is None:
        # Nobody else reads a private vector: a list, whose item updates cost about a third of
        # a memoryview's (no packing to and from 8 bytes), ~1,500 instructions of a hello request.
        return [0] * COUNT
    if counts.format != "Q" or counts.itemsize != 8 or len(counts) != COUNT:
        raise ValueError(f"the counters need a memoryview of {COUNT} 'Q' items")
    return counts


class RequestMetrics:
    """The counters of one process, written by its reactor thread.

    ``counts`` is where they live (a ``memoryview`` of :data:`COUNT` ``"Q"`` items, as
    :meth:`catalyzer.process.scoreboard.Scoreboard.counters` gives); by default a private list."""

    __slots__ = ("counts",)

    def __init__(self, counts: memoryview | None = None) -> None:
        self.counts = _vector(counts)

    def observe(self, status: int, duration: float, bytes_out: int, app: bool = False) -> None:
        """One response ended (sent, failed or abandoned); ``app``: the app made it (it counts
        in ``REQUESTS`` too). On the path of every request: one call, locals only."""
        c = self.counts
        seq = c[0] + 1  # SEQ
        c[0] = seq  # odd: a reader retries
        klass = status // 100
        c[_CLASS_AT[klass] if klass < 10 else _CLASS_AT[9]] += 1
        c[_BUCKET_AT + bisect_left(BUCKETS, duration)] += 1
        if duration > 0:
            c[_DURATION_AT] += int(duration * 1e9)
        c[_BYTES_OUT_AT] += bytes_out
        if app:
            c[_REQUESTS_AT] += 1
        c[0] = seq + 1

    def received(self, size: int) -> None:
        self.counts[BYTES_IN] += size

    @property
    def requests(self) -> int:
        value: int = self.counts[REQUESTS]
        return value

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts
        return snapshot_of(list(counts) if isinstance(counts, list) else read_counts(counts))


class CounterVector(Protocol):
    """What :func:`read_counts` reads: a ``memoryview`` of ``"Q"`` items (or a test's fake)."""

    def tolist(self) -> list[Any]: ...

    def __getitem__(self, index: int, /) -> Any: ...


def read_counts(counts: CounterVector) -> list[int]:
    """A consistent copy of a counter vector another process may be writing (see the module
    docstring)."""
    for _ in range(_READ_TRIES):
        values: list[int] = counts.tolist()  # SEQ first, then the counters in order
        seq = values[SEQ]
        if not seq & 1 and counts[SEQ] == seq:
            return values
    stuck: list[int] = counts.tolist()
    return stuck


def snapshot_of(counts: Sequence[int]) -> dict[str, Any]:
    """A counter vector as the data ``--stats`` serves (the shape :func:`merge` adds up)."""
    buckets = list(counts[BUCKET:DURATION_NS])
    return {
        "by_class": dict(zip(STATUS_CLASSES, counts[CLASS:BUCKET], strict=True)),
        "buckets": buckets,
        "duration_sum": counts[DURATION_NS] / 1e9,
        "duration_count": sum(buckets),
        "bytes_in": counts[BYTES_IN],
        "bytes_out": counts[BYTES_OUT],
        "requests": counts[REQUESTS],
    }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several snapshots (missing keys count as zero)."""
    total = RequestMetrics().snapshot()
    for snap in snapshots:
        for key, value in snap.get("by_class", {}).items():
            total["by_class"][key] = total["by_class"].get(key, 0) + value
        buckets = snap.get("buckets", [])
        total["buckets"] = [a + b for a, b in zip(total["buckets"], buckets, strict=False)] + (
            buckets[len(total["buckets"]) :]
        )
        for key in ("duration_sum", "duration_count", "bytes_in", "bytes_out", "requests"):
            total[key] += snap.get(key, 0)
    return total


class CounterTotals:
    """Counter vectors summed over the workers alive and every worker that has exited.

    Events: :meth:`started` (a worker's counters exist), :meth:`reported` (they were read while
    it lives), :meth:`exited` (its final counts, read once after its end). An exited worker's
    counts move into the retired total at once, so that :meth:`total` never goes down and never
    counts a worker twice. Each counter of a worker only goes up: a read lower than the one
    before (which a single writer cannot produce) is not believed."""

    def __init__(self) -> None:
        self.retired = [0] * COUNT
        self.live: dict[Hashable, list[int]] = {}
        self.workers_retired = 0

    def started(self, worker: Hashable) -> None:
        self.live.setdefault(worker, [0] * COUNT)

    def reported(self, worker: Hashable, counts: Sequence[int]) -> None:
        """The worker's counters, read while it runs (ignored unless it has started and not
        exited: a late read of a gone worker must not bring it back)."""
        last = self.live.get(worker)
        if last is not None:
            self.live[worker] = _highest(last, counts)

    def exited(self, worker: Hashable, counts: Sequence[int] | None) -> None:
        """The worker is gone; ``counts`` are its final counters (None if they could not be
        read: the last ones read are kept). A second exit of the same worker is ignored."""
        last = self.live.pop(worker, None)
        if last is None:
            return
        final = last if counts is None else _highest(last, counts)
        self.retired = [a + b for a, b in zip(self.retired, final, strict=True)]
        self.retired[SEQ] = 0
        self.workers_retired += 1

    def of(self, worker: Hashable) -> list[int] | None:
        """The last counts of a live worker."""
        return self.live.get(worker)

    def total(self) -> list[int]:
        total = list(self.retired)
        for counts in self.live.values():
            total = [a + b for a, b in zip(total, counts, strict=True)]
        total[SEQ] = 0
        return total


def _highest(last: Sequence[int], counts: Sequence[int]) -> list[int]:
    if len(counts) != COUNT:
        raise ValueError(f"a counter vector has {COUNT} items, not {len(counts)}")
    return [max(a, b) for a, b in zip(last, counts, strict=True)]
