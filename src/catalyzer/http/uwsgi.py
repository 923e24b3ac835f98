"""The uwsgi protocol's request side (what nginx's ``uwsgi_pass`` sends), without sockets.

A request is one packet and a body, on a connection of its own (nginx keeps no uwsgi connection
alive)::

    modifier1 (u8, 0 = WSGI) | datasize (u16 little-endian) | modifier2 (u8)
    datasize bytes of variables: (keysize u16le, key, valsize u16le, value) ...
    CONTENT_LENGTH bytes of body

Usage::

    parser = UwsgiParser(limits)
    parser.receive_data(data)  # bytes, or a view of a buffer the caller reuses
    n = parser.body_room       # a body kept in memory: read at most n bytes for it, then
    parser.received_piece(data)  # hand them over
    event = parser.next_event()  # CGIRequest, Refused or Malformed; then the parser reads no more

Limits: the variable block is refused with 431 past ``max-request-line`` + ``max-header-bytes``
(and can never pass 65535, the size field's maximum), more than ``max-headers`` HTTP_ variables get
431, a CONTENT_LENGTH past ``max-body`` 413. The body is spooled as on the HTTP face: in memory up
to ``body-spool-threshold`` (spool.MemoryBody, the pieces as received), else in a temporary file.
"""

from __future__ import annotations

import enum
import struct
from typing import IO, Final

from catalyzer.http.cgi import (
    CGIRequest,
    Malformed,
    Refused,
    count_headers,
    new_request,
    uwsgi_var_block_limit,
)
from catalyzer.http.reader import BodyWatcher, Limits, Request
from catalyzer.http.spool import MemoryBody, body_file, spool_failure

__all__ = ["Event", "UwsgiParser", "encode_vars", "parse_vars"]

Event = CGIRequest | Refused | Malformed

_HEAD: Final = struct.Struct("<BHB")
_U16: Final = struct.Struct("<H")


class Phase(enum.Enum):
    HEAD = "head"  # waiting for the 4-byte packet header
    VARS = "vars"
    BODY = "body"
    DONE = "done"  # the request (or an error) is out; nothing more is read


def parse_vars(block: bytes) -> dict[bytes, bytes]:
    """The variables of a uwsgi block; ValueError if the block is not a sequence of pairs."""
    variables: dict[bytes, bytes] = {}
    pos = 0
    end = len(block)
    try:
        while pos < end:
            size = block[pos] | block[pos + 1] << 8
            key = block[pos + 2 : pos + 2 + size]
            pos += 2 + size
            size = block[pos] | block[pos + 1] << 8
            pos += 2
            if pos + size > end:
                raise ValueError("variable block ends inside a value")
            if not key:
                raise ValueError("empty variable name")
            variables[key] = block[pos : pos + size]
            pos += size
    except IndexError:
        raise ValueError("variable block ends inside a size") from None
    return variables


def encode_vars(variables: dict[bytes, bytes], modifier1: int = 0) -> bytes:
    """A uwsgi request packet (for tests and benchmarks; the server never sends one)."""
    block = b"".join(_U16.pack(len(k)) + k + _U16.pack(len(v)) + v for k, v in variables.items())
    return _HEAD.pack(modifier1, len(block), 0) + block


class UwsgiParser:
    def __init__(self, limits: Limits | None = None, watcher: BodyWatcher | None = None) -> None:
        self.limits = limits = limits or Limits()
        self._watcher = watcher
        self._max_vars = uwsgi_var_block_limit(limits)
        self._buffer = bytearray()
        self._needed = _HEAD.size
        self._phase = Phase.HEAD
        self._event: Event | None = None
        self._variables: dict[bytes, bytes] = {}
        self._request: Request | None = None
        self._body: IO[bytes] | None = None  # a body spooled as it arrives
        self._memory: MemoryBody | None = None  # a body kept in memory as it arrives
        self._left = 0

    # -- state, as the connection shell asks

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def in_head(self) -> bool:
        """A request has begun and its variables are not all here."""
        return self._phase is Phase.VARS or (self._phase is Phase.HEAD and bool(self._buffer))

    @property
    def in_body(self) -> bool:
        return self._phase is Phase.BODY

    @property
    def body_room(self) -> int:
        """While a body kept in memory arrives: how many bytes the caller's next read should
        ask for (a ``recv`` of its own), to give to :meth:`received_piece`; 0 for any other
        input. The reads then are the body's pieces (spool.MemoryBody): no copy out of a read
        buffer, none out of the body for an app reading it 64 KiB at a time."""
        memory = self._memory
        return memory.room if memory is not None else 0

    def received_piece(self, data: bytes) -> None:
        """``data``, read for the body as :attr:`body_room` asked (at most that much), arrived."""
        assert self._memory is not None
        self._memory.add(data)
        self._body_arrived(len(data))

    @property
    def body_received(self) -> int:
        return self._request.body_length if self._request is not None else 0

    @property
    def stopped(self) -> bool:
        return self._phase is Phase.DONE

    def next_event(self) -> Event | None:
        event, self._event = self._event, None
        return event

    # -- input

    def receive_data(self, data: bytes | memoryview) -> None:
        """Take the next bytes of the connection. ``data`` may be a view of a buffer the caller
        reuses: what is kept is copied."""
        phase = self._phase
        if phase is Phase.BODY:
            if data:
                self._body_data(data)
            return
        if phase is Phase.DONE or not data:
            return
        if self._buffer:  # a packet split across reads: rare, so simply joined
            self._buffer += data
            data, self._buffer = bytes(self._buffer), bytearray()
        # The packet is read where it lies: only the variable block is copied, and the start of
        # the body goes from ``data`` to the body file.
        pos = 0
        end = len(data)
        while True:
            phase = self._phase
            if phase is Phase.HEAD:
                if end - pos < _HEAD.size:
                    break
                self._head(*_HEAD.unpack_from(data, pos))
                pos += _HEAD.size
            elif phase is Phase.VARS:
                needed = self._needed
                if end - pos < needed:
                    break
                self._vars(bytes(data[pos : pos + needed]))
                pos += needed
            else:
                break
        if self._phase is Phase.BODY:
            if pos < end:
                self._body_data(data[pos:])
        elif self._phase is not Phase.DONE and pos < end:
            self._buffer += data[pos:]

    def receive_eof(self) -> None:
        """The peer closed: a request cut short is dropped (nobody is left to answer)."""
        if self._phase is not Phase.DONE:
            self._drop(None)
            self._phase = Phase.DONE

    def fail(self, status: int, detail: str) -> None:
        """End with an error decided outside the parser (a timeout)."""
        if self._phase is not Phase.DONE:
            self._refuse(status, detail)

    # -- internals

    def _head(self, modifier1: int, size: int, _modifier2: int) -> None:
        if modifier1 != 0:
            self._malformed(f"uwsgi packet with modifier1 {modifier1} (only 0, WSGI, is served)")
        elif size > self._max_vars:
            self._refuse(431, f"uwsgi variable block of {size} bytes exceeds {self._max_vars}")
        elif size == 0:
            self._malformed("uwsgi packet without variables")
        else:
            self._phase = Phase.VARS
            self._needed = size

    def _vars(self, block: bytes) -> None:
        try:
            variables = parse_vars(block)
        except ValueError as e:
            self._malformed(f"malformed uwsgi packet: {e}")
            return
        max_headers = self.limits.max_headers
        # Only a block of more variables than that can hold too many HTTP_ ones.
        if len(variables) > max_headers and count_headers(variables) > max_headers:
            self._refuse(431, f"more than {max_headers} HTTP_ variables")
            return
        request = new_request(variables)
        if isinstance(request, Refused):
            self._refuse(request.status, request.detail)
            return
        length = request.content_length or 0
        if length > self.limits.max_body:
            self._refuse(413, f"declared body of {length} bytes exceeds {self.limits.max_body}")
            return
        self._variables = variables
        self._request = request
        if not length:
            self._complete()
            return
        if length <= self.limits.body_spool_threshold:
            request.body = self._memory = MemoryBody(length)
        else:
            request.body = self._body = body_file(
                length, self.limits.body_spool_threshold, self.limits.spool_dir
            )
        self._left = length
        self._phase = Phase.BODY
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.started(request)

    def _body_data(self, data: bytes | memoryview) -> None:
        if len(data) > self._left:
            data = data[: self._left]  # nothing follows a uwsgi request: the rest is ignored
        size = len(data)
        if self._memory is not None:
            self._memory.add(data)
        else:
            assert self._body is not None
            try:
                self._body.write(data)
            except OSError as e:
                self._refuse(*spool_failure(e, self.limits.spool_dir))
                return
        self._body_arrived(size)

    def _body_arrived(self, size: int) -> None:
        request = self._request
        assert request is not None
        self._left -= size
        request.body_length += size
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.progress(request, request.body_length)
        if not self._left:
            self._memory = None
            assert request.body is not None
            request.body.seek(0)
            if request.upload_id is not None and self._watcher is not None:
                self._watcher.finished(request)
            self._complete()

    def _complete(self) -> None:
        assert self._request is not None
        self._event = CGIRequest(self._variables, self._request)
        self._request = None
        self._body = None
        self._end()

    def _drop(self, status: int | None) -> None:
        self._memory = None
        request = self._request
        if request is not None:
            if request.upload_id is not None and self._watcher is not None:
                self._watcher.failed(request, status)
            if request.body is not None:
                request.body.close()
        self._request = None
        self._body = None

    def _refuse(self, status: int, detail: str) -> None:
        self._drop(status)
        self._event = Refused(status, detail)
        self._end()

    def _malformed(self, detail: str) -> None:
        self._drop(None)
        self._event = Malformed(detail)
        self._end()

    def _end(self) -> None:
        self._phase = Phase.DONE
        self._buffer = bytearray()
