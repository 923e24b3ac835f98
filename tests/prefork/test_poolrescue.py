"""The ``--threads`` rescue on real sockets with a memory reactor: while every app thread is stuck
the worker stops accepting, stops reading its idle connections and gives away those with a
request waiting; once a thread is free it reads and accepts again. The pool's threads are not
started: the test writes what they would (``AppThreads.since``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock

from catalyzer.prefork import fdpass
from catalyzer.prefork.poolrescue import PoolRescue
from catalyzer.process import scoreboard as scoreboard_module
from catalyzer.process.scoreboard import Scoreboard
from catalyzer.server.channel import HTTPChannel, ServerState
from catalyzer.testing import InMemoryServer
from catalyzer.wsgi.threads import AppThreads

ENTERED = 100.0
WALL = 5000.0
REQUEST = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


class Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.later: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callFromThread(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        self.later.append((f, args))


class Port:
    """A listening port as ServerState toggles it."""

    def __init__(self) -> None:
        self.reading = True

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


class World:
    def __init__(self) -> None:
        self.reactor = Reactor()
        self.state = ServerState(
            lambda e, s: [], InMemoryServer(lambda e, s: []).config, self.reactor
        )
        self.port = Port()
        self.state.ports = [self.port]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.clients: list[socket.socket] = []
        self.master, self.worker_end = fdpass.pair()
        fd = os.memfd_create("test-scoreboard", 0)
        os.ftruncate(fd, scoreboard_module.SIZE)
        self.scoreboard = Scoreboard(fd)
        self.now = ENTERED
        self.threads = AppThreads(2, self.reactor.callFromThread, clock=lambda: self.now)
        self.rescue = PoolRescue(
            self.reactor,
            self.state,
            self.threads,
            self.scoreboard,
            self.worker_end,
            after=0.05,
            wall=lambda: WALL,
        )
        self.rescue.start()

    def connect(self) -> tuple[socket.socket, HTTPChannel]:
        client = socket.create_connection(self.listener.getsockname())
        self.clients.append(client)
        sock, addr = self.listener.accept()
        sock.setblocking(False)
        channel = HTTPChannel(self.state)
        transport = tcp.Server(sock, channel, addr, None, len(self.clients), self.reactor)
        channel.makeConnection(transport)
        return client, channel

    def queue_behind_busy_threads(self) -> None:
        """What callInThread does once the request of a connection not shown here is read."""
        self.threads.callInThread(lambda: None)

    def moved(self) -> list[socket.socket]:
        fds, _ = fdpass.receive_fds(self.master)
        return [socket.socket(fileno=fd) for fd in fds]

    def close(self) -> None:
        self.rescue.stop()
        for sock in (self.listener, self.master, self.worker_end, *self.clients):
            sock.close()
        for channel in list(self.state.channels):
            transport: Any = channel.transport
            transport.socket.close()
        self.scoreboard.close()


def looks(world: World) -> list[Any]:
    return [c for c in world.reactor.getDelayedCalls() if c.func == world.rescue.check]


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        w.close()


def test_a_stuck_pool_holds_its_idle_connections_and_gives_the_waiting_one_away(
    world: World,
) -> None:
    waiting_client, waiting = world.connect()
    _, quiet = world.connect()
    _, partial = world.connect()
    waiting_client.sendall(REQUEST)
    partial.dataReceived(b"GET /x HT")  # bytes already read stay here
    world.threads.since[:] = [ENTERED - 1.0, ENTERED - 0.5]  # both threads in long calls

    world.queue_behind_busy_threads()

    [moved] = world.moved()
    try:
        assert moved.recv(1000) == REQUEST  # unread by this worker
    finally:
        moved.close()
    readers = world.reactor.getReaders()
    assert waiting.transport not in readers
    assert quiet.transport not in readers  # held: its next request stays in the kernel
    assert partial.transport in readers
    assert not world.port.reading and not world.state.takes_connections
    assert world.scoreboard.stuck() == WALL
    assert world.rescue.moved == 1 and world.rescue.stuck


def test_a_request_arriving_on_a_held_connection_moves_at_the_next_look(world: World) -> None:
    quiet_client, quiet = world.connect()
    world.threads.since[:] = [ENTERED - 1.0, ENTERED - 0.5]
    world.queue_behind_busy_threads()
    assert world.moved() == [] and quiet.transport not in world.reactor.getReaders()

    quiet_client.sendall(REQUEST)
    world.now += 0.025
    world.reactor.advance(0.025)  # the look, every half delay while stuck

    [moved] = world.moved()
    moved.close()
    assert world.rescue.moved == 1


def test_reading_and_accepting_resume_once_a_thread_is_free(world: World) -> None:
    _, quiet = world.connect()
    world.threads.since[:] = [ENTERED - 1.0, ENTERED - 0.5]
    world.queue_behind_busy_threads()
    assert quiet.transport not in world.reactor.getReaders()

    world.threads.since[1] = 0.0
    world.reactor.advance(0.025)

    assert quiet.transport in world.reactor.getReaders()
    assert world.port.reading and world.state.takes_connections
    assert world.scoreboard.stuck() == 0.0 and not world.rescue.stuck
    assert not looks(world)  # no look while a thread is free


def test_busy_threads_not_long_in_their_calls_are_looked_at_again(world: World) -> None:
    client, channel = world.connect()
    client.sendall(REQUEST)
    world.threads.since[:] = [ENTERED - 1.0, ENTERED - 0.01]  # the latest call is young

    world.queue_behind_busy_threads()

    assert world.moved() == [] and channel.transport in world.reactor.getReaders()
    assert world.port.reading and len(looks(world)) == 1
    world.now += 0.025
    world.reactor.advance(0.025)
    assert world.moved() == []  # 35 ms: still under the delay
    world.now += 0.025
    world.reactor.advance(0.025)
    [moved] = world.moved()
    moved.close()
    assert not world.port.reading


def test_a_free_thread_means_no_look_at_all(world: World) -> None:
    client, channel = world.connect()
    client.sendall(REQUEST)
    world.threads.since[:] = [ENTERED - 1.0, 0.0]

    world.queue_behind_busy_threads()

    assert not looks(world)
    assert world.moved() == [] and channel.transport in world.reactor.getReaders()
