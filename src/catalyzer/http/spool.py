"""Where a request body is kept while it arrives: memory, or a temporary file past a threshold.

Every face (HTTP, uwsgi, FastCGI) spools bodies this one way, so ``body-spool-threshold`` means the
same thing whichever protocol carried the request.
"""

from __future__ import annotations

import errno
import io
import tempfile
from typing import IO, Final

__all__ = ["PIECE", "MemoryBody", "body_file", "memory_body", "spool_failure"]

# A body that cannot be written to the spool directory for lack of room: 507, the server's
# storage; any other failure there (a missing or unwritable directory): 503.
_NO_ROOM: Final = frozenset((errno.ENOSPC, errno.EDQUOT))


def body_file(length: int | None, threshold: int, directory: str | None = None) -> IO[bytes]:
    """A file for a body of ``length`` bytes (None: not known in advance): in memory when it is
    known to fit under ``threshold``, else a file that moves to disk (in ``directory``, the
    system's temporary directory by default) once it passes it."""
    if length is not None and length <= threshold:
        return io.BytesIO()
    return tempfile.SpooledTemporaryFile(threshold, dir=directory)


def memory_body(length: int) -> io.BytesIO:
    """An in-memory body file already ``length`` bytes long (zeros), positioned at its start, in
    one allocation, for a body of known size that arrives in pieces: they overwrite it in place
    (the uwsgi face even receives into its memory, ``getbuffer()``). A BytesIO written piece by
    piece from empty grows by an eighth at a time, and once glibc's dynamic mmap threshold has
    risen past the body's size every growth is a realloc copying all the bytes so far (a 1 MiB
    body in 64 KiB pieces: about four copies of it); pieces joined at the end take twice the
    memory, which glibc then trims from its heap and faults in again for the next body."""
    body = io.BytesIO()
    if length > 0:
        body.seek(length - 1)
        body.write(b"\0")  # the gap before it is zeroed: the one pass over the memory before use
        body.seek(0)
    return body


# The size of a MemoryBody's pieces: a read of this size is what most apps and frameworks ask
# wsgi.input for (the bench's echo app, Django's and werkzeug's form parsers all read 64 KiB).
PIECE: Final = 65536


class MemoryBody:
    """A request body of known size kept in memory as the ``bytes`` it was received in, the
    wsgi.input of a Content-Length body up to ``body-spool-threshold``.

    Received with ``recv`` in pieces of :data:`PIECE` bytes aligned on the body's start (the
    receiver asks for :attr:`room` bytes, then :meth:`add` s what came), a body needs neither a
    buffer zeroed up front nor a copy on the way out: a ``read(65536)`` on a piece boundary
    returns the piece itself. A piece that comes in parts (the start of the body in the read
    that held the head, a short read) is joined once it is complete. Any other read copies what
    it returns once, as ``BytesIO.read`` does; ``read()`` of the whole joins the pieces.

    It reads like a ``BytesIO`` that cannot be written: ``read``, ``read1``, ``readinto``,
    ``readline``, ``readlines``, iteration, ``seek`` and ``tell``. Until the body is complete
    only its complete pieces can be read."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._pieces: list[bytes] = []
        self._parts: list[bytes] = []  # the piece being received, when it comes in parts
        self._parted = 0  # bytes in _parts
        self._readable = 0  # bytes in complete pieces
        self._pos = 0
        self._closed = False

    # -- receiving

    @property
    def room(self) -> int:
        """How many bytes complete the piece being received (0: the body is complete)."""
        filled = self._readable + self._parted
        end = (filled // PIECE + 1) * PIECE
        return (end if end < self.length else self.length) - filled

    def add(self, data: bytes | memoryview) -> None:
        """Keep the next ``len(data)`` bytes of the body (at most what is still due). A ``bytes``
        of exactly :attr:`room` bytes is kept as it is; a view is copied (it may be of a reused
        buffer)."""
        size = len(data)
        if size > self.length - self._readable - self._parted:
            raise ValueError(f"{size} bytes past the end of a {self.length}-byte body")
        pos = 0
        while pos < size:
            room = self.room
            take = size - pos if size - pos < room else room
            part = data if pos == 0 and take == size else data[pos : pos + take]
            if type(part) is not bytes:
                part = bytes(part)
            if take == room and not self._parts:
                self._pieces.append(part)
                self._readable += take
            else:
                self._parts.append(part)
                self._parted += take
                if take == room:
                    self._pieces.append(b"".join(self._parts))
                    self._readable += self._parted
                    self._parts = []
                    self._parted = 0
            pos += take

    # -- reading

    def read(self, size: int | None = -1) -> bytes:
        size = self._due(size)
        if size <= 0:
            return b""
        pos = self._pos
        index, offset = divmod(pos, PIECE)
        piece = self._pieces[index]
        self._pos = pos + size
        if offset + size <= len(piece):
            return piece if offset == 0 and size == len(piece) else piece[offset : offset + size]
        parts: list[bytes | memoryview] = [memoryview(piece)[offset:]]
        got = len(piece) - offset
        while got < size:
            index += 1
            piece = self._pieces[index]
            want = size - got
            if want >= len(piece):
                parts.append(piece)
                got += len(piece)
            else:
                parts.append(memoryview(piece)[:want])
                got = size
        return b"".join(parts)

    def read1(self, size: int | None = -1) -> bytes:
        return self.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        # werkzeug's LimitedStream reads so: straight from the pieces, one copy.
        target = memoryview(buffer).cast("B")
        size = self._due(len(target))
        if size <= 0:
            return 0
        pos = self._pos
        index, offset = divmod(pos, PIECE)
        done = 0
        while done < size:
            piece = self._pieces[index]
            n = min(len(piece) - offset, size - done)
            target[done : done + n] = memoryview(piece)[offset : offset + n]
            done += n
            index += 1
            offset = 0
        self._pos = pos + size
        return size

    def readline(self, size: int | None = -1) -> bytes:
        size = self._due(size)
        if size <= 0:
            return b""
        pos = self._pos
        index, offset = divmod(pos, PIECE)
        parts: list[bytes] = []
        got = 0
        while got < size:
            piece = self._pieces[index]
            stop = min(offset + size - got, len(piece))
            nl = piece.find(b"\n", offset, stop)
            end = nl + 1 if nl >= 0 else stop
            parts.append(piece[offset:end])
            got += end - offset
            if nl >= 0:
                break
            index += 1
            offset = 0
        self._pos = pos + got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> MemoryBody:
        self._check()
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        self._check()
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            offset += self._readable
        elif whence != 0:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if offset < 0:
            raise ValueError(f"negative seek value {offset}")
        self._pos = offset
        return offset

    def tell(self) -> int:
        self._check()
        return self._pos

    def readable(self) -> bool:
        self._check()
        return True

    def seekable(self) -> bool:
        self._check()
        return True

    def writable(self) -> bool:
        self._check()
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._pieces = []
        self._parts = []

    def _due(self, size: int | None) -> int:
        """How many bytes a read of ``size`` (None or negative: all) takes from where it is."""
        self._check()
        left = self._readable - self._pos
        return left if size is None or size < 0 or size > left else size

    def _check(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")


def spool_failure(e: OSError, directory: str | None) -> tuple[int, str]:
    """The status and the log detail for a body that could not be spooled to ``directory`` (None:
    the system's temporary directory), the same on every face."""
    where = directory or tempfile.gettempdir()
    status = 507 if e.errno in _NO_ROOM else 503
    return status, f"cannot spool the request body to {where}: {e.strerror or e}"
