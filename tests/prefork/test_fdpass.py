"""Passing a connection's descriptor over a real SOCK_SEQPACKET socketpair."""

from __future__ import annotations

import os
import socket

from twisted.internet import error
from twisted.internet.testing import MemoryReactor

from catalyzer.prefork import fdpass


def test_a_connection_passed_keeps_its_unread_bytes_and_its_peer() -> None:
    master, worker = fdpass.pair()
    client, server = socket.socketpair()
    try:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert fdpass.send_fd(worker, server.fileno())
        server.close()  # the sender's copy goes: the connection lives on in the message
        fds, closed = fdpass.receive_fds(master)
        assert not closed and len(fds) == 1
        received = socket.socket(fileno=fds[0])
        try:
            assert received.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
            received.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            assert client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"
        finally:
            received.close()
        assert client.recv(100) == b""  # the last holder closed it
    finally:
        for sock in (master, worker, client, server):
            sock.close()


def test_nothing_waiting_and_a_closed_peer() -> None:
    master, worker = fdpass.pair()
    assert fdpass.receive_fds(master) == ([], False)
    worker.close()
    assert fdpass.receive_fds(master) == ([], True)
    master.close()


def test_send_to_a_closed_peer_fails_and_the_caller_keeps_the_descriptor() -> None:
    master, worker = fdpass.pair()
    master.close()
    r, w = os.pipe()
    try:
        assert not fdpass.send_fd(worker, r)
        os.fstat(r)  # still ours and open
    finally:
        os.close(r)
        os.close(w)
        worker.close()


def test_reader_hands_each_descriptor_then_reports_the_peer_gone() -> None:
    master, worker = fdpass.pair()
    reactor = MemoryReactor()
    got: list[int] = []
    ended: list[bool] = []
    reader = fdpass.FdReader(reactor, master, got.append, lambda: ended.append(True))
    reader.start()
    assert reader in reactor.getReaders()
    r, w = os.pipe()
    try:
        assert fdpass.send_fd(worker, r) and fdpass.send_fd(worker, w)
        assert reader.doRead() is None
        assert len(got) == 2
        os.write(got[1], b"x")
        assert os.read(got[0], 1) == b"x"  # the pipe's ends, travelled
        worker.close()
        why = reader.doRead()
        assert isinstance(why, error.ConnectionDone)
        reader.connectionLost(why)
        assert ended == [True] and master.fileno() == -1
    finally:
        for fd in (r, w, *got):
            os.close(fd)
