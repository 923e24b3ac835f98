"""The split-mode codec: round trips of any message, and every malformed input a FrameError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalyzer.split.frames import (
    FROM_FRONT,
    FROM_HANDLER,
    PROTOCOL_VERSION,
    FrameError,
    Kind,
    Message,
    decode,
    encode,
    encode_batch,
    split_batch,
)

keys = st.binary(min_size=1, max_size=255)
messages = st.builds(
    Message,
    kind=st.sampled_from(Kind),
    seq=st.integers(0, 2**64 - 1),
    rid=st.integers(0, 2**64 - 1),
    meta=st.lists(st.tuples(keys, st.binary(max_size=300)), max_size=8).map(tuple),
    body=st.lists(st.binary(max_size=2000), max_size=4).map(tuple),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    decoded = decode(encode(message))
    assert decoded.kind == message.kind
    assert decoded.seq == message.seq
    assert decoded.rid == message.rid
    assert decoded.meta == message.meta
    # An empty metadata frame followed by no body frames is not sent at all.
    assert decoded.body == message.body


def test_body_frames_pass_untouched() -> None:
    chunk = b"x" * 100_000
    frames = encode(Message(Kind.DATA, 3, 7, (), (chunk, b"tail")))
    assert frames[1] is chunk
    assert frames[0] == struct.pack(">BBQQ", PROTOCOL_VERSION, Kind.DATA, 3, 7)


def test_header_layout() -> None:
    frames = encode(Message(Kind.REQ, 5, 9, ((b"m", b"GET"),)))
    # The metadata follows the header in its frame.
    assert frames == [
        struct.pack(">BBQQ", PROTOCOL_VERSION, Kind.REQ, 5, 9) + b"\x01m\x00\x00\x00\x03GET"
    ]


def test_repeated_keys_keep_order() -> None:
    message = Message(Kind.REQ, meta=((b"h", b"a: 1"), (b"m", b"GET"), (b"h", b"b: 2")))
    decoded = decode(encode(message))
    assert decoded.get_all(b"h") == [b"a: 1", b"b: 2"]
    assert decoded.get(b"m") == b"GET"
    assert decoded.get(b"zz") is None


def test_directions_cover_every_kind() -> None:
    assert set(Kind) == FROM_FRONT | FROM_HANDLER
    assert {Kind.HB} == FROM_FRONT & FROM_HANDLER


def _header(version: int = PROTOCOL_VERSION, kind: int = Kind.HB) -> bytes:
    return struct.pack(">BBQQ", version, kind, 0, 0)


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ([], "empty message"),
        ([b"short"], "header frame of 5 bytes"),
        ([_header()[:17]], "header frame of 17 bytes"),
        ([_header() + b"x"], "truncated key"),
        ([_header(version=2)], "protocol version 2, expected 3"),
        ([_header(kind=0xFF)], "unknown message kind 255"),  # a batch is taken apart first
        ([_header(kind=0)], "unknown message kind 0"),
        ([_header(kind=200)], "unknown message kind 200"),
        ([_header() + b"\x00"], "empty key"),
        ([_header() + b"\x05ab"], "truncated key"),
        ([_header() + b"\x01k\x00\x00\x00\x09abc"], "claims 9 bytes, 3 left"),
        ([_header() + b"\x01k\x00\x00"], "truncated key"),
        ([object()], "malformed message"),
        ([_header(), 4.5], "malformed message"),
    ],
)
def test_malformed(frames: list[object], says: str) -> None:
    with pytest.raises(FrameError, match=says):
        decode(frames)  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=40), max_size=4))
def test_any_bytes_decode_or_frame_error(frames: list[bytes]) -> None:
    with contextlib.suppress(FrameError):
        decode(frames)


def test_integer_and_number_values() -> None:
    message = Message(Kind.HELLO, meta=((b"slots", b"4"), (b"bad", b"4x"), (b"w", b"0.5")))
    assert message.get_int(b"slots") == 4
    assert message.get_int(b"absent", 7) == 7
    with pytest.raises(FrameError, match="'bad' is not an integer"):
        message.get_int(b"bad")
    with pytest.raises(FrameError, match="HELLO: missing 'absent'"):
        message.get_int(b"absent")
    assert message.get_float(b"w", 1.0) == 0.5
    with pytest.raises(FrameError, match="not a number"):
        message.get_float(b"bad", 1.0)
    assert Message(Kind.HB, meta=((b"w", b"nan"),)).get_float(b"x", 2.0) == 2.0
    with pytest.raises(FrameError, match="not finite"):
        Message(Kind.HB, meta=((b"w", b"inf"),)).get_float(b"w", 1.0)


def test_encode_refuses_what_no_peer_could_read() -> None:
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        encode(Message(Kind.HELLO, meta=((b"", b"x"),)))
    with pytest.raises(ValueError, match="out of range"):
        encode(Message(Kind.HB, seq=-1))


message_frames = st.lists(st.binary(max_size=30), min_size=1, max_size=4)


@given(st.lists(message_frames, min_size=1, max_size=5))
def test_batch_round_trip(messages: list[list[bytes]]) -> None:
    frames = [bytes(f) for f in encode_batch(messages)]
    assert split_batch(frames) == messages


def test_a_single_message_is_not_a_batch() -> None:
    assert split_batch(encode(Message(Kind.HB))) is None
    assert split_batch(encode(Message(Kind.REQ, meta=((b"m", b"GET"),)))) is None


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ([_header(kind=0xFF)], "counts of 0 bytes"),
        ([_header(kind=0xFF) + b"\x00\x00\x01"], "counts of 3 bytes"),
        ([_header(kind=0xFF) + struct.pack(">I", 2), b"a"], "a message of 2 frames"),
        ([_header(kind=0xFF) + struct.pack(">I", 0)], "a message of 0 frames"),
        ([_header(kind=0xFF) + struct.pack(">I", 1), b"a", b"b"], "1 frames past"),
    ],
)
def test_malformed_batch(frames: list[bytes], says: str) -> None:
    with pytest.raises(FrameError, match=says):
        split_batch(frames)
