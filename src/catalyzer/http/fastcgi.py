"""FastCGI's responder role, the application side, without sockets: records in, events out.

What nginx's ``fastcgi_pass`` (or Apache mod_proxy_fcgi, lighttpd, OpenBSD httpd) sends is a
stream of records (FastCGI 1.0 specification)::

    version (1) | type | requestId (u16 BE) | contentLength (u16 BE) | paddingLength | reserved
    contentLength bytes of content, paddingLength bytes of padding

A request is ``FCGI_BEGIN_REQUEST`` (role, ``FCGI_KEEP_CONN``), an ``FCGI_PARAMS`` stream (name-value
pairs, ended by an empty record) and an ``FCGI_STDIN`` stream (the body, ended by an empty record).
Records are taken as they arrive, whatever the reads' sizes; at most one record (64 KiB) is held.

What this parser decides (the connection shell only acts on it):

- one request at a time (``FCGI_MPXS_CONNS`` is 0): a ``FCGI_BEGIN_REQUEST`` while another request
  is in progress is answered ``FCGI_END_REQUEST`` with ``FCGI_CANT_MPX_CONN``; a role other than
  responder with ``FCGI_UNKNOWN_ROLE``;
- ``FCGI_GET_VALUES`` is answered with ``FCGI_MAX_CONNS``, ``FCGI_MAX_REQS`` and ``FCGI_MPXS_CONNS``;
  a management record of another type, and any record of a type the specification does not
  define, with ``FCGI_UNKNOWN_TYPE``;
- ``FCGI_ABORT_REQUEST``: before the request was handed over it is dropped and ended here; after,
  :class:`Abort` tells the shell to abandon the response (closing the app's iterable);
- limits: the params stream as uwsgi's variable block (``max-request-line`` + ``max-header-bytes``,
  431), ``max-headers`` HTTP_ params (431), ``max-body`` (413); the body is spooled as on the HTTP
  face;
- anything else out of place (a wrong version, a record the web server never sends, a broken
  name-value pair, stdin before the params end) is :class:`~catalyzer.http.cgi.Malformed`: the
  shell logs it and closes; nothing more is read.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from dataclasses import dataclass
from typing import IO, Final

from catalyzer.http.cgi import (
    CGIRequest,
    Malformed,
    Refused,
    count_headers,
    new_request,
    var_block_limit,
)
from catalyzer.http.reader import BodyWatcher, Limits, Request
from catalyzer.http.spool import body_file, memory_body, spool_failure

__all__ = [
    "Abort",
    "Event",
    "FastCGIParser",
    "Reply",
    "encode_pairs",
    "end_request",
    "parse_pairs",
    "record",
    "stdout_records",
]

VERSION: Final = 1
BEGIN_REQUEST: Final = 1
ABORT_REQUEST: Final = 2
END_REQUEST: Final = 3
PARAMS: Final = 4
STDIN: Final = 5
STDOUT: Final = 6
STDERR: Final = 7
DATA: Final = 8
GET_VALUES: Final = 9
GET_VALUES_RESULT: Final = 10
UNKNOWN_TYPE: Final = 11

RESPONDER: Final = 1
KEEP_CONN: Final = 1

REQUEST_COMPLETE: Final = 0
CANT_MPX_CONN: Final = 1
OVERLOADED: Final = 2
UNKNOWN_ROLE: Final = 3

MAX_CONTENT: Final = 65535

_HEADER: Final = struct.Struct("!BBHHBx")
_BEGIN: Final = struct.Struct("!HB5x")
_END: Final = struct.Struct("!IB3x")
_U32: Final = struct.Struct("!I")
# Record types only an application sends: a web server sending one is broken.
_APP_TYPES: Final = frozenset((END_REQUEST, STDOUT, STDERR, GET_VALUES_RESULT, UNKNOWN_TYPE))


@dataclass(frozen=True, slots=True)
class Reply:
    """Records to send as they are (answers the parser made itself). ``close``: then end the
    connection (a refused request whose BEGIN did not ask to keep it)."""

    data: bytes
    close: bool = False


@dataclass(frozen=True, slots=True)
class Abort:
    """The web server abandoned request ``request_id``, already handed over: abandon its response
    and end it with ``FCGI_END_REQUEST``."""

    request_id: int


Event = CGIRequest | Refused | Malformed | Reply | Abort


def record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    """One record, padded to a multiple of 8 bytes as the specification recommends."""
    padding = -len(content) % 8
    return _HEADER.pack(VERSION, kind, request_id, len(content), padding) + content + bytes(padding)


def stdout_records(request_id: int, data: bytes) -> list[bytes]:
    """``data`` as ``FCGI_STDOUT`` records of at most 65535 bytes (unpadded: no copy to pad)."""
    pack = _HEADER.pack
    if len(data) <= MAX_CONTENT:
        return [pack(VERSION, STDOUT, request_id, len(data), 0), data]
    out = []
    for start in range(0, len(data), MAX_CONTENT):
        piece = data[start : start + MAX_CONTENT]
        out += [pack(VERSION, STDOUT, request_id, len(piece), 0), piece]
    return out


def end_request(
    request_id: int, protocol_status: int = REQUEST_COMPLETE, *, stdout: bool = True
) -> bytes:
    """The ``FCGI_END_REQUEST`` record, after the empty record that ends ``FCGI_STDOUT`` when a
    response was sent (``stdout``, only for a completed request)."""
    end = record(END_REQUEST, request_id, _END.pack(0, protocol_status))
    if stdout and protocol_status == REQUEST_COMPLETE:
        return _HEADER.pack(VERSION, STDOUT, request_id, 0, 0) + end
    return end


def _length(n: int) -> bytes:
    return bytes((n,)) if n < 128 else _U32.pack(n | 0x80000000)


def encode_pairs(pairs: dict[bytes, bytes]) -> bytes:
    return b"".join(_length(len(k)) + _length(len(v)) + k + v for k, v in pairs.items())


def parse_pairs(data: bytes) -> dict[bytes, bytes]:
    """The name-value pairs of a params (or get-values) stream; ValueError if malformed."""
    pairs: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    unpack = _U32.unpack_from
    try:
        while pos < end:
            # Straight-line rather than a loop over the two lengths: this runs per request.
            name_size = data[pos]
            if name_size < 128:
                pos += 1
            else:
                name_size = unpack(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            value_size = data[pos]
            if value_size < 128:
                pos += 1
            else:
                value_size = unpack(data, pos)[0] & 0x7FFFFFFF
                pos += 4
            if not name_size:
                raise ValueError("empty name")
            stop = pos + name_size + value_size
            if stop > end:
                raise ValueError("name-value pair longer than its stream")
            pairs[data[pos : pos + name_size]] = data[pos + name_size : stop]
            pos = stop
    except (IndexError, struct.error):
        raise ValueError("name-value pair ends inside a length") from None
    return pairs


class Phase(enum.Enum):
    IDLE = "idle"  # no request in progress
    PARAMS = "params"
    STDIN = "stdin"
    HANDED = "handed"  # the request is with the application until request_done()
    REFUSED = "refused"  # refused while arriving: its remaining records are ignored
    BROKEN = "broken"  # the peer broke the protocol: nothing more is read


_BROKEN: Final = Phase.BROKEN


class FastCGIParser:
    """``values``: the answers to ``FCGI_GET_VALUES`` (``FCGI_MAX_CONNS`` and ``FCGI_MAX_REQS``;
    ``FCGI_MPXS_CONNS`` is always 0)."""

    def __init__(
        self,
        limits: Limits | None = None,
        watcher: BodyWatcher | None = None,
        max_conns: int = 1000,
    ) -> None:
        self.limits = limits = limits or Limits()
        self._watcher = watcher
        self._values = {
            b"FCGI_MAX_CONNS": str(max_conns).encode(),
            b"FCGI_MAX_REQS": str(max_conns).encode(),
            b"FCGI_MPXS_CONNS": b"0",
        }
        self._max_params = var_block_limit(limits)
        self._buffer = bytearray()
        self._events: deque[Event] = deque()
        self._phase = Phase.IDLE
        self._request_id = 0
        self._keep_conn = False
        self._params = bytearray()
        self._variables: dict[bytes, bytes] = {}
        self._request: Request | None = None
        self._body: IO[bytes] | None = None

    # -- state, as the connection shell asks

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def in_head(self) -> bool:
        return self._phase is Phase.PARAMS or (self._phase is Phase.IDLE and bool(self._buffer))

    @property
    def in_body(self) -> bool:
        return self._phase is Phase.STDIN

    @property
    def body_received(self) -> int:
        return self._request.body_length if self._request is not None else 0

    @property
    def stopped(self) -> bool:
        return self._phase is Phase.BROKEN

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def request_done(self) -> None:
        """The response to the request handed over (or refused) has ended: the next may begin."""
        if self._phase is not Phase.BROKEN:
            self._phase = Phase.IDLE
            self._request_id = 0

    # -- input

    def receive_data(self, data: bytes) -> None:
        if self.stopped or not data:
            return
        buffer = self._buffer
        buffer += data
        pos = 0
        size = len(buffer)
        header = _HEADER.size
        while size - pos >= header and self._phase is not _BROKEN:
            version, kind, request_id, length, padding = _HEADER.unpack_from(buffer, pos)
            if version != VERSION:
                self._malformed(f"FastCGI record of version {version}")
                return
            end = pos + header + length + padding
            if end > size:
                break
            content = bytes(buffer[pos + header : pos + header + length])
            pos = end
            self._record(kind, request_id, content)
        if not self.stopped:
            del buffer[:pos]

    def receive_eof(self) -> None:
        """The peer closed: a request still arriving is dropped."""
        if self._phase in (Phase.PARAMS, Phase.STDIN):
            self._drop(None)
        self._phase = Phase.BROKEN

    # -- records

    def _record(self, kind: int, request_id: int, content: bytes) -> None:
        if request_id == 0:
            if kind == GET_VALUES:
                self._get_values(content)
            else:
                self._events.append(Reply(record(UNKNOWN_TYPE, 0, bytes((kind,)) + bytes(7))))
            return
        if kind == BEGIN_REQUEST:
            self._begin(request_id, content)
        elif kind in (PARAMS, STDIN, ABORT_REQUEST):
            if request_id != self._request_id or self._phase is Phase.IDLE:
                return  # a request we refused or already ended: its stragglers are ignored
            if kind == ABORT_REQUEST:
                self._abort()
            elif self._phase is Phase.REFUSED:
                return
            elif kind == PARAMS:
                self._params_record(content)
            else:
                self._stdin_record(content)
        elif kind == DATA:
            pass  # the filter role's second stream: not part of a responder's request
        elif kind in _APP_TYPES:
            self._malformed(f"FastCGI record of type {kind}, which only an application sends")
        else:
            self._events.append(Reply(record(UNKNOWN_TYPE, 0, bytes((kind,)) + bytes(7))))

    def _get_values(self, content: bytes) -> None:
        try:
            asked = parse_pairs(content)
        except ValueError as e:
            self._malformed(f"malformed FCGI_GET_VALUES: {e}")
            return
        known = {name: self._values[name] for name in asked if name in self._values}
        self._events.append(Reply(record(GET_VALUES_RESULT, 0, encode_pairs(known))))

    def _begin(self, request_id: int, content: bytes) -> None:
        if len(content) != _BEGIN.size:
            self._malformed(f"FCGI_BEGIN_REQUEST of {len(content)} bytes")
            return
        role, flags = _BEGIN.unpack(content)
        keep_conn = bool(flags & KEEP_CONN)
        if self._phase is not Phase.IDLE:
            if request_id == self._request_id:
                self._malformed(f"FCGI_BEGIN_REQUEST for request {request_id}, already begun")
            else:
                self._events.append(Reply(end_request(request_id, CANT_MPX_CONN)))
            return
        if role != RESPONDER:
            self._events.append(Reply(end_request(request_id, UNKNOWN_ROLE), close=not keep_conn))
            return
        self._phase = Phase.PARAMS
        self._request_id = request_id
        self._keep_conn = keep_conn
        self._params = bytearray()

    def _params_record(self, content: bytes) -> None:
        if self._phase is not Phase.PARAMS:
            self._malformed(f"FCGI_PARAMS for request {self._request_id} after its end")
            return
        if content:
            self._params += content
            if len(self._params) > self._max_params:
                self._refuse(431, f"FastCGI params larger than {self._max_params} bytes")
            return
        try:
            variables = parse_pairs(bytes(self._params))
        except ValueError as e:
            self._malformed(f"malformed FCGI_PARAMS: {e}")
            return
        self._params = bytearray()
        if count_headers(variables) > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} HTTP_ params")
            return
        request = new_request(variables)
        if isinstance(request, Refused):
            self._refuse(request.status, request.detail)
            return
        length = request.content_length
        if length is not None and length > self.limits.max_body:
            self._refuse(413, f"declared body of {length} bytes exceeds {self.limits.max_body}")
            return
        self._variables = variables
        self._request = request
        self._phase = Phase.STDIN
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.started(request)

    def _stdin_record(self, content: bytes) -> None:
        request = self._request
        if self._phase is not Phase.STDIN or request is None:
            self._malformed(f"FCGI_STDIN for request {self._request_id} before its params ended")
            return
        if content:
            if request.body_length + len(content) > self.limits.max_body:
                self._refuse(413, f"body exceeds {self.limits.max_body} bytes")
                return
            body = self._body
            if body is None:
                length = request.content_length
                if length is not None and length <= self.limits.body_spool_threshold:
                    # FCGI_STDIN records carry at most 64 KiB: written into the body's full
                    # size in place (a stream longer than CONTENT_LENGTH grows it, a shorter one
                    # is cut to size at its end).
                    body = memory_body(length)
                else:
                    body = body_file(
                        length, self.limits.body_spool_threshold, self.limits.spool_dir
                    )
                self._body = request.body = body
            try:
                body.write(content)
            except OSError as e:
                self._refuse(*spool_failure(e, self.limits.spool_dir))
                return
            request.body_length += len(content)
            if request.upload_id is not None and self._watcher is not None:
                self._watcher.progress(request, request.body_length)
            return
        if self._body is not None:
            if request.body_length != request.content_length:
                self._body.truncate(request.body_length)  # memory_body's zeros past the end
            self._body.seek(0)
        if request.upload_id is not None and self._watcher is not None:
            self._watcher.finished(request)
        self._events.append(CGIRequest(self._variables, request, self._request_id, self._keep_conn))
        self._request = None
        self._body = None
        self._variables = {}
        self._phase = Phase.HANDED

    def _abort(self) -> None:
        if self._phase is Phase.HANDED:
            self._events.append(Abort(self._request_id))
            return
        self._drop(None)
        self._events.append(
            Reply(end_request(self._request_id, stdout=False), close=not self._keep_conn)
        )
        self._phase = Phase.IDLE
        self._request_id = 0

    # -- endings

    def _drop(self, status: int | None) -> None:
        request = self._request
        if request is not None:
            if request.upload_id is not None and self._watcher is not None:
                self._watcher.failed(request, status)
            if request.body is not None:
                request.body.close()
        self._request = None
        self._body = None
        self._params = bytearray()

    def _refuse(self, status: int, detail: str) -> None:
        self._drop(status)
        self._events.append(Refused(status, detail, self._request_id))
        self._phase = Phase.REFUSED

    def _malformed(self, detail: str) -> None:
        if self._phase in (Phase.PARAMS, Phase.STDIN):
            self._drop(None)
        self._events.append(Malformed(detail))
        self._phase = Phase.BROKEN
        self._buffer = bytearray()
