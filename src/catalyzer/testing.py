"""Test helpers: drive catalyzer in memory, with no sockets, no processes and a fake clock.

:class:`InMemoryServer` is the HTTP engine bound to nothing::

    from catalyzer.testing import InMemoryServer

    server = InMemoryServer(my_wsgi_app, header_timeout=5)
    conn = server.connect()
    conn.send(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert conn.output().startswith(b"HTTP/1.1 200 ")
    server.clock.advance(5)  # fire timers

:class:`FakeProcessReactor` is a reactor for whatever spawns children with
:func:`catalyzer.process.children.spawn_child` (the prefork master, a
:class:`~catalyzer.dispatch.PreforkDispatcher`): ``spawnProcess`` starts nothing and returns a
:class:`FakeProcess`, which records the signals sent to it, and the child's control channel is
a ``StringTransport``. The test plays each child: it writes what the child would send on its
control channel (``process.control.dataReceived(...)``), reads what it was sent
(``process.control.transport.value()``), makes it print (:meth:`FakeProcess.output`) and ends
it (:meth:`FakeProcess.exit`); time is a ``Clock`` (``reactor.advance``)::

    from catalyzer.testing import FakeProcessReactor

    reactor = FakeProcessReactor()
    dispatcher = PreforkDispatcher(reactor=reactor, max_forks=1, pre_fork=1)
    dispatcher.startService()
    (child,) = reactor.processes
    child.exit(signum=signal.SIGKILL)  # it crashed: a replacement is spawned
    assert len(reactor.processes) == 2
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from catalyzer.server.channel import HTTPChannel, ServerState
from catalyzer.settings import BY_NAME, Config
from catalyzer.wsgi.types import WSGIApp

__all__ = ["FakeProcess", "FakeProcessReactor", "InMemoryConnection", "InMemoryServer"]


class InMemoryConnection:
    """One client connection to an :class:`InMemoryServer`."""

    def __init__(self, server: ServerState, port: int) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
        )
        self.channel = HTTPChannel(server)
        Protocol.makeConnection(self.channel, self.transport)
        self._read = 0

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.transport.disconnecting or self.channel.disconnected:
                return
            self.channel.dataReceived(data[i : i + 1])

    def output(self) -> bytes:
        """Everything written to the client so far."""
        value: bytes = self.transport.value()
        return value

    def new_output(self) -> bytes:
        """What was written since the last call."""
        value: bytes = self.transport.value()
        new, self._read = value[self._read :], len(value)
        return new

    @property
    def closed(self) -> bool:
        """The server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting) or self.channel.disconnected

    def lose(self, reason: BaseException | None = None) -> None:
        """The client goes away."""
        if not self.channel.disconnected:
            self.channel.connectionLost(Failure(reason or ConnectionError("client gone")))

    def finish_close(self) -> None:
        """Complete a close the server asked for, as the reactor would once output is flushed."""
        if self.transport.disconnecting:
            self.lose()


class InMemoryServer:
    """An HTTP engine bound to nothing: connections are :class:`InMemoryConnection` objects.

    Settings are keyword arguments with underscores (``max_body=1024``).
    """

    def __init__(self, app: WSGIApp, clock: Clock | None = None, **settings: Any) -> None:
        self.clock = clock or Clock()
        values: dict[str, object] = {"app": "in.memory:app"}
        for key, value in settings.items():
            name = key.replace("_", "-")
            if name not in BY_NAME:
                raise TypeError(f"unknown setting {key!r}")
            values[name] = value
        self.config = Config.from_values(values)
        self.state = ServerState(app, self.config, self.clock)
        self._next_port = 40000

    def connect(self) -> InMemoryConnection:
        self._next_port += 1
        return InMemoryConnection(self.state, self._next_port)

    def request(self, raw: bytes) -> bytes:
        """Send ``raw`` on a fresh connection and return everything the server wrote."""
        conn = self.connect()
        conn.send(raw)
        return conn.output()


class FakeProcess:
    """What :meth:`FakeProcessReactor.spawnProcess` returns: the process transport of a child
    that does not exist.

    ``proto`` is the ``ProcessProtocol`` it was spawned with, ``args``, ``env``, ``path`` and
    ``fds`` what it was spawned with, ``signals`` every signal sent to it, and ``control`` the
    protocol at the parent's end of its control channel (the stream connection the parent adopts
    right after spawning), if any. ``pid`` becomes None once the process has exited, as Twisted's
    does.
    """

    def __init__(
        self,
        reactor: FakeProcessReactor,
        proto: Any,
        args: list[str],
        env: dict[str, str],
        path: str | None,
        fds: dict[int, Any],
    ) -> None:
        self.reactor = reactor
        self.proto = proto
        self.args = args
        self.env = env
        self.path = path
        self.fds = fds
        self.pid: int | None = next(reactor.pids)
        self.signals: list[int] = []
        self.control: Any = None

    def signalProcess(self, signum: int | str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signum)  # type: ignore[arg-type]

    def output(self, data: bytes, fd: int = 2) -> None:
        """The child writes ``data`` to ``fd`` (its stderr by default)."""
        self.proto.childDataReceived(fd, data)

    def exit(self, status: int | None = 0, signum: int | None = None) -> None:
        """The child ends, with exit ``status`` or killed by ``signum``: its control channel
        closes, then the parent hears of its end, in Twisted's order."""
        # Twisted's process errors are untyped.
        done: Any = ProcessDone
        terminated: Any = ProcessTerminated
        if self.control is not None and self.control.transport is not None:
            self.control.connectionLost(Failure(done(0)))
        self.pid = None
        if signum is not None:
            reason = Failure(terminated(exitCode=None, signal=signum))
        elif status == 0:
            reason = Failure(done(0))
        else:
            reason = Failure(terminated(exitCode=status))
        self.proto.processEnded(reason)

    # The rest of IProcessTransport, which catalyzer does not use, as no-ops.

    def loseConnection(self) -> None:
        pass

    def closeStdin(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass


class FakeProcessReactor(MemoryReactorClock):
    """A ``MemoryReactorClock`` whose ``spawnProcess`` starts nothing (see the module's
    docstring). ``processes`` lists every :class:`FakeProcess` spawned, oldest first; pids are
    counted from ``first_pid``."""

    def __init__(self, first_pid: int = 40000) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.pids = itertools.count(first_pid)
        self.processes: list[FakeProcess] = []

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, Any] | None = None,
    ) -> FakeProcess:
        process = FakeProcess(
            self, processProtocol, list(args), dict(env or {}), path, dict(childFDs or {})
        )
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process

    def adoptStreamConnection(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> None:
        """The control channel of the process spawned last, connected to a StringTransport."""
        super().adoptStreamConnection(  # type: ignore[no-untyped-call]
            fileDescriptor, addressFamily, factory
        )
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        if self.processes:
            self.processes[-1].control = proto

    def running_processes(self) -> list[FakeProcess]:
        """The processes that have not exited."""
        return [p for p in self.processes if p.pid is not None]
