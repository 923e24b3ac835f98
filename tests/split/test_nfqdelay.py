"""tests/split/nfqdelay.py's netlink messages, without a kernel: the verdict it sends and the
packet ids it reads (layouts of linux/netfilter/nfnetlink_queue.h)."""

from __future__ import annotations

import struct

import pytest

from tests.split import nfqdelay


def _packet(packet_id: int, seq: int = 0) -> bytes:
    """A NFQNL_MSG_PACKET as the kernel sends it with COPY_META: the packet header attribute,
    then another (a mark) that the reader must step over."""
    hdr = nfqdelay._attr(nfqdelay.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 1))
    mark = nfqdelay._attr(3, struct.pack("!I", 7))
    body = struct.pack("=BBH", 2, 0, 0) + mark + hdr
    kind = (nfqdelay.NFNL_SUBSYS_QUEUE << 8) | nfqdelay.NFQNL_MSG_PACKET
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_packet_ids_of_several_messages_in_one_read() -> None:
    assert nfqdelay.packet_ids(_packet(5) + _packet(6, 1) + _packet(0xFFFFFFFF, 2)) == [
        5,
        6,
        0xFFFFFFFF,
    ]


def test_an_ack_is_no_packet_and_an_error_raises() -> None:
    ack = struct.pack("=IHHII", 36, nfqdelay.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 0)
    assert nfqdelay.packet_ids(ack + b"\0" * 16) == []
    refused = struct.pack("=IHHII", 36, nfqdelay.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    with pytest.raises(OSError, match="EPERM"):
        nfqdelay.packet_ids(refused + b"\0" * 16)


def test_verdict_accepts_the_packet_on_its_queue() -> None:
    msg = nfqdelay.verdict(9, 1234)
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) == 16 + 4 + 12
    assert kind == (nfqdelay.NFNL_SUBSYS_QUEUE << 8) | nfqdelay.NFQNL_MSG_VERDICT
    assert flags == nfqdelay.NLM_F_REQUEST
    assert struct.unpack_from("!H", msg, 18) == (9,)  # the queue, big-endian
    alen, akind = struct.unpack_from("=HH", msg, 20)
    assert (alen, akind) == (12, nfqdelay.NFQA_VERDICT_HDR)
    assert struct.unpack_from("!II", msg, 24) == (nfqdelay.NF_ACCEPT, 1234)
