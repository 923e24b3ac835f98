"""Body files (catalyzer.http.spool)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalyzer.http.spool import PIECE, MemoryBody, body_file, memory_body

MIB = 1024 * 1024


def test_a_memory_body_is_sized_up_front_and_reads_back_as_written() -> None:
    data = bytes(range(256)) * (MIB // 256)
    body = memory_body(len(data))
    assert len(body.getbuffer()) == len(data) and body.tell() == 0  # one buffer, at 0
    for i in range(0, len(data), 65536):
        body.write(data[i : i + 65536])
    body.seek(0)
    assert body.read() == data


def test_a_body_file_grows_with_its_writes() -> None:
    body = body_file(MIB, MIB)
    assert isinstance(body, io.BytesIO)
    assert len(body.getbuffer()) == 0
    body.write(b"abc")
    body.seek(0)
    assert body.read() == b"abc"  # a short body stays short


def test_unknown_and_large_bodies_go_to_a_spooled_file() -> None:
    unknown = body_file(None, MIB)
    large = body_file(2 * MIB, MIB)
    try:
        assert not isinstance(unknown, io.BytesIO) and not isinstance(large, io.BytesIO)
        large.write(b"y" * (2 * MIB))
        large.seek(0)
        assert large.read() == b"y" * (2 * MIB)
    finally:
        unknown.close()
        large.close()


# -- MemoryBody: what it reads back, against a BytesIO of the same bytes

_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 3 * PIECE)),
        st.tuples(st.just("read1"), st.integers(-1, 3 * PIECE)),
        st.tuples(st.just("readinto"), st.integers(0, 2 * PIECE)),
        st.tuples(st.just("readline"), st.integers(-1, 2 * PIECE)),
        st.tuples(st.just("readline"), st.integers(-1, 3)),
        st.tuples(st.just("readlines"), st.integers(-1, PIECE)),
        st.tuples(st.just("seek"), st.integers(0, 5 * PIECE)),
        st.tuples(st.just("seek-cur"), st.integers(-PIECE, PIECE)),
        st.tuples(st.just("seek-end"), st.integers(-5 * PIECE, 0)),
        st.tuples(st.just("next"), st.just(0)),
    ),
    max_size=12,
)


def _received(data: bytes, cuts: list[int]) -> MemoryBody:
    """A body of ``data`` received in parts cut at ``cuts`` (and at each room it asks for)."""
    body = MemoryBody(len(data))
    pos = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        while pos < min(cut, len(data)):
            take = min(body.room, cut - pos)
            body.add(data[pos : pos + take])
            pos += take
    assert body.room == 0  # complete: what it asked for was exactly the body
    return body


def _apply(f: Any, op: str, arg: int) -> object:
    if op == "read":
        return f.read(arg)
    if op == "read1":
        return f.read1(arg)
    if op == "readinto":
        buffer = bytearray(arg)
        n = f.readinto(buffer)
        return n, bytes(buffer[:n])
    if op == "readline":
        return f.readline(arg)
    if op == "readlines":
        return f.readlines(arg)
    if op == "seek":
        return f.seek(arg)
    if op == "seek-cur":
        return f.seek(max(arg, -f.tell()), io.SEEK_CUR)
    if op == "seek-end":
        return f.seek(
            max(arg, -len(f.getbuffer()) if isinstance(f, io.BytesIO) else -f.length), io.SEEK_END
        )
    return next(f, None)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 4 * PIECE + 3),
    newlines=st.lists(
        st.one_of(
            st.integers(0, 4 * PIECE + 2),
            # at and around piece boundaries, where a line's search moves to the next piece
            st.builds(lambda k, d: max(0, k * PIECE + d), st.integers(0, 4), st.integers(-2, 2)),
        ),
        max_size=40,
    ),
    cuts=st.lists(st.integers(0, 4 * PIECE + 3), max_size=8),
    ops=_OPS,
)
def test_a_memory_body_reads_as_a_bytesio_of_its_bytes(
    size: int, newlines: list[int], cuts: list[int], ops: list[tuple[str, int]]
) -> None:
    data = bytearray(b"x" * size)
    for at in newlines:
        if at < size:
            data[at : at + 1] = b"\n"
    body = _received(bytes(data), cuts)
    reference = io.BytesIO(bytes(data))
    for op, arg in ops:
        assert _apply(body, op, arg) == _apply(reference, op, arg), (op, arg)
        assert body.tell() == reference.tell()
    assert body.read() == reference.read()
    assert list(body) == list(reference)


def test_whole_pieces_read_whole_are_the_received_bytes_themselves() -> None:
    pieces = [bytes([i]) * PIECE for i in range(3)] + [b"end"]
    body = MemoryBody(sum(map(len, pieces)))
    for piece in pieces:
        assert body.room == len(piece)
        body.add(piece)
    assert all(body.read(PIECE if len(p) == PIECE else -1) is p for p in pieces)


def test_a_view_is_copied_and_parts_are_joined_into_a_piece() -> None:
    buffer = bytearray(b"a" * 100)
    body = MemoryBody(PIECE + 10)
    body.add(memoryview(buffer))  # the start of the body, in the read that held the head
    buffer[:] = b"z" * 100  # the buffer is reused: what was kept must not change
    assert body.room == PIECE - 100
    body.add(b"b" * (PIECE - 100) + b"c" * 10)  # across the piece boundary
    assert body.room == 0
    assert body.read(PIECE) == b"a" * 100 + b"b" * (PIECE - 100)
    assert body.read() == b"c" * 10


def test_a_memory_body_refuses_bytes_past_its_end_and_reads_after_close() -> None:
    body = MemoryBody(3)
    with pytest.raises(ValueError, match="past the end"):
        body.add(b"abcd")
    body.add(b"abc")
    body.close()
    assert body.closed
    with pytest.raises(ValueError, match="closed file"):
        body.read()


def test_an_incomplete_memory_body_reads_only_its_complete_pieces() -> None:
    body = MemoryBody(PIECE + 5)
    body.add(b"p" * PIECE)
    body.add(b"ab")
    assert body.read() == b"p" * PIECE  # the last piece is not complete yet
    body.add(b"cde")
    assert body.read() == b"abcde"
