"""Latency without ``tc netem``: packets an iptables ``NFQUEUE`` rule hands to user space are
given back (NF_ACCEPT) ``delay`` +- ``jitter`` milliseconds later. For kernels built without
sch_netem (``CONFIG_NET_SCH_NETEM`` unset) that have netfilter's queue (NETFILTER_NETLINK_QUEUE).

    ip netns exec NS python -m tests.split.nfqdelay QUEUE DELAY_MS JITTER_MS MAX_SECONDS

Run inside the namespace whose rule queues the packets (``iptables -A INPUT -i DEV -j NFQUEUE
--queue-num QUEUE``). It binds the queue, prints ``ready`` once bound, and exits after
MAX_SECONDS (a bound on its life) or on SIGTERM, printing ``delayed N`` (the packets it held). A
packet it has not given back when it exits is dropped by the kernel, as a lossy link would; with
``--queue-bypass`` on the rule, packets pass undelayed while no one is bound.

Speaks nfnetlink_queue over a raw netlink socket (struct layouts from
linux/netfilter/nfnetlink_queue.h): no library to install; only the packet's id is copied to
user space, never its payload.
"""

from __future__ import annotations

import errno
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    # nlmsghdr, then nfgenmsg (family, version, resource id = the queue, big-endian).
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def _config(queue: int, attrs: bytes, seq: int) -> bytes:
    return _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_ACK, seq)


def verdict(queue: int, packet_id: int) -> bytes:
    return _message(
        NFQNL_MSG_VERDICT,
        queue,
        _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)),
        0,
        0,
    )


def packet_ids(data: bytes) -> list[int]:
    """The ids of the queued packets in one read from the socket (errors raise)."""
    ids = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + 16)
            if code != 0:
                raise OSError(-code, f"nfnetlink_queue: {errno.errorcode.get(-code, code)}")
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20  # past nlmsghdr and nfgenmsg
            while at + 4 <= offset + length:
                alen, akind = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                if akind & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + 4)[0])
                at += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def run(queue: int, delay: float, jitter: float, max_seconds: float) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    bind = struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0)
    params = struct.pack("!IB", 0, NFQNL_COPY_META) + b"\0" * 3
    for seq, attrs in enumerate((_attr(NFQA_CFG_CMD, bind), _attr(NFQA_CFG_PARAMS, params)), 1):
        sock.send(_config(queue, attrs, seq))
        packet_ids(sock.recv(65536))  # the ack: raises if the kernel refused
    print("ready", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    due: list[tuple[float, int]] = []
    held = 0
    end = time.monotonic() + max_seconds
    while not stop and time.monotonic() < end:
        now = time.monotonic()
        while due and due[0][0] <= now:
            sock.send(verdict(queue, heapq.heappop(due)[1]))
        wait = min(end - now, (due[0][0] - now) if due else 0.5)
        readable, _, _ = select.select([sock], [], [], max(0.0, wait))
        if readable:
            try:
                data = sock.recv(1 << 16)
            except OSError:  # ENOBUFS: the kernel dropped what did not fit, as a link would
                continue
            arrived = time.monotonic()
            for packet_id in packet_ids(data):
                hold = max(0.0, delay + random.uniform(-jitter, jitter))
                heapq.heappush(due, (arrived + hold, packet_id))
                held += 1
    print(f"delayed {held}", flush=True)


def main() -> None:
    queue, delay_ms, jitter_ms, max_seconds = sys.argv[1:5]
    run(int(queue), float(delay_ms) / 1000, float(jitter_ms) / 1000, float(max_seconds))


if __name__ == "__main__":
    main()
