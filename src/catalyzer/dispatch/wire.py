"""The dispatcher's wire: the process contract between the pool and its children.

AMP boxes written and parsed by hand (the child speaks them without Twisted, and the pool's side is
faster without AMP's general machinery), the box vocabulary, and the environment variable that
carries a child's spec. Both sides import this module; it imports nothing from Twisted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

#: The environment variable holding a child's spec, as JSON.
ENV_KEY: Final = "CATALYZER_DISPATCH"


def encode_box(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """One AMP box: each key and value prefixed with its 16-bit length, then an empty key."""
    parts = []
    for key, value in items:
        if len(key) > 0xFF or len(value) > 0xFFFF:
            raise ValueError(f"AMP key or value too long: {key!r} ({len(value)} bytes)")
        parts.append(struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value)
    parts.append(b"\x00\x00")
    return b"".join(parts)


class BoxParser:
    """AMP boxes from a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[bytes, bytes]]:
        buf = self._buffer
        buf += data
        boxes = []
        start = 0
        end = len(buf)
        while True:
            box: dict[bytes, bytes] = {}
            pos = start
            complete = False
            while pos + 2 <= end:
                klen = (buf[pos] << 8) | buf[pos + 1]
                if klen == 0:
                    pos += 2
                    complete = True
                    break
                if pos + 2 + klen + 2 > end:
                    break
                key = bytes(buf[pos + 2 : pos + 2 + klen])
                pos += 2 + klen
                vlen = (buf[pos] << 8) | buf[pos + 1]
                if pos + 2 + vlen > end:
                    break
                box[key] = bytes(buf[pos + 2 : pos + 2 + vlen])
                pos += 2 + vlen
            if not complete:
                break
            boxes.append(box)
            start = pos
        if start:
            del buf[:start]
        return boxes
