"""The few private attributes of Twisted objects catalyzer reads, in one place.

Twisted offers no public way to ask a TCP transport whether its write buffer is empty, to get
the interface/port/backlog a parsed ``tcp:`` endpoint description holds, to get the TLS
context factory out of a parsed ``ssl:`` endpoint, to hook into its PROXY protocol wrapper
(only ``proxyEndpoint`` is public; the wrapper classes and their state are not), to keep a
listening port to one ``accept()`` per wake-up, or to register a descriptor with epoll flags of
its own. Each read lives here, behind a function with
a documented meaning, and ``tests/server/test_twistedprivate.py`` checks each one against the
installed Twisted, so an upgrade that renames one fails that test instead of a worker.
"""

from __future__ import annotations

import errno
import functools
import select
import socket
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from twisted.internet import main, tcp, unix
from twisted.internet.address import IPv6Address
from twisted.logger import ILogObserver, Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.python.failure import Failure

__all__ = [
    "AcceptedServer",
    "HAProxyProtocolWrapper",
    "HAProxyWrappingFactory",
    "TCPBind",
    "accept_lightly",
    "before_each_poll",
    "close_flushed",
    "dispatch_lightly",
    "exclusive_wakeups",
    "forget_read_into",
    "has_accept_log",
    "proxy_header_parsed",
    "read_into_target",
    "read_waiting",
    "resume_producer_when_drained",
    "route_accept_log",
    "ssl_context_factory",
    "tcp4_addresses",
    "tcp_bind",
    "write_buffer_empty",
]

_log = Logger(namespace="catalyzer.accept")
# What tcp.Port.startListening sets numberAccepts to (an instance attribute, no class default).
_TWISTED_FIRST_ACCEPTS = 100
_dispatch_log = Logger(namespace="catalyzer.reactor")


def write_buffer_empty(transport: Any) -> bool:
    """True when a ``twisted.internet.abstract.FileDescriptor`` transport has nothing queued:
    bytes written now would be the next on the wire."""
    return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)


class TCPBind(NamedTuple):
    """What a parsed ``tcp:``/``tcp6:`` server endpoint would bind."""

    interface: str
    port: int
    backlog: int


def tcp_bind(endpoint: Any) -> TCPBind:
    """The interface, port and backlog of a ``TCP4ServerEndpoint``/``TCP6ServerEndpoint``."""
    return TCPBind(str(endpoint._interface), int(endpoint._port), int(endpoint._backlog))


def ssl_context_factory(endpoint: Any) -> Any:
    """The TLS context factory an ``SSL4ServerEndpoint`` (an ``ssl:`` description) would use."""
    return endpoint._sslContextFactory


def proxy_header_parsed(wrapper: HAProxyProtocolWrapper) -> bool:
    """Whether a PROXY protocol wrapper has read a complete, valid header: its ``getPeer()`` and
    ``getHost()`` now say what the header said (or the real ones, for a ``LOCAL`` header)."""
    return wrapper._proxyInfo is not None


def accept_one_per_wakeup(port: Any) -> None:
    """Make a listening ``twisted.internet.tcp.Port`` (or unix Port) accept at most one
    connection that stays open each time the reactor finds it readable.

    A port with catalyzer's own accept loop (:func:`accept_lightly`) goes on accepting in the
    same wake-up while each connection it accepts is served and closed within it (a
    ``Connection: close`` request complete at accept): such a connection leaves nothing in this
    worker, and the loop calls ``accept()`` again only once that request's app call has returned,
    so a worker stuck in the app still takes nothing from the shared queue. The first connection
    that stays open (keep-alive, or a request still arriving) ends the wake-up, which is what
    spreads a burst of connections over the workers awake. Any other port accepts one
    connection: Twisted's ``doRead`` takes up to ``numberAccepts`` and grows that number by 20
    whenever it took as many as allowed, so setting it to 1 before each call holds it there. A
    port without the attribute (not a stream listening port) is left alone."""
    if not hasattr(port, "numberAccepts"):
        return
    port._catalyzer_one_open = True  # the rule accept_lightly's loop follows, before or after
    if getattr(port, "_catalyzer_light", False):
        return
    accept = port.doRead

    def do_read() -> Any:
        port.numberAccepts = 1
        return accept()

    port.numberAccepts = 1
    port.doRead = do_read


def exclusive_wakeups(port: Any) -> bool:
    """Register a listening port that several processes share with ``EPOLLEXCLUSIVE``, now and
    whenever it starts reading again; False (and nothing changed) when its reactor is not
    Twisted's epoll reactor or the kernel has no such flag.

    Registered plainly, a connection arriving on a socket that N workers watch wakes all N
    that are waiting (each loops once and calls ``accept()`` for nothing but one): the
    thundering herd, N - 1 wasted wake-ups per connection at any load low enough for workers
    to wait. Exclusive, the kernel wakes one waiting worker (a busy one finds the connection
    at its next poll, as before). Twisted's ``addReader`` registers with ``EPOLLIN`` alone; a
    listening port is only ever a reader, so registering it here is the whole difference, and
    ``stopReading`` (``removeReader``, which unregisters it) needs nothing else."""
    reactor: Any = getattr(port, "reactor", None)
    flag = getattr(select, "EPOLLEXCLUSIVE", None)
    poller = getattr(reactor, "_poller", None)
    if flag is None or not isinstance(poller, select.epoll) or not hasattr(port, "fileno"):
        return False
    reads: set[int] = reactor._reads
    selectables: dict[int, Any] = reactor._selectables

    def start_reading() -> None:
        fd = port.fileno()
        if fd in reads or fd < 0:
            return
        poller.register(fd, select.EPOLLIN | flag)
        reads.add(fd)
        selectables[fd] = port

    was_reading = port.fileno() in reads
    if was_reading:
        reactor.removeReader(port)
    port.startReading = start_reading
    if was_reading:
        start_reading()
    return True


class AcceptedServer(tcp.Server):
    """The ``tcp.Server`` that :func:`accept_lightly` makes: the same transport, made with less.

    ``Server.__init__`` formats two strings per connection, ``logstr`` (the log prefix the
    reactor asks for at every wake-up of the connection) and ``repstr`` (its ``repr``): here
    each is made the first time it is asked for, which for a connection served and closed in
    the turn that accepted it is never. With ``register=False`` it is not registered with the
    reactor for reading either: its protocol's ``connectionMade`` calls ``startReading()`` if
    it still wants to read after reading what is already there (a connection closed in that
    turn never costs an ``epoll_ctl``)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: Any,
        client: tuple[Any, ...],
        server: Any,
        sessionno: int,
        reactor: Any,
        register: bool = True,
        local: tuple[str, int] | None = None,
    ) -> None:
        # Server.__init__ but for the two strings (and, without register, startReading).
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        # The listening socket's own address when it is bound to one (not a wildcard): every
        # connection it accepts has it, and asking the kernel again costs a getsockname.
        self.local_address = local
        if register:
            self.startReading()  # type: ignore[no-untyped-call]
        self.connected = 1

    @functools.cached_property
    def logstr(self) -> str:  # type: ignore[override]
        prefix = self._getLogPrefix(getattr(self, "protocol", None))
        return f"{prefix},{self.sessionno},{self.hostname}"

    @functools.cached_property
    def repstr(self) -> str:  # type: ignore[override]
        name = type(getattr(self, "protocol", None)).__name__
        return f"<{name} #{self.sessionno} on {self.server._realPortNumber}>"


def accept_lightly(listening: object) -> None:
    """Give a listening ``tcp.Port`` a lighter accept loop (any other port is left alone).

    Twisted's ``Port.doRead`` wraps every wake-up in a log-buffering context and a generator,
    and ``socket.accept()`` turns the listening socket's family and type into enums for every
    connection: work that costs about as much as the rest of accepting. This loop calls the
    socket's raw ``_accept`` and otherwise does what ``doRead`` does for each connection: the
    IPv6 scope in the peer's address, ``factory.buildProtocol``, a session number, the port's
    transport (an :class:`AcceptedServer` for a port of plain ``tcp.Server`` transports, not
    registered for reading when the factory's ``starts_reading`` says its protocols do that
    themselves), ``makeConnection``, and the same growth of ``numberAccepts``; under
    :func:`accept_one_per_wakeup` (applied before or after) it stops after the first connection
    that stays open, and it stops once the factory's ``paused()`` (if it has one) says so,
    where Twisted's loop would take the rest of its count past a pause. A factory with a
    ``hold(socket, address, port)`` method may keep a socket before any of that
    (:mod:`catalyzer.server.holding`) and have it served later by
    ``port._catalyzer_light(socket, address)``. Any ``accept()`` error but "nothing waiting" is
    left to Twisted's own ``doRead``, which meets it again and deals with it as it always does
    (the EMFILE reserve, its logger, which :mod:`~catalyzer.server.acceptguard` watches)."""
    if type(listening) is not tcp.Port or getattr(listening, "_catalyzer_light", None):
        return
    port: Any = listening
    if getattr(port, "_catalyzer_one_open", False):
        # accept_one_per_wakeup came first and held the count at 1; this loop has its own rule.
        port.numberAccepts = _TWISTED_FIRST_ACCEPTS
    twisted_read = port.doRead
    listener = port.socket
    raw_accept = listener._accept
    family, kind, proto = int(listener.family), int(listener.type), listener.proto
    make_socket = socket.socket
    factory = port.factory
    hold = getattr(factory, "hold", None)
    paused = getattr(factory, "paused", None)
    light = port.transport is tcp.Server
    register = not getattr(factory, "starts_reading", False)
    bound = listener.getsockname()
    local = bound if family == socket.AF_INET and bound[0] != "0.0.0.0" else None

    def connect(skt: socket.socket, address: Any) -> Any:
        """Serve an accepted socket: its protocol and transport made and connected (None if
        the factory refused it)."""
        protocol = factory.buildProtocol(port._buildAddr(address))
        if protocol is None:
            skt.close()
            return None
        session = port.sessionno
        port.sessionno = session + 1
        transport: Any
        if light:
            transport = AcceptedServer(
                skt, protocol, address, port, session, port.reactor, register, local
            )
        else:
            transport = port.transport(skt, protocol, address, port, session, port.reactor)
        try:
            protocol.makeConnection(transport)
        except Exception:
            if not transport.disconnecting and transport.connected:
                # Registered, as Twisted's Server would be before connectionMade ran.
                transport.startReading()
            raise
        return transport

    def do_read() -> None:
        accepted = 0
        limit = port.numberAccepts
        one_open = getattr(port, "_catalyzer_one_open", False)
        try:
            while accepted < limit:
                try:
                    fd, address = raw_accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EINVAL:
                        # Shut down under us: a prefork master stopping (Twisted's Port shuts
                        # the socket every worker shares down as it stops listening).
                        port.stopReading()
                        return
                    twisted_read()
                    return
                accepted += 1
                skt = make_socket(family, kind, proto, fd)
                if len(address) == 4:
                    host = socket.getnameinfo(
                        address, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
                    )
                    address = (host[0], *address[1:])
                if hold is not None and hold(skt, address, port):
                    if one_open or (paused is not None and paused()):
                        break
                    continue
                transport = connect(skt, address)
                if one_open and transport is not None and not transport.disconnected:
                    break
                if paused is not None and paused():
                    break  # the connection just made paused accepting (max-connections)
        except Exception:
            _log.failure("unhandled error accepting a connection")  # Twisted: log.deferr()
        if accepted == limit:
            port.numberAccepts = limit + 20
        else:
            port.numberAccepts = max(1, accepted)

    # Also how a connection held at the limit (HTTPFactory.hold) is served once its head is in.
    port._catalyzer_light = connect
    port.doRead = do_read


def disown_transport(transport: Any) -> None:
    """Make a connected ``tcp.Server`` inert: ``write``, ``loseConnection`` and
    ``abortConnection`` become no-ops, so nothing this process does later sends, shuts down or
    resets the connection another process now serves. The caller removes it from the reactor;
    its socket stays open until :func:`close_disowned`."""
    transport.connected = False
    transport.disconnecting = True
    transport.disconnected = True


def close_disowned(transport: Any) -> None:
    """Close a disowned transport's socket with a bare ``close(2)``: not the ``shutdown(2)`` of
    ``loseConnection`` nor the ``SO_LINGER`` 0 of ``abortConnection``, which would end the
    connection for every process holding it."""
    transport.socket.close()


def read_into_target(
    transport: Any,
    target: Callable[[], memoryview | int],
    received: Callable[[int], object],
    piece: Callable[[bytes], object],
) -> None:
    """Make a connected ``twisted.internet.tcp.Server`` read with ``recv_into`` into the writable
    view ``target()`` returns (its length bounds the read; it may be different memory every
    time: a shared buffer, say) and tell ``received(n)`` how many bytes it took, instead of
    ``recv`` of a new ``bytes`` and ``protocol.dataReceived``.

    While ``target()`` returns a number instead (a body kept in memory is arriving,
    spool.MemoryBody), reads are ``recv`` of that many bytes, each a new ``bytes`` the body
    keeps as it is, handed to ``piece``, several in one turn while the socket fills them (the
    body's pieces are 64 KiB: a 1 MiB body is 16 reads, not 16 wake-ups). One call decides both,
    so a read that is not a body's costs no more than before.

    ``Connection.doRead`` offers no hook for this: the replacement keeps its meaning (an
    ``EWOULDBLOCK`` is nothing, another error is a lost connection, an empty read the end).
    The replacement refers to the callables (usually the protocol's): undo it with
    :func:`forget_read_into` once the connection is lost, or transport and protocol stay in a
    reference cycle that only the garbage collector frees."""
    sock = transport.socket

    def do_read() -> Any:
        try:
            into = target()
            if type(into) is int:
                for _ in range(_PIECES_PER_TURN):
                    data = sock.recv(into)
                    if not data:
                        return main.CONNECTION_DONE
                    piece(data)
                    if len(data) < into:  # the socket is most likely empty: no EAGAIN call
                        return None
                    into = target()
                    if type(into) is not int:  # the body is complete; what follows, next turn
                        return None
                return None
            n = sock.recv_into(into)
        except OSError as e:
            if e.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        received(n)
        return None

    transport.doRead = do_read


# Body pieces read in one reactor turn at most (2 MiB of 64 KiB pieces): a body as large as
# body-spool-threshold allows does not keep the reactor from its other connections.
_PIECES_PER_TURN: Final = 32


def read_waiting(transport: Any) -> None:
    """Have a just-accepted connected ``FileDescriptor`` read now, as if the reactor had found it
    readable: by the time a server gets to ``accept()`` a connection, its client has often sent
    its request already (it writes as soon as its ``connect()`` returns), and reading it in the
    same turn saves a wake-up for it.

    What the reactor would do with the outcome is done here: nothing waiting (``EWOULDBLOCK``)
    does nothing, an end or an error of the connection goes to the reactor's
    ``_disconnectSelectable`` as from its own ``doRead`` call (``readConnectionLost`` for a
    clean end on a half-closeable transport, ``connectionLost`` otherwise), and an exception is
    logged and loses the connection, as ``_doReadOrWrite`` does."""
    try:
        why = transport.doRead()
    except Exception as e:
        why = e
        _log.failure("unhandled error reading a new connection")
    if why:
        transport.reactor._disconnectSelectable(transport, why, True)


def forget_read_into(transport: Any) -> None:
    """Undo :func:`read_into_target`: the transport reads with its own ``doRead`` again."""
    transport.__dict__.pop("doRead", None)


# What the reactor hands a transport that closed as asked (it, too, makes this Failure once:
# ``PosixReactorBase._disconnectSelectable``'s ``faildict``).
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)
_PLAIN_SERVERS = (tcp.Server, AcceptedServer, unix.Server)


def tcp4_addresses(transport: Any) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """``((host, port), (peer host, peer port))`` of a plain IPv4 ``tcp.Server``, as its
    ``getHost()`` and ``getPeer()`` would give them without making two address objects: the
    peer is the address ``accept()`` returned, kept as ``client``; the host is the socket's
    name (an :class:`AcceptedServer`'s ``local_address`` when its port knew it). None for any
    other transport (IPv6, unix, TLS, wrappers)."""
    kind = type(transport)
    if (kind is not AcceptedServer and kind is not tcp.Server) or transport.TLS:
        return None
    if len(transport.client) != 2:
        return None
    local = transport.local_address if kind is AcceptedServer else None
    host, port = local if local is not None else transport.socket.getsockname()
    peer: Any = transport.client
    return (host, port), peer


def close_flushed(transport: Any) -> bool:
    """``loseConnection()`` for a plain connected ``tcp.Server`` that has nothing queued and no
    producer, done now instead of on the next reactor turn: True if it is closed (its
    protocol's ``connectionLost`` has run), False (nothing done) for any other transport.

    Twisted's ``loseConnection`` stops reading, starts writing and waits for the reactor to call
    ``doWrite``, which finds the buffer empty and returns ``CONNECTION_DONE`` to the reactor,
    which removes the descriptor and calls ``connectionLost``: with nothing to flush that is an
    ``epoll`` registration, a wake-up and a deregistration for nothing. This takes that path at
    once; the socket is shut down and closed the same way (``_closeSocket(orderly=True)``).
    A transport being aborted (``abortConnection`` sets ``_aborting``, not ``disconnecting``)
    is left alone: it ends with a reset, which an orderly close would turn into a clean end."""
    if (
        type(transport) not in _PLAIN_SERVERS
        or not transport.connected
        or transport.disconnecting
        or getattr(transport, "_aborting", False)  # abortConnection: its reset is on its way
        or transport.producer is not None
        or transport.TLS
        or not write_buffer_empty(transport)
    ):
        return False
    transport.disconnecting = True
    transport.connectionLost(_CONNECTION_DONE)  # stops reading and writing first
    return True


def resume_producer_when_drained(transport: Any) -> None:
    """Have a ``FileDescriptor`` transport resume its registered push producer the next time its
    ``doWrite`` finds its buffer empty, as if the transport had paused it: the producer paused
    itself to send bytes of its own when the socket is writable (``producerPaused`` is what
    ``doWrite`` looks at; ``startWriting`` makes sure it is called)."""
    transport.producerPaused = True
    transport.startWriting()


def has_accept_log(port: Any) -> bool:
    """Whether ``port`` is a ``twisted.internet.tcp.Port`` (tcp, unix), whose ``doRead`` logs
    accept errors through its ``_logger``."""
    return isinstance(getattr(port, "_logger", None), Logger)


def route_accept_log(port: Any, observer: ILogObserver) -> ILogObserver:
    """Send the accept-related events of ``port`` (see :func:`has_accept_log`) to ``observer``
    instead of the global log; returns where they went before. Twisted's ``Port.doRead`` buffers
    its ``_logger``'s events during the accept loop and hands them to that logger's observer."""
    current: Logger = port._logger
    port._logger = Logger(namespace=current.namespace, source=port, observer=observer)
    return current.observer


def dispatch_lightly(reactor: Any) -> bool:
    """Have an epoll reactor hand each ready descriptor to ``_doReadOrWrite`` directly.

    Twisted's ``EPollReactor.doPoll`` wraps every event in ``log.callWithLogger``: the
    selectable's ``logPrefix()``, a context dict and two context-stack calls, about 7 Python
    calls per event and so per keep-alive request, only to give *legacy* ``log.msg`` calls made
    inside the handler a ``system`` prefix (catalyzer's own logging does not use it). This
    poll is Twisted's without that wrapper; an exception escaping ``_doReadOrWrite`` is logged
    as ``callWithLogger`` does. Returns False, changing nothing, for any other reactor."""
    from twisted.internet.epollreactor import EPollReactor

    if type(reactor) is not EPollReactor:
        return False
    hooks: list[Callable[[], object]] = []
    poll = functools.partial(_do_poll, reactor, hooks)
    patched: Any = reactor  # the instance's attributes shadow the class's methods
    patched.doPoll = patched.doIteration = poll
    patched._catalyzer_before_poll = hooks
    return True


def before_each_poll(reactor: Any, hook: Callable[[], object]) -> bool:
    """Have ``reactor`` call ``hook`` each time it is about to wait for events, after its timed
    and thread calls: the last moment before it lets go of the GIL for a while. False, changing
    nothing, for a reactor :func:`dispatch_lightly` did not change."""
    hooks: list[Callable[[], object]] | None = getattr(reactor, "_catalyzer_before_poll", None)
    if hooks is None:
        return False
    hooks.append(hook)
    return True


def _do_poll(reactor: Any, hooks: list[Callable[[], object]], timeout: float | None) -> None:
    # EPollReactor.doPoll (Twisted 24.7 to 26.10), less log.callWithLogger around each event.
    for hook in hooks:
        hook()
    try:
        events = reactor._poller.poll(-1 if timeout is None else timeout, len(reactor._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _dispatch_log.failure("Unhandled error in {system}", system=_log_prefix(selectable))


def _log_prefix(selectable: Any) -> str:
    try:
        return str(selectable.logPrefix())
    except Exception:
        return "(buggy logPrefix method)"
