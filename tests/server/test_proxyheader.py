"""PROXY protocol listeners, driven in memory: addresses, rejections and their log lines."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from catalyzer.server.channel import HTTPFactory, ServerState
from catalyzer.server.proxyheader import (
    ProxiedEndpoint,
    ProxyHeaderFactory,
    RejectionLog,
    inner_endpoint,
    split_proxied,
)
from catalyzer.settings import Config
from tests.helpers import Recorder

REQUEST = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
V1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 5555 8080\r\n"


def v2(
    source: str = "198.51.100.9", port: int = 4242, command: int = 0x1, family: int = 0x11
) -> bytes:
    body = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 80)
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "catalyzer.proxy":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Listener:
    """A PROXY listener's factory over the HTTP engine, with connections on StringTransports."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.app = Recorder()
        config = Config.from_values({"app": "in.memory:app", **settings})
        self.state = ServerState(self.app, config, self.clock)
        self.rejections = RejectionLog(self.clock)
        self.factory = ProxyHeaderFactory(HTTPFactory(self.state), self.rejections)

    def connect(self) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", 39999)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=peer
        )
        protocol = self.factory.buildProtocol(peer)
        protocol.makeConnection(transport)
        return protocol, transport


def feed(protocol: Any, data: bytes, how: str) -> None:
    if how == "whole":
        protocol.dataReceived(data)
    elif how == "bytewise":
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
    else:  # the header, then the request, in two reads
        protocol.dataReceived(data[: -len(REQUEST)])
        protocol.dataReceived(data[-len(REQUEST) :])


@pytest.mark.parametrize("how", ["whole", "bytewise", "split"])
@pytest.mark.parametrize(
    ("header", "addr", "port"),
    [
        (V1, "203.0.113.5", "5555"),
        (v2(), "198.51.100.9", "4242"),
        (b"PROXY UNKNOWN\r\n", "127.0.0.1", "39999"),  # the real peer
        (v2()[:12] + b"\x20\x00\x00\x00", "127.0.0.1", "39999"),  # LOCAL: a health check
    ],
)
def test_addresses_come_from_the_header(header: bytes, addr: str, port: str, how: str) -> None:
    listener = Listener()
    protocol, transport = listener.connect()
    feed(protocol, header + REQUEST, how)
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    call = listener.app.calls[0]
    assert (call["REMOTE_ADDR"], call["REMOTE_PORT"]) == (addr, port)
    assert listener.rejections.rejected == 0


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (REQUEST, "not a PROXY header"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not a PROXY header"),  # TLS hello
        (b"PROXY TCP4 not-an-address\r\n" + REQUEST, "malformed PROXY header"),
        (b"PROXY " + b"x" * 200, "malformed PROXY header"),  # no end of line in 107 bytes
        (v2()[:12] + b"\x31" + v2()[13:], "malformed PROXY header"),  # v3
    ],
)
def test_no_valid_header_closes_with_one_line(data: bytes, why: str, logged: list[str]) -> None:
    listener = Listener()
    protocol, transport = listener.connect()
    protocol.dataReceived(data)
    assert transport.disconnecting
    assert transport.value() == b""  # nothing said to whoever it is
    assert listener.app.calls == []
    assert logged == [f"closed connection from 127.0.0.1 without a valid PROXY header ({why})"]


def test_rejections_logged_at_most_once_a_second(logged: list[str]) -> None:
    listener = Listener()
    for _ in range(5):
        listener.connect()[0].dataReceived(REQUEST)
    assert len(logged) == 1
    listener.clock.advance(0.9)
    listener.connect()[0].dataReceived(REQUEST)
    assert len(logged) == 1
    listener.clock.advance(0.1)
    listener.connect()[0].dataReceived(REQUEST)
    assert logged[1].endswith("(not a PROXY header); 5 more since the last report")
    assert listener.rejections.rejected == 7


def test_silent_connection_closed_by_header_timeout() -> None:
    listener = Listener(**{"header-timeout": 5})
    _, transport = listener.connect()
    listener.clock.advance(4.9)
    assert not transport.disconnecting
    listener.clock.advance(0.1)
    assert transport.disconnecting


def test_half_close_reaches_the_channel() -> None:
    listener = Listener()
    protocol, transport = listener.connect()
    protocol.dataReceived(V1 + REQUEST.replace(b"\r\n\r\n", b"\r\n"))  # headers not finished
    protocol.readConnectionLost()
    assert transport.disconnecting  # the channel saw the end of input and closed


def test_split_proxied() -> None:
    assert split_proxied("haproxy:tcp:8080") == (True, "tcp:8080")
    assert split_proxied("HAProxy:unix:/run/a.sock") == (True, "unix:/run/a.sock")
    assert split_proxied("tcp:8080") == (False, "tcp:8080")


def test_inner_endpoint() -> None:
    inner = object()
    assert inner_endpoint(ProxiedEndpoint(inner, Clock())) is inner  # type: ignore[arg-type]
    assert inner_endpoint(inner) is inner
