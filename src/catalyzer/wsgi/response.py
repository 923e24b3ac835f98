"""Running the WSGI application for one request and writing its response with back-pressure.

The response is an ``IPushProducer`` registered on its sink (the connection): when the client reads
slowly, the transport pauses us and the iterable is not advanced until it resumes, so memory stays
bounded however large the body. :class:`WSGIResponse` runs the app and its iterable in the reactor
thread; :class:`ThreadedWSGIResponse` (``--threads``) runs them in a pool thread that blocks while
the transport is paused.

The response knows nothing of the connection beyond :class:`~catalyzer.wsgi.sink.ResponseSink`, and
says it is over exactly once, through its ``on_done`` callback with a
:class:`~catalyzer.wsgi.sink.ResponseOutcome`.

``close()`` of the iterable is always called exactly once: after the response, after an error, and
when the client goes away mid-response.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final

from twisted.internet import interfaces
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from catalyzer.http.framing import ResponseFramer, simple_response
from catalyzer.http.headers import AppResponseError, ResponseHead, check_response_head
from catalyzer.http.pending import PendingBytes
from catalyzer.http.reader import Request
from catalyzer.wsgi.filewrapper import FileWrapper
from catalyzer.wsgi.sink import OnDone, ResponseOutcome, ResponseServices, ResponseSink
from catalyzer.wsgi.types import Environ, OptExcInfo, WriteCallable

__all__ = ["StartResponse", "ThreadedWSGIResponse", "WSGIResponse", "response_class"]

log = Logger(namespace="catalyzer.app")

# How many iterable items one reactor turn may take when the transport never pushes back (a
# generator of empty strings, or a client that reads as fast as we write).
_ITEMS_PER_TURN: Final = 64
# Bytes a worker thread may have handed to the reactor and not yet seen written.
_THREAD_HIGH_WATER: Final = 256 * 1024
_SENDFILE_BLOCK: Final = 1024 * 1024
# A list body up to this size is joined with its head and written at once; a larger one is sent
# from the application's own objects (see _MemoryProducer).
_JOIN_LIMIT: Final = 65536
_new_outcome: Final = tuple.__new__


class StartResponse:
    """The ``start_response`` callable: strict about arguments and about the ``exc_info`` rules."""

    __slots__ = ("head", "sent", "write")

    def __init__(self, write: WriteCallable) -> None:
        self.head: ResponseHead | None = None
        self.sent = False
        self.write = write

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> WriteCallable:
        if exc_info is not None and exc_info[0] is not None:
            try:
                if self.sent:
                    # PEP 3333: too late to change the response; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.head is not None:
            raise AppResponseError("start_response called a second time without exc_info")
        self.head = check_response_head(status, headers)
        return self.write


class _Aborted(Exception):
    """The response was abandoned (client gone, timeout, error): the worker thread stops."""


def _write_after_end(data: bytes) -> None:
    raise _Aborted("the response is already finished")


@implementer(interfaces.IPushProducer)
class WSGIResponse:
    """One request's trip through the application and back to the client, in the reactor thread."""

    # Large pieces of an iterable are sent from the app's objects (_emit_direct).
    _direct_chunks = True

    def __init__(
        self,
        services: ResponseServices,
        sink: ResponseSink,
        request: Request,
        environ: Environ,
        on_done: OnDone,
    ) -> None:
        self.services = services
        self.sink = sink
        self.request = request
        self.environ = environ
        self.on_done = on_done
        self.started = services.clock.seconds()
        self.start_response = StartResponse(self._write)
        self.framer: ResponseFramer | None = None
        self.status = 0
        self._direct_bytes = 0
        self.done = False
        self.counted = False  # by _answered, before the bytes that complete it are written
        self._iterable: Iterable[bytes] | None = None
        self._iterator: Iterator[bytes] | None = None
        self._closed_iterable = False
        self._paused = False
        self._registered = False
        self._next_turn: interfaces.IDelayedCall | None = None
        self._stall: interfaces.IDelayedCall | None = None
        # Body bytes of this response the socket has not taken yet (see _emit_direct).
        self._tail: PendingBytes | None = None
        self._finish_after_tail = False

    # -- starting

    def run(self) -> None:
        services = self.services
        scoreboard = services.scoreboard
        if scoreboard is not None:
            scoreboard.enter(self.started, f"{self.request.method} {self.environ['RAW_URI']}")
        try:
            result = services.app(self.environ, self.start_response)
        except Exception:
            self._fail("the application raised")
            return
        finally:
            if scoreboard is not None:
                scoreboard.leave()
        self._iterable = result
        if self.done:  # a write() inside the app failed or the client vanished meanwhile
            self._close_iterable()
            return
        if type(result) is list or type(result) is tuple:
            self._send_all(result)
        elif isinstance(result, FileWrapper) and self._sendfile(result):
            pass
        else:
            try:
                self._iterator = iter(result)
            except Exception:
                self._fail("the application's response is not iterable")
                return
            self._register()
            self._produce()

    def _register(self) -> None:
        self.sink.register_producer(self, True)
        self._registered = True

    # -- writing (reactor thread)

    def _begin(self, known_length: int | None) -> ResponseFramer:
        head = self.start_response.head
        if head is None:
            raise AppResponseError("the application sent a body before calling start_response")
        self.start_response.sent = True
        self.status = head.code
        request = self.request
        # Positional: keywords to a compiled class cost a dict and a parse, 4k instructions.
        framer = self.framer = ResponseFramer(
            head,
            request.method,
            request.version,
            request.keep_alive and self.sink.keep_alive_allowed,
            self.services.date_line(),
            known_length,
        )
        return framer

    def _emit(self, data: bytes) -> None:
        """Send one non-empty piece of body, with the head first if it has not gone yet."""
        framer = self.framer
        if self._tail is not None or (
            len(data) > _JOIN_LIMIT and self._registered and self._direct_chunks
        ):
            self._emit_direct(data)
        elif framer is None:
            framer = self._begin(None)
            out = framer.head + framer.body(data)
            if framer.remaining == 0:
                self._answered()
            self.sink.write(out)
        else:
            out = framer.body(data)
            if out:
                if framer.remaining == 0:  # the Content-Length is complete with this piece
                    self._answered()
                self.sink.write(out)
        if self.framer is not None and self.framer.error is not None:
            self._finish()

    def _emit_direct(self, data: bytes) -> None:
        """A large piece goes out from the app's object with ``sendmsg`` when nothing is queued
        ahead of it; what the socket does not take is kept as views (``_tail``) and the
        response pauses until it is sent (``_flush_tail``)."""
        framer = self.framer
        pieces: list[bytes] = []
        if framer is None:
            framer = self._begin(None)
            pieces.append(framer.head)
        pieces += framer.body_parts(data)
        if framer.remaining == 0:
            self._answered()
        if self._tail is not None:
            self._tail.extend(pieces)  # behind what is still waiting
            return
        if self.sink.sendfile_socket() is None:
            self.sink.write_sequence(pieces)
            return
        self._tail = PendingBytes(pieces)
        self._flush_tail()

    def _flush_tail(self) -> bool:
        """Send what the socket takes of ``_tail``; True once it is all gone."""
        tail = self._tail
        assert tail is not None
        try:
            sent = self.sink.send_direct(tail.views())
        except OSError as e:
            self.abort(f"send failed: {e.strerror or e}")
            self.sink.abort_connection()
            return False
        if sent:
            tail.advance(sent)
        if not tail.left:
            self._tail = None
            return True
        self.pauseProducing()
        self.sink.resume_when_writable()
        return False

    def _write(self, data: bytes) -> None:
        """The legacy ``write()`` callable returned by ``start_response``."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.done:
            raise _Aborted("the response is already finished")
        if data:
            self._emit(data)
        elif self.framer is None:
            self.sink.write(self._begin(None).head)

    def _send_all(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        """A list body is already in memory: frame it and send it without copying it."""
        try:
            total = 0
            for chunk in chunks:
                if type(chunk) is not bytes:
                    raise TypeError(f"response items must be bytes, not {type(chunk).__name__}")
                total += len(chunk)
            if self.framer is not None:  # write() already sent the head
                for chunk in chunks:
                    if self.done:
                        return
                    if chunk:
                        self._emit(chunk)
                self._finish()
                return
            framer = self._begin(total)
        except Exception:
            self._fail("the application's response is invalid")
            return
        if total <= _JOIN_LIMIT:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            out = framer.head + framer.body(body) + framer.end()
            self._answered()
            self.sink.write(out)
            if self.done or framer.error is not None:
                self._finish()
            else:  # _finish's common case, without ending the body a second time
                self._end(framer.keep_alive)
            return
        pieces = [framer.head]
        for chunk in chunks:
            pieces.append(framer.body(chunk))
        pieces.append(framer.end())
        self._answered()
        if self.sink.sendfile_socket() is None:
            # TLS or records: the transport takes (and copies) the pieces.
            self.sink.write_sequence(pieces)
            self._finish()
            return
        if self._registered:  # a threaded response registers itself before the app runs
            self._registered = False
            self.sink.unregister_producer()
        _MemoryProducer(self, PendingBytes(pieces)).start()

    def _produce(self) -> None:
        scoreboard = self.services.scoreboard
        if scoreboard is None:
            self._produce_turn()
            return
        scoreboard.enter(
            self.services.clock.seconds(), f"{self.request.method} {self.environ['RAW_URI']}"
        )
        try:
            self._produce_turn()
        finally:
            scoreboard.leave()

    def _produce_turn(self) -> None:
        self._next_turn = None
        iterator = self._iterator
        assert iterator is not None
        for _ in range(_ITEMS_PER_TURN):
            if self._paused or self.done:
                return
            try:
                chunk = next(iterator)
                if type(chunk) is not bytes:
                    raise TypeError(f"response items must be bytes, not {type(chunk).__name__}")
                if chunk:
                    self._emit(chunk)
            except StopIteration:
                self._finish()
                return
            except Exception:
                self._fail("the application's response iterable raised")
                return
        if not self._paused and not self.done:
            self._next_turn = self.services.clock.callLater(0, self._produce)

    # -- IPushProducer

    def pauseProducing(self) -> None:
        if self.done:
            return
        self._paused = True
        if self._stall is None:
            self._stall = self.services.clock.callLater(self.services.write_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self._paused = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.done:
            return
        self._resumed()

    def _resumed(self) -> None:
        if self._tail is not None and not self._flush_tail():
            return
        if self._finish_after_tail:
            self._finish()
            return
        if self._iterator is not None and self._next_turn is None:
            self._produce()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.abort("client disconnected before the response was complete")

    # -- ending

    def _finish(self) -> None:
        if self.done:
            return
        if self._tail is not None:
            # A body cut at its Content-Length while its last bytes wait for the socket: end
            # the response once they are out.
            self._finish_after_tail = True
            return
        framer = self.framer
        try:
            if framer is None:
                framer = self._begin(0)
                self._answered()
                self.sink.write(framer.head)
            end = framer.end()
            self._answered()
            if end:
                self.sink.write(end)
        except AppResponseError:
            self._fail("the application's response is invalid")
            return
        if framer.error is not None:
            log.error(
                "{method} {path}: {error}; closing the connection",
                method=self.request.method,
                path=self.environ.get("PATH_INFO"),
                error=framer.error,
            )
        self._end(framer.keep_alive)

    def _fail(self, why: str, exc_info: Any = None) -> None:
        """The application failed: a 500 if nothing was sent yet, otherwise cut the connection."""
        if self.done:
            return
        info = exc_info or sys.exc_info()
        from twisted.python.failure import Failure

        failure = Failure(info[1], info[0], info[2])
        log.failure(
            "{method} {path}: {why}",
            failure,
            method=self.request.method,
            path=self.environ.get("PATH_INFO"),
            why=why,
        )
        if self.framer is None:
            self.status = 500
            keep_alive = self.request.keep_alive and self.sink.keep_alive_allowed
            body = b"Internal Server Error\n"
            self._direct_bytes = len(body)
            self._answered()
            self.sink.write(
                simple_response(
                    500, "Internal Server Error", self.services.date(), body, close=not keep_alive
                )
            )
            self._end(keep_alive)
        else:
            self.sink.abort_connection()
            self._end(False)

    def abort(self, why: str) -> None:
        """Abandon the response: the client left or stopped reading."""
        if self.done:
            return
        fields = {"method": self.request.method, "path": self.environ.get("PATH_INFO"), "why": why}
        flood = self.services.flood
        if flood is None:
            log.info("{method} {path}: {why}", **fields)
        else:  # a client can make this happen at will
            flood.emit("aborted responses", log, LogLevel.info, "{method} {path}: {why}", **fields)
        self._end(False, connection_gone=True)

    def _stalled(self) -> None:
        self._stall = None
        if self.done:
            return
        timeout = self.services.write_timeout
        self.abort(f"client read nothing for {timeout:g}s; response abandoned")
        self.sink.abort_connection()

    def _answered(self) -> None:
        """The bytes about to be written complete the response: count it now, before they go.

        Counted in the other order, a worker killed between the write and the count would have
        answered a request its counters never see (a prefork worker's counters are in shared
        memory for that reason: see :mod:`catalyzer.ops.metrics`). A kill after the count but
        before the write counts one response its client did not get in full, the lesser error."""
        if self.counted:
            return
        metrics = self.services.metrics
        if metrics is None:
            return
        self.counted = True
        framer = self.framer
        sent = framer.sent if framer is not None else self._direct_bytes
        metrics.observe(self.status, self.services.clock.seconds() - self.started, sent, app=True)

    def _end(self, keep_alive: bool, connection_gone: bool = False) -> None:
        self.done = True
        if self._tail is not None:
            self._tail.clear()
            self._tail = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._next_turn is not None:
            self._next_turn.cancel()
            self._next_turn = None
        if self._registered and not connection_gone:
            self.sink.unregister_producer()
        self._registered = False
        # Break the response -> start_response -> bound _write -> response cycle: left to the
        # garbage collector, it and all it holds (request, environ, framer: ~11 objects a
        # request) filled generation 0 and made the collector about 7% of a hello request.
        self.start_response.write = _write_after_end
        self._release_app()
        framer = self.framer
        sent = framer.sent if framer is not None else self._direct_bytes  # bytes_sent, inlined
        # tuple.__new__ with every field: the NamedTuple's own __new__ is a Python function,
        # four times the cost, and this runs once per request.
        self.on_done(
            _new_outcome(
                ResponseOutcome, (self.status, sent, keep_alive, self.started, self.counted)
            )
        )

    def _release_app(self) -> None:
        """The response is over: let go of the app's iterable."""
        self._close_iterable()

    def _close_iterable(self) -> None:
        if self._closed_iterable:
            return
        self._closed_iterable = True
        close = getattr(self._iterable, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                from twisted.python.failure import Failure

                log.failure("the response iterable's close() raised", Failure())

    @property
    def bytes_sent(self) -> int:
        return self.framer.sent if self.framer is not None else self._direct_bytes

    # -- sendfile

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        sock = self.sink.sendfile_socket()
        if sock is None:
            return False
        span = wrapper.sendfile_span()
        if span is None:
            return False
        fd, offset, length = span
        try:
            framer = self._begin(length)
        except AppResponseError:
            self._fail("the application's response is invalid")
            return True
        remaining = framer.remaining
        if remaining is None:  # HEAD, 304: no body at all
            self.sink.write_sequence([framer.head])
            self._finish()
            return True
        _SendfileProducer(self, sock, fd, offset, min(length, remaining)).start()
        return True


class ThreadedWSGIResponse(WSGIResponse):
    """``--threads``: the app and its iterable run in a pool thread; the bytes go out in the reactor.

    Who owns what:

    - the pool thread alone calls the app, advances the iterable and closes it
      (``_thread_main``, ``_thread_body``, ``_post``), and sets ``_iterable``;
    - the reactor thread alone touches the sink, the framer, ``status``, ``done``, the timers and
      the registration (``_deliver``, ``_deliver_all``, ``_finish``, ``_fail``, ``_end``), reached
      from the pool thread only through ``call_from_thread``;
    - ``_outstanding`` and ``_aborted`` are shared and only touched holding ``_cond``; ``_paused``
      is written by the reactor and read by the thread before each hand-off, under ``_cond`` or
      followed by a ``notify_all`` on it, so a waiting thread always sees the change.

    ``_cond`` is the process's one ``services.handoff``, not a condition per response: a
    ``Condition`` is eight objects for the garbage collector, made for every request, while a
    thread waits on it only when its client is slow. A ``notify_all`` then also wakes the (at
    most ``--threads``) threads waiting for other responses; each re-checks its own predicate.
    """

    # The pool thread hands pieces over while earlier ones are still going out: they go
    # through the transport, in order, under the byte count of _post.
    _direct_chunks = False

    def __init__(
        self,
        services: ResponseServices,
        sink: ResponseSink,
        request: Request,
        environ: Environ,
        on_done: OnDone,
    ) -> None:
        super().__init__(services, sink, request, environ, on_done)
        assert services.threadpool is not None and services.call_from_thread is not None
        self._threadpool = services.threadpool
        self._call = services.call_from_thread
        self._cond = services.handoff
        self._outstanding = 0
        self._aborted = False
        # Set (reactor thread) by the last call the pool thread posts: it then waits on nothing.
        self._thread_over = False

    def run(self) -> None:
        # Registered as a producer at the first streamed piece (_deliver), not here: a list
        # body, the common case, arrives whole and needs no back-pressure.
        self._threadpool.callInThread(self._thread_main)

    def _write(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        self._post(data)

    def _resumed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release_app(self) -> None:
        if self._thread_over:  # the usual end: nobody to wake, the thread closed the iterable
            return
        # The iterable belongs to the pool thread, which closes it once it sees _aborted.
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    # -- the pool thread

    def _thread_main(self) -> None:
        scoreboard = self.services.scoreboard
        if scoreboard is None:
            self._thread_body()
            return
        # The scoreboard holds the most recently started request of this process.
        scoreboard.enter(self.started, f"{self.request.method} {self.environ['RAW_URI']}")
        try:
            self._thread_body()
        finally:
            scoreboard.leave_if(self.started)

    def _thread_body(self) -> None:
        call = self._call
        try:
            try:
                result = self.services.app(self.environ, self.start_response)
                self._iterable = result
                if type(result) is list or type(result) is tuple:
                    call(self._deliver_all, result)
                    return
                for chunk in result:
                    if type(chunk) is not bytes:
                        raise TypeError(f"response items must be bytes, not {type(chunk).__name__}")
                    if chunk:
                        self._post(chunk)
                    elif self._aborted:
                        raise _Aborted()
            except _Aborted:
                return
            except Exception:
                info = sys.exc_info()
                call(self._fail, "the application raised", info)
                return
            finally:
                self._close_iterable()
            call(self._finish_from_thread)
        except BaseException:  # never let a worker thread die silently
            info = sys.exc_info()
            call(self._fail, "the response thread failed", info)

    def _post(self, data: bytes) -> None:
        """Hand a piece of body to the reactor, waiting while the client is not keeping up."""
        cond = self._cond
        with cond:
            while (self._paused or self._outstanding > _THREAD_HIGH_WATER) and not self._aborted:
                cond.wait()
            if self._aborted:
                raise _Aborted()
            self._outstanding += len(data)
        self._call(self._deliver, data)

    # -- the reactor thread

    def _deliver(self, data: bytes) -> None:
        cond = self._cond
        with cond:
            self._outstanding -= len(data)
            cond.notify_all()
        if self.done:
            return
        if not self._registered:
            self._register()
        try:
            if data:
                self._emit(data)
            elif self.framer is None:
                self.sink.write(self._begin(None).head)
        except AppResponseError:
            self._fail("the application's response is invalid")

    def _deliver_all(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        self._thread_over = True
        if not self.done:
            self._send_all(chunks)

    def _finish_from_thread(self) -> None:
        self._thread_over = True
        if not self.done:
            self._finish()


def response_class(services: ResponseServices) -> type[WSGIResponse]:
    """The response kind ``services`` call for: threaded when they carry a thread pool."""
    return WSGIResponse if services.threadpool is None else ThreadedWSGIResponse


@implementer(interfaces.IPullProducer)
class _SendfileProducer:
    """Streams a file region with ``os.sendfile``. As a pull producer it is resumed only when the
    transport's own buffer is empty, so the kernel's bytes never overtake the head we wrote."""

    def __init__(
        self, response: WSGIResponse, sock: socket.socket, fd: int, offset: int, count: int
    ) -> None:
        self.response = response
        self.sock = sock
        self.fd = fd
        self.offset = offset
        self.left = count
        self.head_sent = False

    def start(self) -> None:
        self.response.sink.register_producer(self, False)

    def resumeProducing(self) -> None:
        response = self.response
        if response.done:
            return
        response.resumeProducing()  # progress: disarm the stall timer
        if not self.head_sent:
            self.head_sent = True
            framer = response.framer
            assert framer is not None
            # Queued, not sent eagerly: the transport resumes us once it has flushed the head.
            response.sink.write_sequence([framer.head])
            return
        if self.left > 0:
            try:
                sent = os.sendfile(
                    self.sock.fileno(), self.fd, self.offset, min(self.left, _SENDFILE_BLOCK)
                )
            except BlockingIOError:
                sent = None
            except OSError as e:
                response.abort(f"sendfile failed: {e}")
                response.sink.abort_connection()
                return
            if sent == 0:  # the file shrank under us
                self.left = 0
            elif sent is not None:
                self.offset += sent
                self.left -= sent
                assert response.framer is not None
                response.framer.count_sent(sent)
        if self.left > 0:
            # Ask to be resumed when the socket can take more: doWrite finds the buffer empty
            # and resumes its pull producer. Until then the stall timer runs.
            response.pauseProducing()
            response.sink.start_writing()
            return
        response.sink.unregister_producer()
        response._finish()

    def stopProducing(self) -> None:
        self.response.abort("client disconnected during sendfile")


@implementer(interfaces.IPullProducer)
class _MemoryProducer:
    """Sends a response already in memory (head, body pieces) straight from the application's
    objects with ``sendmsg``, whenever the socket can take more: nothing is copied, nothing is
    queued in the transport. As a pull producer it is resumed when the transport's own buffer is
    empty (and once when registered: then ``send_direct`` says whether anything is queued)."""

    def __init__(self, response: WSGIResponse, pending: PendingBytes) -> None:
        self.response = response
        self.pending = pending

    def start(self) -> None:
        self.response.sink.register_producer(self, False)

    def resumeProducing(self) -> None:
        response = self.response
        if response.done:
            self.pending.clear()
            return
        response.resumeProducing()  # progress: disarm the stall timer
        pending = self.pending
        try:
            sent = response.sink.send_direct(pending.views())
        except OSError as e:
            pending.clear()
            response.abort(f"send failed: {e.strerror or e}")
            response.sink.abort_connection()
            return
        if sent:
            pending.advance(sent)
        if pending.left:
            # Resumed once the socket can take more (doWrite finds the buffer empty and resumes
            # its pull producer); until then the stall timer runs.
            response.pauseProducing()
            response.sink.start_writing()
            return
        response.sink.unregister_producer()
        response._finish()

    def stopProducing(self) -> None:
        self.pending.clear()
        self.response.abort("client disconnected before the response was complete")
