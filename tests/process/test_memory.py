"""The resident set size: the statm parser fed text, the reader on this very process."""

from __future__ import annotations

import os

import pytest

from catalyzer.process.memory import MIB, ResidentMemory, resident_bytes


def test_resident_is_the_second_field_in_pages() -> None:
    assert resident_bytes("61234 5120 1024 300 0 4000 0\n", 4096) == 5120 * 4096


@pytest.mark.parametrize("text", ["", "61234", "a b c", "1 -2 3"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        resident_bytes(text, 4096)


def test_reader_sees_this_process_grow() -> None:
    memory = ResidentMemory()
    try:
        before = memory.read()
        assert before > MIB  # an interpreter is more than a MiB
        held = b"\x01" * (32 * MIB)
        after = memory.read()  # the same open file, read again
        assert after - before >= 30 * MIB
        del held
    finally:
        memory.close()


def test_reader_agrees_with_proc() -> None:
    memory = ResidentMemory()
    try:
        with open("/proc/self/statm") as f:
            expected = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert abs(memory.read() - expected) < 4 * MIB
    finally:
        memory.close()
