"""The ``--threads`` rescue on real sockets with a memory reactor: while every app thread is stuck
the worker stops accepting, stops reading its idle connections and gives away those with a
request waiting; once a thread is free it reads and accepts again. The pool's threads are not
started: the test writes what they would (``AppThreads.since``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from catalyzer.prefork import fdpass
from catalyzer.prefork.poolrescue import PoolRescue
from catalyzer.wsgi.threads import AppThreads
from tests.prefork import test_rescue as rescue_tests
from tests.prefork.test_rescue import ENTERED, REQUEST
from tests.server.test_channel import FakePort

WALL = 5000.0


class World(rescue_tests.World):
    """The watchdog's world (real sockets, a memory reactor), with a pool and its rescue."""

    def __init__(self) -> None:
        super().__init__()
        self.port = FakePort()
        self.state.ports = [self.port]
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

    def queue_behind_busy_threads(self) -> None:
        """What callInThread does once the request of a connection not shown here is read."""
        self.threads.callInThread(lambda: None)

    def moved(self) -> list[socket.socket]:
        fds, _ = fdpass.receive_fds(self.master)
        return [socket.socket(fileno=fd) for fd in fds]

    def close(self) -> None:
        self.rescue.stop()
        super().close()


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
