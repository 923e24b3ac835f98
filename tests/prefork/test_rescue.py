"""The keep-alive rescue's thin shell on real sockets: the watchdog's one look (``check``) gives
away exactly the waiting idle connections, the bytes stay unread for the next worker, and the old
worker lets go without ending the connection. The gate between the watchdog and the reactor
thread is checked with a real thread."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from catalyzer.ops.metrics import RequestMetrics
from catalyzer.prefork import fdpass
from catalyzer.prefork.handoff import FLOOR
from catalyzer.prefork.rescue import GatedScoreboard, Watchdog, adopt, rebalance
from catalyzer.process import scoreboard as scoreboard_module
from catalyzer.server.channel import HTTPChannel, HTTPFactory, ServerState
from catalyzer.testing import InMemoryServer

ENTERED = 100.0
REQUEST = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


class Reactor(MemoryReactorClock):
    """Records what the watchdog asks the reactor thread to do later."""

    def __init__(self) -> None:
        super().__init__()
        self.later: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        self.later.append((f, args))

    def run_later(self) -> None:
        for f, args in self.later:
            f(*args)
        self.later = []


def gated_scoreboard() -> GatedScoreboard:
    fd = os.memfd_create("test-scoreboard", 0)
    os.ftruncate(fd, scoreboard_module.SIZE)
    return GatedScoreboard(fd)


class World:
    def __init__(self) -> None:
        self.reactor = Reactor()
        self.state = ServerState(
            lambda e, s: [], InMemoryServer(lambda e, s: []).config, self.reactor
        )
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.clients: list[socket.socket] = []
        self.master, self.worker_end = fdpass.pair()
        self.scoreboard = gated_scoreboard()
        self.now = ENTERED + 1.0
        self.watchdog = Watchdog(
            self.reactor,
            self.state,
            self.scoreboard,
            self.worker_end,
            after=0.05,
            clock=lambda: self.now,
        )

    def connect(self) -> tuple[socket.socket, HTTPChannel]:
        client = socket.create_connection(self.listener.getsockname())
        self.clients.append(client)
        sock, addr = self.listener.accept()
        sock.setblocking(False)
        channel = HTTPChannel(self.state)
        transport = tcp.Server(sock, channel, addr, None, len(self.clients), self.reactor)
        channel.makeConnection(transport)
        return client, channel

    def close(self) -> None:
        for sock in (self.listener, self.master, self.worker_end, *self.clients):
            sock.close()
        for channel in list(self.state.channels):
            transport: Any = channel.transport
            transport.socket.close()
        self.scoreboard.close()


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


def test_only_the_waiting_idle_connection_moves_unread(world: World) -> None:
    waiting_client, waiting = world.connect()
    _, quiet = world.connect()
    partial_client, partial = world.connect()
    served_client, served = world.connect()
    waiting_client.sendall(REQUEST)
    partial.dataReceived(b"GET /x HT")  # already read: this connection must keep its bytes
    partial_client.sendall(b"TP/1.1\r\nHost: x\r\n\r\n")
    served.ended_at = ENTERED  # its response ended inside this app call: the reactor is on it
    served_client.sendall(REQUEST)
    world.scoreboard.enter(ENTERED, "GET /slow")

    assert world.watchdog.check() == 1

    fds, _ = fdpass.receive_fds(world.master)
    assert len(fds) == 1
    moved = socket.socket(fileno=fds[0])
    try:
        assert moved.recv(1000) == REQUEST  # nothing of it was read by the old worker
        transport: Any = waiting.transport
        assert transport not in world.reactor.getReaders()
        for kept in (quiet, partial, served):
            assert kept.transport in world.reactor.getReaders()
        # Until the reactor thread cleans up, the old worker can neither send nor close it.
        transport.loseConnection()
        transport.write(b"stray")
        assert transport not in world.reactor.getWriters()
        world.reactor.run_later()
        assert waiting not in world.state.channels and waiting.disconnected
        assert transport.socket.fileno() == -1
        # The connection lives on with whoever holds it now: no shutdown, no reset.
        moved.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        assert waiting_client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"
    finally:
        moved.close()
    assert {quiet, partial, served} <= world.state.channels


def test_nothing_moves_before_the_threshold_or_outside_the_app(world: World) -> None:
    client, _ = world.connect()
    client.sendall(REQUEST)
    world.scoreboard.enter(ENTERED, "GET /slow")
    world.now = ENTERED + 0.01
    assert world.watchdog.check() == 0
    world.now = ENTERED + 1.0
    world.scoreboard.leave()
    assert world.watchdog.check() == 0
    assert fdpass.receive_fds(world.master) == ([], False)


def test_a_worker_of_short_calls_gives_away_sooner(world: World) -> None:
    client, _ = world.connect()
    client.sendall(REQUEST)
    counted = RequestMetrics(world.scoreboard.counters())  # as the worker's server counts
    assert world.watchdog.sample() == 0.05  # nothing seen yet: handoff-after
    for _ in range(500):
        counted.observe(200, 0.0003, 5, app=True)
    counted.observe(200, 1.2, 5, app=True)  # a slow call now and then changes nothing
    assert world.watchdog.sample() == FLOOR
    world.scoreboard.enter(ENTERED, "GET /slow")
    world.now = ENTERED + FLOOR / 2
    assert world.watchdog.check() == 0
    world.now = ENTERED + FLOOR
    assert world.watchdog.check() == 1
    fds, _ = fdpass.receive_fds(world.master)
    for fd in fds:
        os.close(fd)


def test_a_worker_of_10_to_50_ms_calls_keeps_handoff_after(world: World) -> None:
    client, _ = world.connect()
    client.sendall(REQUEST)
    counted = RequestMetrics(world.scoreboard.counters())
    world.watchdog.sample()
    for i in range(500):
        counted.observe(200, 0.01 + (i % 41) / 1000, 5, app=True)
    assert world.watchdog.sample() == 0.05
    world.scoreboard.enter(ENTERED, "GET /report")
    world.now = ENTERED + 0.049
    assert world.watchdog.check() == 0


def test_a_full_master_socket_leaves_the_connection_in_place(world: World) -> None:
    client, channel = world.connect()
    client.sendall(REQUEST)
    world.master.close()  # sends now fail
    world.scoreboard.enter(ENTERED, "GET /slow")
    assert world.watchdog.check() == 0
    assert channel.transport in world.reactor.getReaders()
    assert world.reactor.later == []


def test_claim_fails_once_the_app_call_is_over() -> None:
    board = gated_scoreboard()
    try:
        board.enter(ENTERED, "GET /slow")
        assert board.claim(ENTERED)
        board.release()
        board.leave()
        assert not board.claim(ENTERED)
        assert not board.claimed
        board.enter(ENTERED + 5, "GET /other")  # another call: not the one that was due
        assert not board.claim(ENTERED)
    finally:
        board.close()


def test_leaving_the_app_waits_for_a_claim_to_be_released() -> None:
    board = gated_scoreboard()
    seen: list[bool] = []
    leaving = threading.Event()

    def reactor_thread() -> None:
        leaving.set()
        board.leave()
        seen.append(board.claimed)  # True only if leave() returned while the claim was held

    try:
        board.enter(ENTERED, "GET /slow")
        assert board.claim(ENTERED)
        thread = threading.Thread(target=reactor_thread)
        thread.start()
        assert leaving.wait(10)
        board.release()
        thread.join(10)
        assert seen == [False]
    finally:
        board.close()


def test_adopt_serves_the_waiting_request() -> None:
    reactor = MemoryReactor()
    adopted: list[tuple[int, int]] = []
    reactor.adoptStreamConnection = lambda fd, family, factory: adopted.append(  # type: ignore[method-assign]
        (family, os.fstat(fd).st_ino)
    )
    client, server = socket.socketpair()
    try:
        inode = os.fstat(server.fileno()).st_ino
        fd = os.dup(server.fileno())
        adopt(reactor, HTTPFactory(InMemoryServer(lambda e, s: []).state), fd)
        assert adopted == [(socket.AF_UNIX, inode)]
        with pytest.raises(OSError):
            os.fstat(fd)  # closed after adoption (the reactor made its own copy)
    finally:
        client.close()
        server.close()


def test_rebalance_gives_the_share_of_active_connections_most_recent_first(world: World) -> None:
    now = world.reactor.seconds()
    connections = [world.connect() for _ in range(6)]
    (_, old), (c1, recent), (c2, newest), (_, mid), (_, writing), (_, never) = connections
    for channel, ended in ((old, now - 5.0), (recent, now - 0.2), (newest, now - 0.1)):
        channel.ended_at = ended
    mid.ended_at = now - 0.3
    writing.ended_at = now - 0.05
    writing.transport.write(b"x" * 4_000_000)  # more than the socket takes: some stays queued
    # Active: recent, newest, mid and writing (a response ended within the last second); old and
    # never are not. Half of four is two: the two most recent that can move (writing cannot).
    assert rebalance(world.reactor, world.state, world.worker_end, 0.5, now) == 2
    fds, _ = fdpass.receive_fds(world.master)
    assert len(fds) == 2
    try:
        moved = {newest, recent}
        inodes = {os.fstat(fd).st_ino for fd in fds}
        assert inodes == {os.fstat(c.transport.fileno()).st_ino for c in moved}
        world.reactor.run_later()
        assert not moved & world.state.channels
        assert {old, mid, writing, never} <= world.state.channels
        # The connections live on for whoever holds them now: no shutdown, no reset was sent.
        for client in (c1, c2):
            with pytest.raises(BlockingIOError):
                client.recv(1, socket.MSG_DONTWAIT)
    finally:
        for fd in fds:
            os.close(fd)


def test_rebalance_never_gives_the_last_active_connection(world: World) -> None:
    now = world.reactor.seconds()
    _, only = world.connect()
    only.ended_at = now - 0.1
    assert rebalance(world.reactor, world.state, world.worker_end, 0.9, now) == 0
    assert fdpass.receive_fds(world.master) == ([], False)
