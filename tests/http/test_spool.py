"""Body files (catalyzer.http.spool)."""

from __future__ import annotations

import io

from catalyzer.http.spool import body_file, memory_body

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
