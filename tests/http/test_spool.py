"""Body files (catalyzer.http.spool.body_file)."""

from __future__ import annotations

import io

from catalyzer.http.spool import body_file

MIB = 1024 * 1024


def _fill(body: io.IOBase | object, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        body.write(data[i : i + piece])  # type: ignore[attr-defined]


def test_an_exact_body_is_sized_up_front_and_reads_back_as_written() -> None:
    data = bytes(range(256)) * (MIB // 256)
    body = body_file(len(data), MIB, exact=True)
    assert isinstance(body, io.BytesIO)
    assert len(body.getbuffer()) == len(data) and body.tell() == 0  # one buffer, at 0
    _fill(body, data, 65536)
    body.seek(0)
    assert body.read() == data


def test_a_body_not_said_exact_grows_with_its_writes() -> None:
    body = body_file(MIB, MIB)
    assert isinstance(body, io.BytesIO)
    assert len(body.getbuffer()) == 0
    body.write(b"abc")
    body.seek(0)
    assert body.read() == b"abc"  # a short body stays short


def test_small_and_unknown_and_large_bodies() -> None:
    small = body_file(100, MIB, exact=True)
    assert isinstance(small, io.BytesIO) and len(small.getbuffer()) == 0  # one write fills it
    unknown = body_file(None, MIB, exact=True)
    large = body_file(2 * MIB, MIB, exact=True)
    try:
        assert not isinstance(unknown, io.BytesIO) and not isinstance(large, io.BytesIO)
        _fill(large, b"y" * (2 * MIB), MIB)
        large.seek(0)
        assert large.read() == b"y" * (2 * MIB)
    finally:
        unknown.close()
        large.close()
