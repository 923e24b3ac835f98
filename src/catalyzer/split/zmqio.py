"""ZeroMQ in a Twisted reactor, without txZMQ: the only module of catalyzer that imports ``zmq``.

A ZeroMQ socket exposes one file descriptor (``FD``) that is *edge*-triggered and says only "the
socket's ``EVENTS`` may have changed". So :class:`ZmqConnection` registers that descriptor as a
reader and, when it fires, drains: it receives while ``EVENTS`` says POLLIN, at most ``batch``
messages per reactor turn (a flood from one peer cannot starve the reactor; the rest is taken on
the next turn, because the descriptor will not fire again for messages already queued). A send
can consume the edge too, so ``EVENTS`` is checked again after every send and a drain scheduled if
a message is waiting.

:func:`front_socket` and :func:`handler_socket` make the two ends with the options split mode
depends on: the front's ROUTER refuses to drop a message for an unknown peer silently
(``ROUTER_MANDATORY``: the send fails and the front treats the handler as lost), lets a handler
that reconnects with its identity take its route back (``ROUTER_HANDOVER``), and both ends run
ZMTP heartbeats so a dead TCP peer is noticed by libzmq too, with a maximum message size.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

import zmq
import zmq.auth
from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zmq.utils import z85
from zope.interface import implementer

from catalyzer.split.frames import Frame, FrameError, encode_batch, split_batch

__all__ = [
    "MAX_FRAME",
    "KeyFileError",
    "SendResult",
    "ZapHandler",
    "ZmqConnection",
    "create_keys",
    "front_socket",
    "handler_socket",
    "load_allowed_keys",
    "load_key_pair",
    "load_public_key",
    "new_context",
]

log = Logger(namespace="catalyzer.split")

# Messages taken per reactor turn before the rest waits for the next one.
BATCH: Final = 64
# The largest frame a peer may send (libzmq drops the connection of a peer that sends more).
# Bodies travel in frames of at most FRAME_SIZE; the metadata frame holds the request's headers.
MAX_FRAME: Final = 4 * 1024 * 1024
# Body frames from this size are sent without copying them.
ZERO_COPY_FROM: Final = 64 * 1024
# Messages queued per peer before a send would block (then the peer is treated as lost).
HIGH_WATER: Final = 100_000
# As plain ints: pyzmq's flag enums cost a few microseconds per ``&`` on the hot path.
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE: Final = int(zmq.RCVMORE)
# pyzmq's own socket methods, under its Python layer: ``send_multipart`` and ``recv_multipart``
# call that layer's ``send``/``recv`` per frame, each with flag enums and options to look at
# (about 2 us a frame, several frames a request on both sides).
_BaseSocket: Final = zmq.backend.Socket
_base_send: Final[Any] = _BaseSocket.send
_base_recv: Final[Any] = _BaseSocket.recv
_base_get: Final[Any] = _BaseSocket.get


class SendResult(enum.Enum):
    SENT = "sent"
    UNREACHABLE = "no route to that peer"
    FULL = "the peer's queue is full"


def new_context() -> zmq.Context[Any]:
    return zmq.Context()


def _common(sock: zmq.Socket[Any], heartbeat: float, liveness: float) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME + 65536)
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(heartbeat * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(liveness * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(liveness * 1000)))


def front_socket(
    context: zmq.Context[Any],
    endpoints: Sequence[str],
    *,
    heartbeat: float,
    liveness: float,
    curve: tuple[bytes, bytes] | None = None,
) -> tuple[zmq.Socket[Any], list[str]]:
    """The front's ROUTER, bound to every one of ``endpoints`` (zmq.ZMQError if one cannot be),
    and the endpoints as bound (``tcp://127.0.0.1:*`` becomes the port the system chose).
    ``curve`` is the front's (public, secret) key pair: every connection is then encrypted and
    its key judged by the context's :class:`ZapHandler`."""
    sock: zmq.Socket[Any] = context.socket(zmq.ROUTER)
    bound = []
    try:
        _common(sock, heartbeat, liveness)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
        for endpoint in endpoints:
            sock.bind(endpoint)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except zmq.ZMQError:
        sock.close()
        raise
    return sock, bound


def handler_socket(
    context: zmq.Context[Any],
    endpoint: str,
    identity: bytes,
    *,
    heartbeat: float,
    liveness: float,
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> zmq.Socket[Any]:
    """A handler's DEALER, connecting to ``endpoint`` (libzmq reconnects on its own until the
    front is there; until then a send fails at once). ``curve`` is (the handler's
    public key, its secret key, the front's public key)."""
    sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
    try:
        _common(sock, heartbeat, liveness)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        # Nothing is queued for a front not connected: HELLOs repeated while it is away would
        # all arrive together when it comes.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
            sock.setsockopt(zmq.CURVE_SERVERKEY, curve[2])
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close()
        raise
    return sock


class KeyFileError(ValueError):
    """A key file that cannot be used; the text names it and says why."""


def create_keys(directory: str, name: str) -> tuple[str, str]:
    """Write a CURVE key pair: ``name.key`` (public: give it to the other side) and
    ``name.key_secret`` (keep it); returns their paths."""
    public, secret = zmq.auth.create_certificates(directory, name)
    return str(public), str(secret)


def load_key_pair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: {e}") from None
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key (give the .key_secret file)")
    return public, secret


def load_public_key(path: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{path}: {e}") from None
    return public


def load_allowed_keys(directory: str) -> set[bytes]:
    """The public keys (z85) of every ``*.key`` file in ``directory``."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".key"))
    except OSError as e:
        raise KeyFileError(f"{directory}: {e.strerror or e}") from None
    if not names:
        raise KeyFileError(f"{directory}: no handler public keys (*.key files) in it")
    return {load_public_key(os.path.join(directory, n)) for n in names}


class ZapHandler:
    """Judges every CURVE handshake on ``context`` (ZeroMQ's ZAP, RFC 27): a handler whose public
    key is in ``allowed`` may connect, any other is refused and logged. Runs on the reactor like
    any other socket, so nothing here needs a thread."""

    def __init__(self, context: zmq.Context[Any], reactor: Any, allowed: set[bytes]) -> None:
        self.allowed = {z85.decode(key) for key in allowed}
        self.refused = 0
        sock: zmq.Socket[Any] = context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("inproc://zeromq.zap.01")
        self.connection = ZmqConnection(sock, reactor, self._request)

    def start(self) -> None:
        self.connection.start()

    def close(self) -> None:
        self.connection.close()

    def _request(self, received: list[Frame]) -> None:
        frames = [bytes(f) for f in received]
        if len(frames) < 6:
            return
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        key = frames[6] if len(frames) > 6 else b""
        if mechanism == b"CURVE" and key in self.allowed:
            reply = [version, request_id, b"200", b"OK", z85.encode(key), b""]
        else:
            self.refused += 1
            log.warn(
                "refused a handler from {address}: its key is not in handler-keys",
                address=address.decode("latin-1", "replace"),
            )
            reply = [version, request_id, b"400", b"key not allowed", b"", b""]
        self.connection.send(reply)


def _send_parts(sock: Any, frames: Sequence[Frame], copy: bool) -> None:
    """``sock.send_multipart(frames, NOBLOCK, copy=copy)`` without pyzmq's Python layer. A
    multipart message is queued whole or not at all, as with ``send_multipart``: only its first
    part can meet a full queue (zmq.Again)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _base_send(sock, frame, _MORE if i < last else _NOBLOCK, copy)


def _recv_parts(sock: Any) -> list[Any]:
    """``sock.recv_multipart(NOBLOCK, copy=False)`` without pyzmq's Python layer."""
    parts = [_base_recv(sock, _NOBLOCK, False)]
    while _base_get(sock, _RCVMORE):
        parts.append(_base_recv(sock, _NOBLOCK, False))
    return parts


def _copy(frames: Sequence[bytes | memoryview]) -> bool:
    """Copy small messages: a zero-copy send costs a Frame object and a release callback per
    part, far more than copying a few hundred bytes (about 40 us against 4 per send)."""
    return all(len(f) < ZERO_COPY_FROM for f in frames)


@implementer(interfaces.IReadDescriptor)
class ZmqConnection:
    """One ZeroMQ socket as a reader in ``reactor``: each message received is passed to
    ``on_message`` as its list of frames (a ROUTER's first frame is the peer's identity).

    With ``batching``, the messages sent to one peer in one reactor turn leave together at the
    end of the turn, as one ZeroMQ message (:func:`~catalyzer.split.frames.encode_batch`) when
    there are several: under load that is one send, and one wake-up of libzmq's I/O thread on
    each side, for many messages. Batches received are taken apart, so ``on_message`` sees each
    message as if it had come alone. ``routed``: the first frame of every message is the peer's
    routing identity (a ROUTER). A send that fails at the end of the turn is reported to
    ``on_send_failure`` (the peer's identity, or None for a DEALER, and why)."""

    def __init__(
        self,
        sock: Any,
        reactor: Any,
        on_message: Callable[[list[Frame]], None],
        batch: int = BATCH,
        *,
        batching: bool = False,
        routed: bool = False,
    ) -> None:
        self.sock = sock
        self.reactor = reactor
        self.on_message = on_message
        self.batch = batch
        self.batching = batching
        self.routed = routed
        self.on_send_failure: Callable[[bytes | None, SendResult], None] | None = None
        self._fd: int = sock.getsockopt(zmq.FD)
        # The fast paths need a real socket (the tests' fakes have only the multipart methods).
        self._fast = isinstance(sock, _BaseSocket)
        self._pending: interfaces.IDelayedCall | None = None
        self._reading = False
        self._draining = False
        # Messages waiting for the end of the turn, by peer, and the call that sends them.
        self._outbox: dict[bytes | None, list[Sequence[bytes | memoryview]]] = {}
        self._flush_call: interfaces.IDelayedCall | None = None
        self.received = 0
        self.sent = 0
        self.batches_sent = 0

    # -- IReadDescriptor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "zmq"

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False

    def doRead(self) -> None:
        self._drain()

    # -- life

    def start(self) -> None:
        self._reading = True
        self.reactor.addReader(self)
        # Messages may have arrived before we listened: the edge for them is gone already.
        self._schedule()

    def stop(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def close(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self.flush()  # a BYE sent in the last turn still goes
        self.stop()
        self.sock.close(0)

    # -- reading

    def _schedule(self) -> None:
        if self._pending is None and self._reading:
            self._pending = self.reactor.callLater(0, self._drain)

    def _drain(self) -> None:
        self._pending = None
        self._draining = True
        try:
            self._drain_batch()
        finally:
            self._draining = False

    def _drain_batch(self) -> None:
        sock = self.sock
        fast = self._fast
        for _ in range(self.batch):
            if not self._reading:
                return
            try:
                parts = _recv_parts(sock) if fast else sock.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                return  # the edge is re-armed: new messages make the descriptor fire again
            except zmq.ZMQError as e:
                log.error("receiving from the ZeroMQ socket failed: {error}", error=e)
                return
            self.received += 1
            # A large frame (response or request body) stays in ZeroMQ's buffer, seen through a
            # view, and goes from there to the client's socket: no copy into a Python bytes.
            frames: list[Frame] = [p.buffer if len(p) >= ZERO_COPY_FROM else p.bytes for p in parts]
            for message in self._unbatch(frames):
                try:
                    self.on_message(message)
                except Exception:
                    log.failure("a split-mode message could not be handled", Failure())
        # The batch is used up and more may be waiting: the descriptor will not fire for it.
        self._schedule()

    def _unbatch(self, frames: list[Frame]) -> list[list[Frame]]:
        if not self.batching:
            return [frames]
        head = frames[:1] if self.routed else []
        try:
            parts = split_batch(frames[len(head) :])
        except FrameError:
            return [frames]  # as it came: the protocol's decoder says what is wrong with it
        if parts is None:
            return [frames]
        return [head + part for part in parts]

    # -- writing

    def send(self, frames: Sequence[bytes | memoryview]) -> SendResult:
        """Send one message without blocking (with ``batching``: at the end of the turn, and
        SENT here; a failure then goes to ``on_send_failure``)."""
        if not self.batching:
            return self._send_now(frames)
        if self.routed:
            peer: bytes | None = bytes(frames[0])
            frames = frames[1:]
        else:
            peer = None
        self._outbox.setdefault(peer, []).append(frames)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)
        return SendResult.SENT

    def flush(self) -> None:
        """Send what waits for the end of the turn: one ZeroMQ message per peer."""
        self._flush_call = None
        outbox, self._outbox = self._outbox, {}
        for peer, messages in outbox.items():
            if len(messages) == 1:
                frames = list(messages[0])
            else:
                frames = encode_batch(messages)
                self.batches_sent += 1
            if peer is not None:
                frames.insert(0, peer)
            result = self._send_now(frames)
            if result is not SendResult.SENT and self.on_send_failure is not None:
                self.on_send_failure(peer, result)

    def _send_now(self, frames: Sequence[bytes | memoryview]) -> SendResult:
        """Send one message without blocking. After a send the socket's edge may have been
        consumed: a waiting message is then taken on the next turn (within a drain, the drain
        itself takes it)."""
        sock = self.sock
        try:
            if self._fast:
                _send_parts(sock, frames, _copy(frames))
            else:
                sock.send_multipart(frames, _NOBLOCK, copy=_copy(frames))
            result = SendResult.SENT
            self.sent += 1
        except zmq.Again:
            result = SendResult.FULL
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            result = SendResult.UNREACHABLE
        if self._draining:
            return result
        try:
            if sock.getsockopt(_EVENTS) & _POLLIN:
                self._schedule()
        except zmq.ZMQError:
            pass
        return result
