"""Upload progress: what the engine knows of uploads carrying an ``X-Progress-ID`` (pure).

An upload is identified by the ``X-Progress-ID`` query parameter or header of the request that
carries it (the convention of nginx's upload-progress module and uWSGI). The engine records bytes
received while it reads the body, before the application runs; a poll on ``--progress-path`` reads
the entry back::

    {"state": "starting" | "uploading" | "done" | "error", "received": N, "size": M or null}

``starting`` is also the answer for an id not seen (yet): a page often polls before its upload's
first bytes arrive. Finished and failed entries are forgotten ``ttl`` seconds after they end, and
there are at most ``limit`` entries: past it the oldest finished ones go first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

__all__ = ["Entry", "ProgressRegistry", "upload_id_from"]

PARAMETER: Final = b"X-Progress-ID"
_MAX_ID: Final = 128

Entry = dict[str, Any]


def upload_id_from(target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The upload id of a request: the query parameter first, then the header."""
    if PARAMETER in target:
        _, _, query = target.partition(b"?")
        for key, text in parse_qsl(query.decode("latin-1")):
            if key == "X-Progress-ID" and text:
                return text[:_MAX_ID]
    for name, value in headers:
        if name.lower() == b"x-progress-id" and value:
            return value.decode("latin-1")[:_MAX_ID]
    return None


class ProgressRegistry:
    def __init__(self, ttl: float = 60.0, limit: int = 1000) -> None:
        self.ttl = ttl
        self.limit = limit
        self.entries: dict[str, Entry] = {}

    def get(self, upload_id: str, now: float) -> Entry:
        self._expire(now)
        entry = self.entries.get(upload_id)
        if entry is None:
            return {"state": "starting", "received": 0, "size": None}
        return {k: v for k, v in entry.items() if k != "ended"}

    def started(self, upload_id: str, size: int | None, now: float) -> Entry:
        return self._put(upload_id, {"state": "uploading", "received": 0, "size": size}, now)

    def received(self, upload_id: str, received: int, now: float) -> Entry | None:
        entry = self.entries.get(upload_id)
        if entry is None or entry["state"] != "uploading":
            return None
        entry["received"] = received
        return entry

    def done(self, upload_id: str, now: float) -> Entry | None:
        entry = self.entries.get(upload_id)
        if entry is None:
            return None
        entry["state"] = "done"
        entry["ended"] = now
        return entry

    def failed(self, upload_id: str, status: int | None, now: float) -> Entry:
        entry = self.entries.get(upload_id)
        if entry is None:
            entry = self._put(upload_id, {"state": "error", "received": 0, "size": None}, now)
        entry["state"] = "error"
        entry["status"] = status
        entry["ended"] = now
        return entry

    def update(self, entries: Mapping[str, Entry], now: float) -> None:
        """Take entries known elsewhere (another worker's uploads, relayed by the master)."""
        for upload_id, entry in entries.items():
            copy = dict(entry)
            if copy["state"] in ("done", "error"):
                copy.setdefault("ended", now)
            self._put(upload_id, copy, now)

    def snapshot(self, upload_id: str) -> Entry:
        return {k: v for k, v in self.entries[upload_id].items() if k != "ended"}

    def _put(self, upload_id: str, entry: Entry, now: float) -> Entry:
        self.entries.pop(upload_id, None)  # re-inserted last: the dict keeps age order
        self.entries[upload_id] = entry
        self._expire(now)
        return entry

    def _expire(self, now: float) -> None:
        cutoff = now - self.ttl
        stale = [k for k, e in self.entries.items() if e.get("ended", now) <= cutoff]
        for key in stale:
            del self.entries[key]
        excess = len(self.entries) - self.limit
        if excess > 0:
            finished = [k for k, e in self.entries.items() if "ended" in e]
            victims = (finished + [k for k in self.entries if k not in set(finished)])[:excess]
            for key in victims:
                del self.entries[key]


class ProgressTracker:
    """The engine's :class:`~catalyzer.http.reader.BodyWatcher`: records uploads in a registry and, in a
    prefork worker (``share``), keeps the changes in :attr:`outbox` for the master."""

    def __init__(self, registry: ProgressRegistry, clock: Any, share: bool = False) -> None:
        self.registry = registry
        self.clock = clock
        self.share = share
        self.outbox: dict[str, Entry] = {}

    def started(self, request: Any) -> None:
        now = self.clock.seconds()
        self._changed(
            request.upload_id, self.registry.started(request.upload_id, request.content_length, now)
        )

    def progress(self, request: Any, received: int) -> None:
        entry = self.registry.received(request.upload_id, received, self.clock.seconds())
        if entry is not None:
            self._changed(request.upload_id, entry)

    def finished(self, request: Any) -> None:
        entry = self.registry.done(request.upload_id, self.clock.seconds())
        if entry is not None:
            self._changed(request.upload_id, entry)

    def failed(self, request: Any, status: int | None) -> None:
        now = self.clock.seconds()
        self._changed(request.upload_id, self.registry.failed(request.upload_id, status, now))

    def _changed(self, upload_id: str, entry: Entry) -> None:
        if self.share:
            self.outbox[upload_id] = {k: v for k, v in entry.items() if k != "ended"}

    def take_outbox(self) -> dict[str, Entry]:
        out, self.outbox = self.outbox, {}
        return out
