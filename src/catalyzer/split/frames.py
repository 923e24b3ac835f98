"""The split-mode wire: one message is a list of ZeroMQ frames (pure: no Twisted, no ZeroMQ).

Frame 0 starts with a fixed 18-byte header: protocol version (1 byte), message kind (1 byte), the
sender's per-session sequence number (8 bytes) and the request id (8 bytes; 0 when the message is
about no request); the metadata follows in the same frame: pairs of a short key (1-byte length)
and a value (4-byte length), in order and repeatable. One frame for both, because each frame is
a send and a receive on each side (protocol 2 had them in two). Every further frame is body
bytes, passed through untouched, so a body chunk is never copied into a bigger buffer to be
framed.

:func:`decode` turns any list of frames into a :class:`Message` or raises :class:`FrameError`
with a message that says what was wrong: nothing else escapes it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

__all__ = [
    "BATCH",
    "FORWARDED_RESULT",
    "FROM_FRONT",
    "FROM_HANDLER",
    "PROTOCOL_VERSION",
    "FrameError",
    "Kind",
    "Message",
    "decode",
    "encode",
    "encode_batch",
    "encode_parts",
    "split_batch",
]

PROTOCOL_VERSION: Final = 3
# The kind byte of a batch: several messages in one ZeroMQ message (never a Kind of its own).
BATCH: Final = 0xFF
_COUNT: Final = struct.Struct(">I")
_HEADER: Final = struct.Struct(">BBQQ")
_VALUE_LENGTH: Final = struct.Struct(">I")
_MAX_SEQ: Final = 2**64 - 1
_KEY_LENGTHS: Final = tuple(bytes((n,)) for n in range(256))


class FrameError(ValueError):
    """A message that is not a well-formed split-mode message; the text says why."""


class Kind(IntEnum):
    HELLO = 1  # h->f: join (host, pid, tag, generation, slots)
    WELCOME = 2  # f->h: joined (session parameters: heartbeat interval, liveness, window)
    RESET = 3  # f->h: unknown session, say HELLO again
    CREDIT = 4  # h->f: n more requests may be sent (negative: n fewer)
    REQ = 5  # f->h: a request (metadata + body frames)
    START = 6  # h->f: about to call the app
    GO = 7  # f->h: you may (methods that are not retried)
    HEAD = 8  # h->f: the response began (status); its body frames are the first bytes
    DATA = 9  # h->f: more response bytes
    END = 10  # h->f: the response is over (returns the credit)
    WIN = 11  # f->h: n more response bytes may be sent
    CANCEL = 12  # f->h: client gone or deadline passed
    RETURN = 13  # h->f: a request given back unstarted (returns the credit)
    HB = 14  # both: heartbeat
    DRAIN = 15  # h->f: send me no more work
    BYE = 16  # h->f: everything I had is finished; I am leaving
    BODYREQ = 17  # h->f: the app reads the request body: send n bytes from offset o
    BODY = 18  # f->h: request body bytes from offset o
    REPLY = 19  # h->f: a whole response in one message (START, HEAD and END in one)


FROM_HANDLER: Final = frozenset(
    {
        Kind.HELLO,
        Kind.CREDIT,
        Kind.START,
        Kind.HEAD,
        Kind.DATA,
        Kind.END,
        Kind.RETURN,
        Kind.HB,
        Kind.DRAIN,
        Kind.BYE,
        Kind.BODYREQ,
        Kind.REPLY,
    }
)
FROM_FRONT: Final = frozenset(
    {
        Kind.WELCOME,
        Kind.RESET,
        Kind.REQ,
        Kind.GO,
        Kind.WIN,
        Kind.CANCEL,
        Kind.HB,
        Kind.BODY,
    }
)

Meta = tuple[tuple[bytes, bytes], ...]
# A body frame as sent: bytes, or a view of part of a larger response (not copied to be sent).
Frame = bytes | memoryview

# Kind by number without Enum's call machinery (a few microseconds a message otherwise).
_KINDS: Final[dict[int, Kind]] = {k.value: k for k in Kind}

# The environ entries the front's judgement of proxy headers (apply_forwarded) may set: a REQ
# carries their final values (``e`` pairs), which the handler's environ takes as they are.
FORWARDED_RESULT: Final = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
    "HTTPS",
    "HTTP_HOST",
    "SCRIPT_NAME",
)


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    seq: int = 0
    rid: int = 0
    meta: Meta = ()
    body: tuple[Frame, ...] = ()

    def get(self, key: bytes) -> bytes | None:
        """The first value of ``key``, or None."""
        for k, v in self.meta:
            if k == key:
                return v
        return None

    def get_all(self, key: bytes) -> list[bytes]:
        return [v for k, v in self.meta if k == key]

    def get_text(self, key: bytes, default: str = "") -> str:
        value = self.get(key)
        return default if value is None else value.decode("latin-1")

    def get_int(self, key: bytes, default: int | None = None) -> int:
        """The value of ``key`` as a decimal integer; FrameError if absent (with no default) or
        not an integer."""
        value = self.get(key)
        if value is None:
            if default is None:
                raise FrameError(f"{self.kind.name}: missing {key.decode('latin-1')!r}")
            return default
        if not value or len(value) > 20 or not value.lstrip(b"-").isdigit():
            raise FrameError(f"{self.kind.name}: {key.decode('latin-1')!r} is not an integer")
        return int(value)

    def get_float(self, key: bytes, default: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise FrameError(
                f"{self.kind.name}: {key.decode('latin-1')!r} is not a number"
            ) from None
        if not math.isfinite(number):
            raise FrameError(f"{self.kind.name}: {key.decode('latin-1')!r} is not finite")
        return number

    @property
    def body_length(self) -> int:
        return sum(len(b) for b in self.body)


def _encode_meta(meta: Meta) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    pack = _VALUE_LENGTH.pack
    for key, value in meta:
        n = len(key)
        if not 0 < n < 256:
            raise ValueError(f"metadata key {key!r}: 1 to 255 bytes")
        append(_KEY_LENGTHS[n] + key + pack(len(value)) + value)
    return b"".join(parts)


def encode(message: Message) -> list[Frame]:
    """The frames of ``message``. ValueError for what no peer could decode (a key too long, a
    sequence number or request id out of range): a bug of the sender, not bad input."""
    return encode_parts(message.kind, message.seq, message.rid, message.meta, message.body)


def encode_parts(kind: Kind, seq: int, rid: int, meta: Meta, body: Sequence[Frame]) -> list[Any]:
    """:func:`encode` for body frames that may be views of a larger buffer (never copied)."""
    if not 0 <= seq <= _MAX_SEQ or not 0 <= rid <= _MAX_SEQ:
        raise ValueError(f"sequence number or request id out of range: {kind!r} {seq} {rid}")
    header = _HEADER.pack(PROTOCOL_VERSION, kind, seq, rid)
    frames: list[Any] = [header + _encode_meta(meta) if meta else header]
    frames.extend(body)
    return frames


def _decode_meta(data: bytes, pos: int) -> Meta:
    """The pairs in ``data`` from ``pos`` to its end."""
    pairs: list[tuple[bytes, bytes]] = []
    end = len(data)
    while pos < end:
        klen = data[pos]
        if klen == 0:
            raise FrameError(f"metadata: empty key at byte {pos}")
        pos += 1
        if pos + klen + 4 > end:
            raise FrameError(f"metadata: truncated key at byte {pos - 1}")
        key = data[pos : pos + klen]
        pos += klen
        (vlen,) = _VALUE_LENGTH.unpack_from(data, pos)
        pos += 4
        if pos + vlen > end:
            raise FrameError(
                f"metadata: value of {key.decode('latin-1')!r} claims {vlen} bytes, "
                f"{end - pos} left"
            )
        pairs.append((key, data[pos : pos + vlen]))
        pos += vlen
    return tuple(pairs)


def decode(frames: Sequence[Frame]) -> Message:
    """The message in ``frames``; FrameError, saying what is wrong, for anything else."""
    if not frames:
        raise FrameError("empty message")
    try:
        header = frames[0]
        if type(header) is not bytes:
            header = bytes(header)
        if len(header) < _HEADER.size:
            raise FrameError(
                f"header frame of {len(header)} bytes, expected {_HEADER.size} or more"
            )
        version, kind, seq, rid = _HEADER.unpack_from(header)
        if version != PROTOCOL_VERSION:
            raise FrameError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
        known = _KINDS.get(kind)
        if known is None:
            raise FrameError(f"unknown message kind {kind}")
        meta = _decode_meta(header, _HEADER.size) if len(header) > _HEADER.size else ()
        # Body frames received without a copy (views of ZeroMQ's buffers) stay as they are.
        body = tuple(
            f if type(f) is bytes or type(f) is memoryview else bytes(f) for f in frames[1:]
        )
    except FrameError:
        raise
    except (TypeError, ValueError, struct.error, IndexError) as e:  # frames that are not bytes
        raise FrameError(f"malformed message: {e}") from None
    return Message(known, seq, rid, meta, body)


def encode_batch(messages: Sequence[Sequence[Frame]]) -> list[Any]:
    """Several messages' frames as one ZeroMQ message: a header of kind :data:`BATCH` followed,
    in its frame, by each message's frame count (4 bytes each), then every message's frames in
    order. One send and one wake-up of each side's I/O thread, however many messages."""
    frames: list[Any] = [
        _HEADER.pack(PROTOCOL_VERSION, BATCH, 0, 0)
        + b"".join([_COUNT.pack(len(m)) for m in messages])
    ]
    for message in messages:
        frames.extend(message)
    return frames


def split_batch(frames: Sequence[Frame]) -> list[list[Frame]] | None:
    """The messages of a batch, in order; None if ``frames`` is not a batch (a message of its
    own), FrameError for a batch whose counts do not match its frames."""
    if not frames or len(frames[0]) < _HEADER.size or frames[0][1] != BATCH:
        return None
    counts = memoryview(frames[0])[_HEADER.size :]
    if len(counts) % _COUNT.size or not counts:
        raise FrameError(f"batch: counts of {len(counts)} bytes")
    out: list[list[Frame]] = []
    pos = 1
    for (n,) in _COUNT.iter_unpack(counts):
        if n < 1 or pos + n > len(frames):
            raise FrameError(f"batch: a message of {n} frames at frame {pos} of {len(frames)}")
        out.append(list(frames[pos : pos + n]))
        pos += n
    if pos != len(frames):
        raise FrameError(f"batch: {len(frames) - pos} frames past its messages")
    return out
