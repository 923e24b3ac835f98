"""Each private Twisted attribute catalyzer reads still exists and means what we think."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Server

from catalyzer.server import twistedprivate


def _memory() -> Any:
    """A reactor for transports made here: registering them with the global reactor and
    closing their sockets would leave stale descriptors in its epoll set for later tests."""
    from twisted.internet.testing import MemoryReactor

    return MemoryReactor()


def test_tcp_bind_reads_a_parsed_description() -> None:
    endpoint = endpoints.serverFromString(reactor, "tcp:8123:interface=127.0.0.2:backlog=77")
    assert twistedprivate.tcp_bind(endpoint) == ("127.0.0.2", 8123, 77)


def test_tcp6_bind_reads_a_parsed_description() -> None:
    endpoint = endpoints.serverFromString(reactor, r"tcp6:8124:interface=\:\:1")
    assert twistedprivate.tcp_bind(endpoint)[:2] == ("::1", 8124)


def test_ssl_context_factory_is_the_one_given() -> None:
    sentinel = object()
    endpoint = endpoints.SSL4ServerEndpoint(reactor, 0, sentinel)  # type: ignore[arg-type]
    assert twistedprivate.ssl_context_factory(endpoint) is sentinel


def test_write_buffer_empty_follows_queued_writes() -> None:
    left, right = socket.socketpair()
    try:
        left.setblocking(False)
        transport = Server(left, Protocol(), ("127.0.0.1", 1), None, 1, _memory())
        assert twistedprivate.write_buffer_empty(transport)
        transport.write(b"queued until the reactor turns")
        assert not twistedprivate.write_buffer_empty(transport)
        transport.stopWriting()
    finally:
        left.close()
        right.close()


def test_proxy_header_parsed_once_the_header_is_in() -> None:
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import StringTransport

    wrapper = twistedprivate.HAProxyWrappingFactory(Factory.forProtocol(Protocol)).buildProtocol(
        None
    )
    wrapper.makeConnection(StringTransport())
    wrapper.dataReceived(b"PROXY TCP4 203.0.113.5 127.0.0.1 5555 ")
    assert not twistedprivate.proxy_header_parsed(wrapper)
    wrapper.dataReceived(b"8080\r\n")
    assert twistedprivate.proxy_header_parsed(wrapper)
    assert wrapper.getPeer().host == "203.0.113.5"  # type: ignore[attr-defined]


class _Kept(Protocol):
    pass


def test_accept_one_per_wakeup_takes_one_connection_per_do_read() -> None:
    from twisted.internet.protocol import Factory
    from twisted.internet.tcp import Port
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    factory = Factory.forProtocol(_Kept)
    port = Port(0, factory, 50, "127.0.0.1", memory)
    port.startListening()
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)]
    accepted: list[Any] = []
    try:
        twistedprivate.accept_one_per_wakeup(port)
        original = factory.buildProtocol
        factory.buildProtocol = lambda addr: accepted.append(addr) or original(addr)  # type: ignore[method-assign, func-returns-value]
        for expected in (1, 2, 3):
            port.doRead()  # three connections wait: Twisted alone would take them all at once
            assert len(accepted) == expected
    finally:
        for client in clients:
            client.close()
        port.connectionLost(None)


class _FakeSocket:
    """recv_into and recv from a script: bytes to give, or an error to raise."""

    def __init__(self, script: list[bytes | OSError]) -> None:
        self.script = script
        self.sizes: list[int] = []

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        nbytes = nbytes or len(buffer)
        self.sizes.append(nbytes)
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        data = step[:nbytes]
        buffer[: len(data)] = data
        return len(data)

    def recv(self, nbytes: int) -> bytes:
        self.sizes.append(nbytes)
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        return step[:nbytes]


def test_read_into_target_reads_into_each_view_given_and_keeps_doreads_meaning() -> None:
    import errno
    from types import SimpleNamespace

    from twisted.internet import main

    sock = _FakeSocket([b"first", b"second read", OSError(errno.EWOULDBLOCK, "again"), b""])
    transport = SimpleNamespace(socket=sock)
    memory = bytearray(b"." * 16)
    targets = iter([memoryview(memory)[:8], memoryview(memory)[8:12]] + [memoryview(memory)] * 2)
    counts: list[int] = []
    twistedprivate.read_into_target(transport, lambda: next(targets), counts.append, print)
    assert transport.doRead() is None
    assert transport.doRead() is None
    assert counts == [5, 4]  # each read bounded by its view's length
    assert memory == bytearray(b"first...seco....")
    assert transport.doRead() is None  # EWOULDBLOCK: nothing happened
    assert transport.doRead() is main.CONNECTION_DONE
    sock.script = [OSError(errno.ECONNRESET, "reset")]
    targets = iter([memoryview(memory)])
    assert transport.doRead() is main.CONNECTION_LOST
    assert counts == [5, 4]


def test_read_into_target_reads_body_pieces_of_the_size_asked_several_a_turn() -> None:
    import errno
    from types import SimpleNamespace

    from twisted.internet import main

    rooms = [4, 4, 2]  # what the body still asks for, piece by piece

    def target() -> memoryview | int:
        return rooms[0] if rooms else memoryview(bytearray(64))

    pieces: list[bytes] = []

    def piece(data: bytes) -> None:
        pieces.append(data)
        rooms[0] -= len(data)
        if not rooms[0]:
            rooms.pop(0)

    sock = _FakeSocket([b"abcd", b"efgh", b"i", b"j", b"next request"])
    transport = SimpleNamespace(socket=sock)
    counts: list[int] = []
    twistedprivate.read_into_target(transport, target, counts.append, piece)
    assert transport.doRead() is None  # two whole pieces, then a short read ends the turn
    assert pieces == [b"abcd", b"efgh", b"i"] and sock.sizes == [4, 4, 2]
    assert transport.doRead() is None  # the body completes: the turn ends there
    assert pieces[-1] == b"j" and sock.sizes[-1] == 1 and counts == []
    assert transport.doRead() is None  # no body arriving: into the target
    assert counts == [12]
    rooms[:] = [8]
    sock.script = [OSError(errno.EWOULDBLOCK, "again"), b"", OSError(errno.ECONNRESET, "reset")]
    assert transport.doRead() is None
    assert transport.doRead() is main.CONNECTION_DONE
    assert transport.doRead() is main.CONNECTION_LOST


def test_read_into_target_reads_at_most_32_body_pieces_a_turn() -> None:
    from types import SimpleNamespace

    sock = _FakeSocket([b"x"] * 40 + [b""])  # the last read short: the socket is empty
    transport = SimpleNamespace(socket=sock)
    pieces: list[bytes] = []
    twistedprivate.read_into_target(transport, lambda: 1, print, pieces.append)
    assert transport.doRead() is None
    assert len(pieces) == 32  # the other connections get their turn
    transport.doRead()
    assert len(pieces) == 40 and not sock.script


def test_read_into_target_replaces_a_real_transports_doread() -> None:
    left, right = socket.socketpair()
    try:
        left.setblocking(False)
        transport = Server(left, Protocol(), ("127.0.0.1", 1), None, 1, _memory())
        memory = bytearray(16)
        got: list[int] = []
        twistedprivate.read_into_target(transport, lambda: memoryview(memory), got.append, print)
        right.sendall(b"hello")
        transport.doRead()
        assert got == [5] and memory[:5] == b"hello"
    finally:
        left.close()
        right.close()


class _Lost(Protocol):
    reasons: list[Any]

    def connectionMade(self) -> None:
        self.reasons = []

    def connectionLost(self, reason: Any = None) -> None:
        self.reasons.append(reason)


def _server_on(memory: Any) -> tuple[Server, _Lost, socket.socket]:
    left, right = socket.socketpair()
    left.setblocking(False)
    protocol = _Lost()
    transport = Server(left, protocol, ("127.0.0.1", 1), None, 1, memory)
    protocol.makeConnection(transport)
    return transport, protocol, right


def test_twisted_closes_an_empty_transport_on_the_next_dowrite() -> None:
    """What close_flushed does at once is what Twisted's loseConnection does a turn later: the
    reactor's doWrite finds nothing to send and returns CONNECTION_DONE."""
    from twisted.internet import main
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    transport, protocol, right = _server_on(memory)
    try:
        transport.loseConnection()
        assert transport in memory.writers and transport not in memory.readers
        assert protocol.reasons == []
        assert transport.doWrite() is main.CONNECTION_DONE
    finally:
        transport.socket.close()
        right.close()


def test_close_flushed_closes_an_empty_plain_transport_now() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    transport, protocol, right = _server_on(memory)
    try:
        assert transport in memory.readers
        assert twistedprivate.close_flushed(transport)
        assert len(protocol.reasons) == 1 and protocol.reasons[0].check(ConnectionDone)
        assert transport not in memory.readers and transport not in memory.writers
        assert transport.disconnected and not transport.connected
        assert right.recv(10) == b""  # shut down and closed: the peer reads the end
    finally:
        right.close()


def test_close_flushed_leaves_a_transport_with_queued_bytes_or_a_producer() -> None:
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    queued, queued_protocol, right = _server_on(memory)
    producing, producing_protocol, right2 = _server_on(memory)
    try:
        queued.write(b"not sent yet")
        assert not twistedprivate.close_flushed(queued)
        producing.registerProducer(_Kept(), True)
        assert not twistedprivate.close_flushed(producing)
        assert queued_protocol.reasons == [] and producing_protocol.reasons == []
        assert queued.connected and not queued.disconnecting
    finally:
        for transport in (queued, producing):
            transport.socket.close()
        right.close()
        right2.close()


def test_close_flushed_leaves_other_transports() -> None:
    from twisted.internet.testing import StringTransport

    assert not twistedprivate.close_flushed(StringTransport())


def test_forget_read_into_restores_the_transports_own_doread() -> None:
    from twisted.internet.testing import MemoryReactor

    transport, _protocol, right = _server_on(MemoryReactor())
    try:
        twistedprivate.read_into_target(transport, lambda: memoryview(bytearray(16)), print, print)
        assert "doRead" in vars(transport)
        twistedprivate.forget_read_into(transport)
        assert "doRead" not in vars(transport)
        assert transport.doRead.__func__ is Server.doRead  # type: ignore[attr-defined]
    finally:
        transport.socket.close()
        right.close()


class _Half(_Lost):
    received: list[bytes]
    ended: int

    def connectionMade(self) -> None:
        super().connectionMade()
        self.received = []
        self.ended = 0

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.ended += 1
        self.transport.loseConnection()  # type: ignore[union-attr]


def test_read_waiting_reads_what_is_there_and_hands_an_end_to_the_reactor() -> None:
    """Nothing waiting: nothing happens; bytes waiting: dataReceived now; the peer's end: the
    reactor's own _disconnectSelectable (Twisted's mixin, which the installed reactor uses, on a
    memory reactor), which tells a half-closeable protocol readConnectionLost."""
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.posixbase import _DisconnectSelectableMixin
    from twisted.internet.testing import MemoryReactor
    from zope.interface import directlyProvides

    class Memory(MemoryReactor, _DisconnectSelectableMixin):
        pass

    assert isinstance(reactor, _DisconnectSelectableMixin)
    left, right = socket.socketpair()
    left.setblocking(False)
    protocol = _Half()
    directlyProvides(protocol, IHalfCloseableProtocol)
    memory = Memory()
    transport = Server(left, protocol, ("127.0.0.1", 1), None, 1, memory)
    protocol.makeConnection(transport)
    try:
        twistedprivate.read_waiting(transport)
        assert protocol.received == [] and protocol.ended == 0
        right.sendall(b"early")
        twistedprivate.read_waiting(transport)
        assert protocol.received == [b"early"]
        right.shutdown(socket.SHUT_WR)
        twistedprivate.read_waiting(transport)
        assert protocol.ended == 1
        assert transport.disconnecting and transport not in memory.readers
    finally:
        left.close()
        right.close()


def test_tcp4_addresses_are_what_gethost_and_getpeer_say() -> None:
    from twisted.internet.testing import MemoryReactor

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        accepted, address = listener.accept()
    try:
        transport = Server(accepted, Protocol(), address, None, 1, MemoryReactor())
        host, peer = transport.getHost(), transport.getPeer()
        assert twistedprivate.tcp4_addresses(transport) == (
            (host.host, host.port),
            (peer.host, peer.port),
        )
        assert peer.port == client.getsockname()[1]
    finally:
        accepted.close()
        client.close()


def test_tcp4_addresses_of_other_transports_are_none() -> None:
    from twisted.internet.testing import MemoryReactor, StringTransport

    assert twistedprivate.tcp4_addresses(StringTransport()) is None
    left, right = socket.socketpair()
    try:  # the peer address is all that tells IPv6 apart here
        transport = Server(left, Protocol(), ("::1", 5, 0, 0), None, 1, MemoryReactor())
        assert twistedprivate.tcp4_addresses(transport) is None  # an IPv6 peer
    finally:
        left.close()
        right.close()


def _listening(memory: Any) -> tuple[Any, list[Any]]:
    """A real listening tcp.Port on a memory reactor, and what its factory was given."""
    from twisted.internet.protocol import Factory
    from twisted.internet.tcp import Port

    factory = Factory.forProtocol(_Kept)
    given: list[Any] = []
    original = factory.buildProtocol
    factory.buildProtocol = lambda addr: given.append(addr) or original(addr)  # type: ignore[method-assign, func-returns-value]
    port = Port(0, factory, 50, "127.0.0.1", memory)
    port.startListening()
    return port, given


def test_accept_lightly_makes_the_connections_twisted_would() -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    port, given = _listening(memory)
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)]
    try:
        twistedprivate.accept_lightly(port)
        twistedprivate.accept_lightly(port)  # once is enough: a second call changes nothing
        port.doRead()
        assert len(given) == 3 and all(isinstance(a, IPv4Address) for a in given)
        transports = [p for p in memory.readers if isinstance(p, Server)]
        assert len(transports) == 3
        peers = sorted(t.getPeer().port for t in transports)
        assert peers == sorted(c.getsockname()[1] for c in clients)
        assert sorted(t.sessionno for t in transports) == [0, 1, 2] and port.sessionno == 3
        for transport in transports:
            assert transport.protocol.transport is transport and transport.connected
            assert transport.socket.gettimeout() == 0.0  # non-blocking, as Twisted makes it
            assert transport.socket.family == socket.AF_INET
            assert "_Kept" in transport.logstr and repr(transport).startswith("<_Kept #")
        # Bound to 127.0.0.1: every connection's local address is the port's, not asked again.
        assert transport.local_address == transport.socket.getsockname()
        assert twistedprivate.tcp4_addresses(transport)[0] == transport.socket.getsockname()
        assert port.numberAccepts == 3  # fewer than allowed: as Twisted shrinks it
        for transport in transports:
            transport.socket.close()
    finally:
        for client in clients:
            client.close()
        port.connectionLost(None)


class _ClosedAtOnce(Protocol):
    """Served and closed within the accept (a complete Connection: close request)."""

    def connectionMade(self) -> None:
        assert twistedprivate.close_flushed(self.transport)


def _closing_listener(memory: Any, closes: list[bool]) -> tuple[Any, list[Any]]:
    """A listening port whose n-th accepted connection is closed at once if ``closes[n]``."""
    from twisted.internet.protocol import Factory
    from twisted.internet.tcp import Port

    factory = Factory()
    given: list[Any] = []

    def build(addr: Any) -> Protocol:
        given.append(addr)
        return _ClosedAtOnce() if closes[len(given) - 1] else _Kept()

    factory.buildProtocol = build  # type: ignore[method-assign]
    port = Port(0, factory, 50, "127.0.0.1", memory)
    port.startListening()
    return port, given


@pytest.mark.parametrize("lightly_first", [True, False])
@pytest.mark.parametrize(
    ("closes", "taken"),
    [
        # Each stays open: one connection per wake-up.
        ([False, False, False], (1, 2, 3)),
        # Closed, closed, open: the one left open ends the wake-up; then closed, open.
        ([True, True, False, True, False], (3, 5)),
    ],
)
def test_one_per_wakeup_goes_on_while_each_connection_is_closed_within_it(
    lightly_first: bool, closes: list[bool], taken: tuple[int, ...]
) -> None:
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    port, given = _closing_listener(memory, closes)
    clients = [
        socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(len(closes))
    ]
    try:
        if lightly_first:
            twistedprivate.accept_lightly(port)
            twistedprivate.accept_one_per_wakeup(port)
        else:
            twistedprivate.accept_one_per_wakeup(port)
            twistedprivate.accept_lightly(port)
        for expected in taken:
            port.doRead()
            assert len(given) == expected
        for transport in memory.readers:
            if isinstance(transport, Server):
                transport.socket.close()
    finally:
        for client in clients:
            client.close()
        port.connectionLost(None)


class _FailingListener:
    """A listening socket whose accept() fails as when the process is out of descriptors."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM
    proto = 0

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)

    def _accept(self) -> tuple[int, Any]:
        import errno

        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_lightly_leaves_accept_errors_to_twisted() -> None:
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    port, given = _listening(memory)
    real = port.socket
    twisted_reads: list[int] = []
    try:
        port.socket = _FailingListener()
        port.doRead = lambda: twisted_reads.append(1)  # stands for Twisted's doRead
        twistedprivate.accept_lightly(port)
        port.doRead()
        assert twisted_reads == [1] and given == []
    finally:
        port.socket = real
        port.connectionLost(None)


def test_accepted_server_is_twisteds_server_made_with_less() -> None:
    """Every attribute Server.__init__ sets, with the same values; logstr and repr the same,
    made when first asked for. If Twisted's Server.__init__ changes, this fails."""
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    port, _given = _listening(memory)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        theirs = Server(pairs[0][0], _Kept(), ("127.0.0.1", 5), port, 7, memory)
        ours = twistedprivate.AcceptedServer(
            pairs[1][0], _Kept(), ("127.0.0.1", 5), port, 7, memory
        )
        expected = {k: v for k, v in vars(theirs).items() if k not in ("socket", "fileno")}
        got = {k: v for k, v in vars(ours).items() if k not in ("socket", "fileno")}
        assert got.pop("local_address") is None  # ours alone: the port's address, if known
        assert set(got) == set(expected) - {"logstr", "repstr"}
        assert ours.logstr == expected.pop("logstr") and repr(ours) == repr(theirs)
        expected.pop("repstr")
        assert type(got.pop("protocol")) is type(expected.pop("protocol"))  # two of a kind
        assert got == expected
        assert theirs in memory.readers and ours in memory.readers
        quiet = twistedprivate.AcceptedServer(
            pairs[1][0], _Kept(), ("::1", 5, 0, 0), port, 8, memory, False
        )
        assert quiet.connected and quiet not in memory.readers  # its protocol starts reading
        assert quiet.getPeer().host == "::1"  # an IPv6 peer, as Server makes it
    finally:
        for left, right in pairs:
            left.close()
            right.close()
        port.connectionLost(None)


class _Broken(Protocol):
    def connectionMade(self) -> None:
        raise RuntimeError("a bug in connectionMade")


def test_accept_lightly_logs_a_failing_protocol_and_leaves_its_transport_registered() -> None:
    """As Twisted's doRead: the error is logged, the transport stays registered for reading
    (Twisted registers it before connectionMade), and the port goes on accepting."""
    from twisted.internet.protocol import Factory
    from twisted.internet.tcp import Port
    from twisted.internet.testing import MemoryReactor
    from twisted.logger import globalLogPublisher

    class Ours(Factory):
        starts_reading = True
        protocol = _Broken

    memory = MemoryReactor()
    port = Port(0, Ours(), 50, "127.0.0.1", memory)
    port.startListening()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        twistedprivate.accept_lightly(port)
        port.doRead()
        transports = [t for t in memory.readers if isinstance(t, Server)]
        assert len(transports) == 1
        assert any("unhandled error accepting" in e.get("log_format", "") for e in events)
        transports[0].socket.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
        client.close()
        port.connectionLost(None)


def test_close_flushed_leaves_an_aborted_transport_to_its_reset() -> None:
    """abortConnection marks the transport _aborting (not disconnecting) and resets it a turn
    later: closing it in order now would tell the client its response ended normally."""
    from twisted.internet.testing import MemoryReactorClock

    memory = MemoryReactorClock()
    transport, protocol, right = _server_on(memory)
    try:
        transport.abortConnection()
        assert transport._aborting and not transport.disconnecting  # type: ignore[attr-defined]
        assert not twistedprivate.close_flushed(transport)
        assert protocol.reasons == []
        memory.advance(0)
        (reason,) = protocol.reasons
        from twisted.internet.error import ConnectionAborted

        assert reason.check(ConnectionAborted)
    finally:
        right.close()


class _Reader:
    """A readable descriptor for an epoll reactor: records its reads, may fail in them."""

    def __init__(self, sock: socket.socket, fail_on_lost: bool = False) -> None:
        self.sock = sock
        self.reads: list[bytes] = []
        self.lost: list[object] = []
        self.fail_on_lost = fail_on_lost

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self) -> object:
        data = self.sock.recv(100)
        self.reads.append(data)
        return None if data else ConnectionDone()

    def connectionLost(self, reason: object) -> None:
        self.lost.append(reason)
        if self.fail_on_lost:
            raise RuntimeError("connectionLost failed")


def _epoll_reactor() -> Any:
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def _close_reactor(r: Any) -> None:
    r.removeAll()
    r._poller.close()
    r.waker.connectionLost(None)


def test_dispatch_lightly_replaces_an_epoll_reactors_poll_and_keeps_its_meaning() -> None:
    r = _epoll_reactor()
    a, b = socket.socketpair()
    try:
        assert twistedprivate.dispatch_lightly(r)
        assert "doIteration" in vars(r) and "doPoll" in vars(r)
        reader = _Reader(a)
        r.addReader(reader)
        b.send(b"hello")
        r.doIteration(0)
        assert reader.reads == [b"hello"]
        r.doIteration(0)  # nothing ready: no call
        assert reader.reads == [b"hello"]
        b.close()
        r.doIteration(0)  # the end of the stream: doRead's reason disconnects it
        assert reader.reads == [b"hello", b""]
        assert len(reader.lost) == 1 and reader not in r.getReaders()
    finally:
        _close_reactor(r)
        a.close()
        b.close()


def test_dispatch_lightly_logs_an_error_escaping_the_handler() -> None:
    from twisted.logger import globalLogPublisher

    r = _epoll_reactor()
    a, b = socket.socketpair()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        twistedprivate.dispatch_lightly(r)
        reader = _Reader(a, fail_on_lost=True)
        r.addReader(reader)
        b.close()
        r.doIteration(0)  # connectionLost raises inside _doReadOrWrite's disconnect
        failures = [e for e in events if e.get("log_failure") is not None]
        assert [e["system"] for e in failures] == ["reader"]
        assert failures[0]["log_failure"].check(RuntimeError)
    finally:
        globalLogPublisher.removeObserver(events.append)
        _close_reactor(r)
        a.close()
        b.close()


def test_dispatch_lightly_leaves_other_reactors() -> None:
    r = _memory()
    assert not twistedprivate.dispatch_lightly(r)
    assert "doIteration" not in vars(r)


def test_hooks_run_before_each_poll_and_before_its_events_are_handled() -> None:
    r = _epoll_reactor()
    a, b = socket.socketpair()
    seen: list[object] = []
    try:
        assert twistedprivate.dispatch_lightly(r)
        reader = _Reader(a)
        r.addReader(reader)
        assert twistedprivate.before_each_poll(r, lambda: seen.append(list(reader.reads)))
        b.send(b"hello")
        r.doIteration(0)
        r.doIteration(0)  # nothing ready: the hook runs all the same
        assert seen == [[], [b"hello"]]
    finally:
        _close_reactor(r)
        a.close()
        b.close()


def test_no_hook_for_a_reactor_left_as_it_was() -> None:
    assert not twistedprivate.before_each_poll(_memory(), lambda: None)
    r = _epoll_reactor()  # an epoll reactor, but dispatch_lightly was not asked to change it
    try:
        assert not twistedprivate.before_each_poll(r, lambda: None)
    finally:
        _close_reactor(r)


def _epoll_events(epoll_fd: int, fd: int) -> int:
    """The event mask ``fd`` is registered with in the epoll ``epoll_fd`` (from /proc)."""
    with open(f"/proc/self/fdinfo/{epoll_fd}") as f:
        for line in f:
            fields = line.split()
            if fields[:2] == ["tfd:", str(fd)]:
                return int(fields[fields.index("events:") + 1], 16)
    raise AssertionError(f"{fd} is not registered in epoll {epoll_fd}")


def _shared_ports(count: int) -> tuple[list[Any], list[Any]]:
    """``count`` epoll reactors, each with a port on one listening socket (as prefork workers)."""
    from twisted.internet.protocol import Factory

    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    reactors = [_epoll_reactor() for _ in range(count)]
    factory = Factory.forProtocol(Protocol)
    ports = [r.adoptStreamPort(listener.fileno(), socket.AF_INET, factory) for r in reactors]
    listener.close()  # each port holds its own copy
    return reactors, ports


def test_exclusive_wakeups_registers_the_port_exclusively_and_again_after_a_pause() -> None:
    import select

    reactors, ports = _shared_ports(1)
    r, port = reactors[0], ports[0]
    try:
        assert not _epoll_events(r._poller.fileno(), port.fileno()) & select.EPOLLEXCLUSIVE
        assert twistedprivate.exclusive_wakeups(port)
        events = _epoll_events(r._poller.fileno(), port.fileno())
        assert events & select.EPOLLEXCLUSIVE and events & select.EPOLLIN
        assert port in r.getReaders()
        port.stopReading()  # max-connections pauses accepting: out of the epoll altogether
        assert port not in r.getReaders()
        port.startReading()
        port.startReading()  # twice is once, as addReader
        assert port in r.getReaders()
        assert _epoll_events(r._poller.fileno(), port.fileno()) & select.EPOLLEXCLUSIVE
    finally:
        for p in ports:
            p.connectionLost(None)
        _close_reactor(r)


def test_exclusive_wakeups_leaves_other_reactors_and_descriptors() -> None:
    class PortOfAMemoryReactor:
        reactor = _memory()

        def fileno(self) -> int:
            return 3

    assert not twistedprivate.exclusive_wakeups(PortOfAMemoryReactor())
    assert not twistedprivate.exclusive_wakeups(object())


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_connection_wakes_one_of_two_waiting_workers_when_exclusive(exclusive: bool) -> None:
    """Two workers' epolls wait on one listening socket; one connection arrives. Registered
    exclusively, one of them wakes (the other's wait runs out empty); plainly, both do."""
    import threading
    import time

    reactors, ports = _shared_ports(2)
    woken: list[list[Any]] = [[], []]
    try:
        if exclusive:
            assert all(twistedprivate.exclusive_wakeups(p) for p in ports)

        def wait(i: int) -> None:
            woken[i] = reactors[i]._poller.poll(0.5)

        threads = [threading.Thread(target=wait, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        for t in threads:  # both blocked in epoll_wait before the connection comes
            while "epoll" not in _wchan(t) and "ep_poll" not in _wchan(t):
                assert time.monotonic() < deadline, "a thread never blocked in epoll_wait"
                time.sleep(0.001)  # polling a kernel state, with a deadline
        client = socket.create_connection(("127.0.0.1", ports[0].getHost().port))
        for t in threads:
            t.join(5)
        client.close()
        ready = [
            fd for i, events in enumerate(woken) for fd, _ in events if fd == ports[i].fileno()
        ]
        assert len(ready) == (1 if exclusive else 2)
    finally:
        for p in ports:
            p.connectionLost(None)
        for r in reactors:
            _close_reactor(r)


def _wchan(thread: Any) -> str:
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            return f.read()
    except OSError:
        return ""
