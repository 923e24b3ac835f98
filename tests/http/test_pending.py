"""PendingBytes: views of the given objects, advanced without copies."""

from __future__ import annotations

import pytest

from catalyzer.http.pending import PendingBytes


def joined(pending: PendingBytes) -> bytes:
    return b"".join(bytes(v) for v in pending.views(max_pieces=10_000))


def test_empty_pieces_are_dropped_and_bytes_counted() -> None:
    pending = PendingBytes([b"head", b"", b"body", b""])
    assert pending.left == 8
    assert [bytes(v) for v in pending.views()] == [b"head", b"body"]


def test_views_are_of_the_objects_given_not_copies() -> None:
    body = b"x" * 100_000
    pending = PendingBytes([b"head", body])
    pending.advance(4 + 10)
    first = pending.views()[0]
    assert first.obj is body
    assert first.nbytes == 100_000 - 10


@pytest.mark.parametrize("steps", [[1, 1, 1], [3, 5, 2], [10], [4, 6], [9, 1]])
def test_advance_in_any_steps_leaves_the_tail(steps: list[int]) -> None:
    pending = PendingBytes([b"abc", b"defg", b"hij"])
    done = 0
    for step in steps:
        pending.advance(step)
        done += step
        assert pending.left == 10 - done
        assert joined(pending) == b"abcdefghij"[done:]


def test_views_are_capped_to_max_pieces() -> None:
    pending = PendingBytes([bytes([i]) for i in range(10)])
    assert [bytes(v) for v in pending.views(max_pieces=3)] == [b"\x00", b"\x01", b"\x02"]
    pending.advance(2)
    assert [bytes(v) for v in pending.views(max_pieces=3)] == [b"\x02", b"\x03", b"\x04"]


def test_advancing_past_the_end_is_an_error() -> None:
    pending = PendingBytes([b"ab"])
    with pytest.raises(ValueError, match="3 bytes sent of 2"):
        pending.advance(3)


def test_clear_lets_go_of_everything() -> None:
    pending = PendingBytes([b"ab", b"cd"])
    pending.clear()
    assert pending.left == 0
    assert pending.views() == []


def test_extend_adds_behind_what_is_pending() -> None:
    pending = PendingBytes([b"abc"])
    pending.advance(1)
    pending.extend([b"", b"de", b"f"])
    assert pending.left == 5
    assert joined(pending) == b"bcdef"
