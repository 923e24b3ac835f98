"""The master's listening sockets: one socket every worker shares, or with reuse_port one
SO_REUSEPORT socket per worker slot for TCP. Real sockets on 127.0.0.1 (port 0) and in a temporary directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor

from catalyzer.prefork.listeners import Listener, listen


def tcp(reactor: object, description: str = "tcp:0:interface=127.0.0.1") -> object:
    return endpoints.serverFromString(reactor, description)


def test_tcp_gets_one_reuseport_socket_per_slot_on_one_address() -> None:
    listener = listen("tcp", tcp(MemoryReactor()), 3, reuse_port=True)
    try:
        assert listener.family == "INET"
        assert sorted(listener.slots) == [0, 1, 2]
        names = {sock.getsockname() for sock in listener.slots.values()}
        assert names == {("127.0.0.1", listener.address.port)}
        assert listener.address.port != 0
        for sock in listener.slots.values():
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        fds = {listener.fd_for(slot) for slot in range(3)}
        assert len(fds) == 3
    finally:
        listener.close()
    assert listener.slots == {}


def test_a_new_slot_gets_a_new_socket_and_a_released_one_is_closed() -> None:
    listener = listen("tcp", tcp(MemoryReactor()), 1, reuse_port=True)
    try:
        fd = listener.fd_for(1)  # TTIN: a slot beyond those bound at start
        assert fd == listener.slots[1].fileno()
        sock = listener.slots[1]
        listener.release(1)
        assert sock.fileno() == -1 and 1 not in listener.slots
        listener.release(0)  # slot 0 holds the address: never released
        assert 0 in listener.slots
    finally:
        listener.close()


def test_port_in_use_raises_the_bind_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            listen("tcp", tcp(MemoryReactor(), f"tcp:{port}:interface=127.0.0.1"), 2, True)
    finally:
        taken.close()


def test_unix_is_one_shared_socket(tmp_path: Path) -> None:
    from twisted.internet import reactor

    path = tmp_path / "s"
    listener = listen("unix", endpoints.serverFromString(reactor, f"unix:{path}"), 2)
    try:
        assert isinstance(listener, Listener)
        assert listener.family == "UNIX"
        assert listener.slots == {}
        assert listener.fd_for(0) == listener.fd_for(1) == listener.shared.fileno()
        assert path.exists()
    finally:
        listener.close()


def test_proxy_protocol_listener_binds_its_inner_endpoint() -> None:
    from twisted.internet import reactor

    from catalyzer.server.proxyheader import ProxiedEndpoint

    proxied = ProxiedEndpoint(tcp(reactor), reactor)  # type: ignore[arg-type]
    listener = listen("haproxy:tcp:0:interface=127.0.0.1", proxied, 2)
    try:
        # The same shared socket as plain TCP: each worker wraps what it adopts.
        assert listener.family == "INET" and listener.slots == {}
        assert listener.fd_for(0) == listener.fd_for(1) == listener.shared.fileno()
    finally:
        listener.close()
    memory = MemoryReactor()
    proxied = ProxiedEndpoint(tcp(memory), memory)  # type: ignore[arg-type]
    listener = listen("haproxy:tcp:0:interface=127.0.0.1", proxied, 2, reuse_port=True)
    try:
        assert listener.family == "INET" and sorted(listener.slots) == [0, 1]
    finally:
        listener.close()


def test_tcp_is_one_shared_socket_by_default() -> None:
    from twisted.internet import reactor

    listener = listen("tcp", tcp(reactor), 3)
    try:
        assert listener.family == "INET"
        assert listener.slots == {}
        assert listener.address.port != 0
        assert listener.fd_for(0) == listener.fd_for(2) == listener.shared.fileno()
        shared = socket.socket(fileno=os.dup(listener.fd_for(1)))
        try:
            assert shared.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
            assert shared.getsockname() == ("127.0.0.1", listener.address.port)
        finally:
            shared.close()
    finally:
        listener.close()
