"""A handler session driven message by message: a fake ZeroMQ connection, a Clock, and the app
run synchronously (the pool thread's calls made in line)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from catalyzer.split.frames import Kind, Message, encode
from catalyzer.split.handler import CONNECTIONS_KEPT, START_DELAY, HandlerSession
from catalyzer.wsgi.sink import ResponseServices
from tests.split.fakes import FakeConnection


class InlinePool:
    def callInThread(self, f: Callable[..., object], /, *args: Any) -> None:
        f(*args)


class ManualPool:
    """A pool whose threads run only when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callInThread(self, f: Callable[..., object], /, *args: Any) -> None:
        self.calls.append((f, args))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class Front:
    """The front's side of the conversation (``pool``: None runs the app in the reactor, as
    ``--threads 0`` does)."""

    def __init__(
        self,
        app: Any,
        slots: int = 2,
        pool: Any = "inline",
        prefetch: int = 0,
        prefetch_stall: float = 0.05,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.conn = FakeConnection()
        services = ResponseServices(
            app=app,
            clock=self.reactor,
            write_timeout=30.0,
            date=lambda: "Thu, 01 Jan 1970 00:00:00 GMT",
            date_line=lambda: b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
            threadpool=InlinePool() if pool == "inline" else pool,
            call_from_thread=None if pool is None else lambda f, *a: f(*a),
        )
        self.idle = 0
        self.session = HandlerSession(
            self.conn,  # type: ignore[arg-type]
            self.reactor,
            services,
            slots=slots,
            prefetch=prefetch,
            prefetch_stall=prefetch_stall,
            hello=((b"host", b"h"), (b"pid", b"1")),
            heartbeat=1.0,
            liveness=5.0,
            on_idle=self._idle,
        )
        self.seq = 0
        self.session.start()

    def _idle(self) -> None:
        self.idle += 1

    def say(self, kind: Kind, rid: int = 0, meta: Any = (), body: Any = ()) -> None:
        self.conn.on_message(encode(Message(kind, self.seq, rid, tuple(meta), tuple(body))))
        self.seq += 1

    def welcome(self) -> None:
        self.seq = 0
        self.say(Kind.WELCOME)
        self.conn.take()

    def req(
        self,
        rid: int,
        method: str = "GET",
        target: bytes = b"/p?q=1",
        body: bytes = b"",
        window: int = 1 << 20,
        extra: Any = (),
    ) -> None:
        meta = [
            (b"m", method.encode()),
            (b"t", target),
            (b"v", b"1.1"),
            (b"ka", b"1"),
            (b"sn", b""),
            (b"e", b"REMOTE_ADDR=10.1.2.3"),
            (b"e", b"REMOTE_PORT=5555"),
            (b"e", b"SERVER_NAME=front"),
            (b"e", b"SERVER_PORT=8080"),
            (b"e", b"wsgi.url_scheme=http"),
            (b"e", b"HTTP_HOST=example"),
            (b"pk", b""),
            (b"h", b"host:example"),
            (b"h", b"x-forwarded-for:6.6.6.6"),
            (b"h", b"x-thing:yes"),
            (b"w", b"%d" % window),
            *extra,
        ]
        self.say(Kind.REQ, rid, meta, (body,) if body else ())


class Recorder:
    def __init__(self, body: list[bytes] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.body = body or [b"hello"]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls.append({**environ, "body": environ["wsgi.input"].read()})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self.body


def test_hello_is_repeated_until_welcome_then_heartbeats() -> None:
    front = Front(Recorder())
    (hello,) = front.conn.take()
    assert hello.kind is Kind.HELLO and hello.seq == 0
    assert hello.get_int(b"slots") == 2
    front.reactor.advance(1.0)
    assert [m.kind for m in front.conn.take()] == [Kind.HELLO]
    front.welcome()
    front.reactor.advance(1.0)
    (hb,) = front.conn.take()
    assert hb.kind is Kind.HB and hb.seq == 1  # numbering restarted with the HELLO


def test_get_runs_at_once_with_the_environ_of_the_http_face() -> None:
    app = Recorder()
    front = Front(app)
    front.welcome()
    front.req(7, body=b"")
    # Complete in one write: one REPLY, which implies START, HEAD and END.
    (reply,) = front.conn.take()
    assert (reply.kind, reply.rid, reply.get_int(b"st")) == (Kind.REPLY, 7, 200)
    assert reply.body[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.body[-1].endswith(b"hello")
    assert reply.get(b"ka") == b"1"
    assert reply.get_int(b"bs") == len(b"hello")  # the body's size, for the front's access log
    front.reactor.advance(START_DELAY)
    assert front.conn.take() == []  # no START owed for a request already answered
    (environ,) = app.calls
    assert environ["REMOTE_ADDR"] == "10.1.2.3"
    assert environ["PATH_INFO"] == "/p" and environ["QUERY_STRING"] == "q=1"
    assert environ["HTTP_X_THING"] == "yes"
    # The front did not believe X-Forwarded-For (pk empty): the app does not see it.
    assert "HTTP_X_FORWARDED_FOR" not in environ
    assert environ["wsgi.multithread"] is True
    assert "wsgi.file_wrapper" in environ


def test_post_waits_for_go() -> None:
    app = Recorder()
    front = Front(app)
    front.welcome()
    front.req(3, "POST", body=b"payload", extra=((b"h", b"content-length:7"),))
    assert [m.kind for m in front.conn.take()] == [Kind.START]
    assert app.calls == []
    front.say(Kind.GO, 3)
    assert [m.kind for m in front.conn.take()] == [Kind.REPLY]
    assert app.calls[0]["body"] == b"payload"
    assert app.calls[0]["CONTENT_LENGTH"] == "7"


def test_cancel_before_go_never_runs_the_app() -> None:
    app = Recorder()
    front = Front(app)
    front.welcome()
    front.req(3, "POST", body=b"x")
    front.conn.take()
    front.say(Kind.CANCEL, 3)
    (end,) = front.conn.take()
    assert (end.kind, end.get(b"r"), end.get(b"ran")) == (Kind.END, b"cancelled", None)
    front.say(Kind.GO, 3)
    assert app.calls == [] and front.conn.take() == []


def test_response_bytes_wait_for_the_window() -> None:
    front = Front(Recorder([b"a" * 100]))
    front.welcome()
    front.req(1, window=40)
    (head,) = front.conn.take()
    assert (head.kind, head.body_length) == (Kind.HEAD, 40)
    front.say(Kind.WIN, 1, ((b"n", b"30"),))
    (first,) = front.conn.take()
    assert (first.kind, first.body_length) == (Kind.DATA, 30)
    front.say(Kind.WIN, 1, ((b"n", b"1000"),))
    rest, end = front.conn.take()
    assert rest.kind is Kind.DATA and end.kind is Kind.END
    total = head.body[0] + front_bytes(first) + front_bytes(rest)
    assert b"Content-Length: 100\r\n" in total
    assert total.endswith(b"\r\n\r\n" + b"a" * 100)


def front_bytes(message: Message) -> bytes:
    return b"".join(message.body)


def test_app_error_is_a_500_from_the_handler() -> None:
    def boom(environ: Any, start_response: Any) -> list[bytes]:
        raise RuntimeError("on purpose")

    front = Front(boom)
    front.welcome()
    front.req(1)
    head, end = front.conn.take()
    assert head.get_int(b"st") == 500
    assert end.get_int(b"st") == 500


def test_reset_and_sequence_gap_and_silence_start_a_new_session() -> None:
    front = Front(Recorder())
    front.welcome()
    front.say(Kind.RESET)
    (hello,) = front.conn.take()
    assert (hello.kind, hello.seq) == (Kind.HELLO, 0)
    front.welcome()
    front.seq += 1  # a message from the front was lost
    front.say(Kind.HB)
    assert [m.kind for m in front.conn.take()] == [Kind.HELLO]
    front.welcome()
    for _ in range(5):
        front.reactor.advance(1.0)
    assert Kind.HELLO in [m.kind for m in front.conn.take()]


def test_drain_returns_unstarted_work_finishes_the_rest_then_bye() -> None:
    front = Front(Recorder([b"a" * 100]))
    front.welcome()
    front.req(1, window=10)  # started, waiting for window
    front.req(2, "POST")  # waiting for GO
    front.conn.take()
    front.session.drain()
    kinds = [(m.kind, m.rid) for m in front.conn.take()]
    assert kinds == [(Kind.DRAIN, 0), (Kind.RETURN, 2)]
    assert front.idle == 0
    front.req(3)  # crossed with the DRAIN: given back
    assert [(m.kind, m.rid) for m in front.conn.take()] == [(Kind.RETURN, 3)]
    front.say(Kind.WIN, 1, ((b"n", b"1000"),))
    assert [m.kind for m in front.conn.take()] == [Kind.DATA, Kind.END, Kind.BYE]
    assert front.idle == 1


def test_malformed_request_metadata_starts_a_new_session() -> None:
    front = Front(Recorder())
    front.welcome()
    front.say(Kind.REQ, 1, ((b"m", b"GET"), (b"h", b"no-colon")))
    assert [m.kind for m in front.conn.take()] == [Kind.HELLO]


def test_streamed_body_is_asked_for_piece_by_piece_from_another_thread() -> None:
    import threading

    from catalyzer.split.handler import BodyCancelled, StreamedBody

    asked: list[tuple[int, int]] = []
    body = bytes(range(256)) * 2000
    box: list[StreamedBody] = []

    def ask(offset: int, n: int) -> None:
        asked.append((offset, n))
        box[0].feed(offset, body[offset : offset + n])

    stream = StreamedBody(len(body), ask, lambda f, *a: f(*a))
    box.append(stream)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(io.BufferedReader(stream).read()))
    reader.start()
    reader.join(timeout=30)
    assert got == [body]
    assert asked[0] == (0, min(len(body), 256 * 1024))
    failing = StreamedBody(
        10, lambda o, n: failing.fail("cancelled by the front"), lambda f, *a: f(*a)
    )
    try:
        failing.read(5)
    except BodyCancelled as e:
        assert "cancelled" in str(e)
    else:
        raise AssertionError("a cancelled body must not read as empty")


def test_resets_that_arrive_while_joining_again_are_ignored() -> None:
    front = Front(Recorder())
    front.welcome()
    front.say(Kind.RESET)  # answers a late message: join again
    assert [m.kind for m in front.conn.take()] == [Kind.HELLO]
    front.say(Kind.RESET)  # sent before our HELLO reached the front: no second HELLO
    front.say(Kind.RESET)
    assert front.conn.take() == []
    front.welcome()
    assert front.session.welcomed


def test_start_goes_only_for_a_get_not_answered_within_the_start_delay() -> None:
    pool = ManualPool()
    front = Front(Recorder(), pool=pool)
    front.welcome()
    front.req(4)
    front.req(5)
    assert front.conn.take() == []
    front.reactor.advance(START_DELAY)
    assert [(m.kind, m.rid) for m in front.conn.take()] == [(Kind.START, 4), (Kind.START, 5)]
    pool.run()
    assert [(m.kind, m.rid) for m in front.conn.take()] == [(Kind.REPLY, 4), (Kind.REPLY, 5)]
    front.reactor.advance(START_DELAY)
    assert front.conn.take() == []


def test_threads_0_runs_the_app_in_the_reactor() -> None:
    app = Recorder()
    front = Front(app, pool=None)
    front.welcome()
    front.req(2)
    assert [m.kind for m in front.conn.take()] == [Kind.REPLY]
    assert app.calls[0]["wsgi.multithread"] is False


def test_threads_0_spools_a_large_body_before_the_app_runs() -> None:
    app = Recorder()
    front = Front(app, pool=None)
    front.welcome()
    body = bytes(range(256)) * 1200  # 300 KiB: more than one piece
    first = body[:1000]
    front.req(
        6,
        "POST",
        body=first,
        extra=((b"h", b"content-length:%d" % len(body)), (b"bl", b"%d" % len(body))),
    )
    offset = len(first)
    kinds = []
    for _ in range(10):
        out = front.conn.take()
        asks = [m for m in out if m.kind is Kind.BODYREQ]
        kinds += [m.kind for m in out if m.kind is not Kind.BODYREQ]
        if not asks:
            break
        (ask,) = asks
        assert ask.get_int(b"o") == offset
        n = ask.get_int(b"n")
        assert app.calls == []  # nothing runs before the whole body is in
        front.say(Kind.BODY, 6, ((b"o", b"%d" % offset),), (body[offset : offset + n],))
        offset += n
        if offset == len(body):
            front.say(Kind.GO, 6)
    kinds += [m.kind for m in front.conn.take()]
    assert kinds == [Kind.START, Kind.REPLY]
    assert app.calls[0]["body"] == body


def test_headers_and_environ_entries_one_per_line_in_one_pair() -> None:
    app = Recorder()
    front = Front(app)
    front.welcome()
    meta = (
        (b"m", b"GET"),
        (b"t", b"/"),
        (b"e", b"REMOTE_ADDR=10.9.9.9\nSERVER_NAME=front\nSERVER_PORT=80"),
        (b"pk", b""),
        (b"h", b"host:example\nx-a:1\nx-b:2"),
        (b"w", b"1000"),
    )
    front.say(Kind.REQ, 1, meta)
    assert [m.kind for m in front.conn.take()] == [Kind.REPLY]
    (environ,) = app.calls
    assert (environ["REMOTE_ADDR"], environ["HTTP_X_A"], environ["HTTP_X_B"]) == (
        "10.9.9.9",
        "1",
        "2",
    )
    front.say(Kind.REQ, 2, ((b"m", b"GET"), (b"h", b"host:x\nno colon"), (b"w", b"9")))
    assert [m.kind for m in front.conn.take()] == [Kind.HELLO]  # malformed: a new session


def test_an_iterables_last_piece_is_not_held_while_the_app_goes_on() -> None:
    box: list[Front] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "5")])
        yield b"hello"  # the whole body: held for one REPLY...
        # ...but the app keeps the iteration going: the bytes go without waiting for it.
        box[0].reactor.advance(START_DELAY)
        assert [m.kind for m in box[0].conn.take()] == [Kind.START, Kind.HEAD]

    front = Front(app)
    box.append(front)
    front.welcome()
    front.req(3)
    (end,) = front.conn.take()
    assert (end.kind, end.get_int(b"st"), end.get(b"ab")) == (Kind.END, 200, None)


def test_an_iterable_that_ends_at_once_still_goes_as_one_reply() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "5")])
        yield b"hello"

    front = Front(app)
    front.welcome()
    front.req(3)
    assert [m.kind for m in front.conn.take()] == [Kind.REPLY]
    front.reactor.advance(START_DELAY)
    assert front.conn.take() == []


def sent(front: Front) -> list[tuple[Kind, int]]:
    return [(m.kind, m.rid) for m in front.conn.take()]


def test_prefetched_requests_wait_for_a_slot_and_start_as_one_finishes() -> None:
    pool = ManualPool()
    app = Recorder()
    front = Front(app, slots=1, pool=pool, prefetch=2)
    (hello,) = front.conn.take()
    assert (hello.get_int(b"slots"), hello.get_int(b"pf")) == (1, 2)
    front.welcome()
    for rid in (1, 2, 3):
        front.req(rid)
    assert len(pool.calls) == 1  # one slot
    front.reactor.advance(START_DELAY)
    assert sent(front) == [(Kind.START, 1)]  # a waiting request owes no START: it has not begun
    for rid in (1, 2, 3):
        pool.run()
        assert sent(front) == [(Kind.REPLY, rid)]
    assert len(app.calls) == 3 and pool.calls == []
    front.reactor.advance(0.5)  # nothing stalls once all is done (no heartbeat yet either)
    assert sent(front) == []


def one_slot_two_prefetched(stall: float, *rids: int) -> tuple[Front, ManualPool, Recorder]:
    """A joined session with one slot and a prefetch of 2, sent a GET for each of ``rids``."""
    pool = ManualPool()
    app = Recorder()
    front = Front(app, slots=1, pool=pool, prefetch=2, prefetch_stall=stall)
    front.welcome()
    for rid in rids:
        front.req(rid)
    return front, pool, app


def test_a_stalled_handler_gives_back_what_waits_and_its_prefetch_until_one_finishes() -> None:
    front, pool, app = one_slot_two_prefetched(0.05, 1, 2)
    front.reactor.advance(START_DELAY)
    assert sent(front) == [(Kind.START, 1)]
    front.reactor.advance(0.05 - START_DELAY)  # the slot has not finished for prefetch-stall
    credit, returned = front.conn.take()  # the credit first: see the next test
    assert (credit.kind, credit.get_int(b"n")) == (Kind.CREDIT, -2)
    assert (returned.kind, returned.rid, returned.get(b"r")) == (Kind.RETURN, 2, b"stalled")
    assert front.session.status()["stalls"] == 1
    front.req(3)  # sent before the front heard of the stall: given back at once
    front.reactor.advance(0)
    assert sent(front) == [(Kind.RETURN, 3)]
    pool.run()
    reply, credit = front.conn.take()
    assert (reply.kind, reply.rid) == (Kind.REPLY, 1)
    assert (credit.kind, credit.get_int(b"n")) == (Kind.CREDIT, 2)  # flowing again
    assert len(app.calls) == 1 and pool.calls == []


def test_a_slot_that_keeps_finishing_is_no_stall() -> None:
    front, pool, _ = one_slot_two_prefetched(0.05, 1, 2)
    front.reactor.advance(0.04)
    pool.run()  # 1 finishes and 2 starts within prefetch-stall
    front.req(3)
    front.reactor.advance(0.04)  # 0.08 since 1 began, 0.04 since the last progress
    assert (Kind.RETURN, 2) not in sent(front)
    pool.run()
    pool.run()
    assert [k for k, _ in sent(front)] == [Kind.REPLY, Kind.REPLY]


def test_waiting_requests_past_their_start_deadline_or_cancelled_never_run() -> None:
    front, pool, app = one_slot_two_prefetched(10.0, 1)
    front.req(2, extra=((b"dl", b"0.1"),))  # the front's start-timeout: 0.1 s
    front.req(3)
    front.say(Kind.CANCEL, 3)
    front.reactor.advance(0.2)
    front.conn.take()
    pool.run()
    out = front.conn.take()
    assert [(m.kind, m.rid) for m in out] == [(Kind.REPLY, 1), (Kind.END, 2)]
    assert out[1].get(b"r") == b"cancelled"
    assert len(app.calls) == 1 and pool.calls == []


def test_requests_of_one_connection_share_no_environ_and_the_kept_bases_are_bounded() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(dict(environ))
        del environ["REMOTE_ADDR"]  # an app may change its environ: the next must not see it
        environ["SCRIPT_NAME"] = "/mine"
        start_response("200 OK", [])
        return [b""]

    front = Front(app)
    front.welcome()
    front.req(1)
    front.req(2)
    front.req(3, extra=((b"e", b"HTTPS=on"),))
    assert [e["REMOTE_ADDR"] for e in seen] == ["10.1.2.3"] * 3
    assert [e.get("SCRIPT_NAME", "") for e in seen] == ["", "", ""]
    assert ["HTTPS" in e for e in seen] == [False, False, True]
    assert "HTTP_X_FORWARDED_FOR" not in seen[0]  # the front did not keep it (pk)
    for n in range(CONNECTIONS_KEPT + 1):
        front.req(10 + n, extra=((b"e", b"REMOTE_PORT=%d" % n),))
    assert len(front.session._connections) <= CONNECTIONS_KEPT
    assert seen[-1]["REMOTE_PORT"] == str(CONNECTIONS_KEPT)
