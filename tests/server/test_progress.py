"""Upload progress: the registry, and the engine answering polls while an upload is read."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred

from catalyzer.http.progress import ProgressRegistry, ProgressTracker, upload_id_from
from catalyzer.server.channel import ServerState
from catalyzer.testing import InMemoryConnection, InMemoryServer
from tests.helpers import Recorder, split_response, statuses


def poll(server: InMemoryServer, upload_id: str, header: bool = False) -> dict[str, object]:
    if header:
        raw = b"GET /progress HTTP/1.1\r\nHost: x\r\nX-Progress-ID: %s\r\n\r\n" % upload_id.encode()
    else:
        raw = b"GET /progress?X-Progress-ID=%s HTTP/1.1\r\nHost: x\r\n\r\n" % upload_id.encode()
    status, headers, body = split_response(server.request(raw))
    assert status == 200 and headers["cache-control"] == "no-store"
    assert headers["content-type"] == "application/json"
    result: dict[str, object] = json.loads(body)
    return result


def upload(server: InMemoryServer, upload_id: str, size: int) -> InMemoryConnection:
    conn = server.connect()
    conn.send(
        b"POST /up?X-Progress-ID=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        % (upload_id.encode(), size)
    )
    return conn


def test_poll_follows_an_upload_to_done_without_calling_the_app() -> None:
    app = Recorder()
    server = InMemoryServer(app, progress_path="/progress")
    assert poll(server, "u1") == {"state": "starting", "received": 0, "size": None}
    conn = upload(server, "u1", 1000)
    assert poll(server, "u1") == {"state": "uploading", "received": 0, "size": 1000}
    conn.send(b"x" * 400)
    assert poll(server, "u1", header=True) == {"state": "uploading", "received": 400, "size": 1000}
    conn.send(b"x" * 600)
    assert poll(server, "u1") == {"state": "done", "received": 1000, "size": 1000}
    assert [c["PATH_INFO"] for c in app.calls] == ["/up"]  # polls never reach the app
    assert statuses(conn.output()) == [200]


def test_chunked_upload_has_unknown_size() -> None:
    server = InMemoryServer(Recorder(), progress_path="/progress")
    conn = server.connect()
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: x\r\nX-Progress-ID: c1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    assert poll(server, "c1") == {"state": "uploading", "received": 5, "size": None}


def test_failures_are_reported() -> None:
    server = InMemoryServer(
        Recorder(), progress_path="/progress", max_body=100, body_timeout=5, body_min_rate=100
    )
    big = upload(server, "big", 101)
    assert statuses(big.output()) == [413]
    assert poll(server, "big") == {"state": "error", "received": 0, "size": 101, "status": 413}
    gone = upload(server, "gone", 50)
    gone.send(b"abc")
    gone.lose()
    assert poll(server, "gone") == {"state": "error", "received": 3, "size": 50, "status": None}
    slow = upload(server, "slow", 99)
    server.clock.advance(5)
    assert statuses(slow.output()) == [408]
    assert poll(server, "slow")["status"] == 408


def test_poll_without_id_and_head() -> None:
    server = InMemoryServer(Recorder(), progress_path="/progress")
    _, _, body = split_response(server.request(b"GET /progress HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert json.loads(body)["status"] == 400
    raw = server.request(b"HEAD /progress?X-Progress-ID=a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n") and b"Content-Length: " in raw


def test_entries_expire_and_are_bounded() -> None:
    registry = ProgressRegistry(ttl=60, limit=3)
    registry.started("a", 10, now=0)
    registry.done("a", now=1)
    registry.started("b", 10, now=2)
    assert registry.get("a", now=60.9)["state"] == "done"
    assert registry.get("a", now=61)["state"] == "starting"  # forgotten
    for name in ("c", "d", "e"):
        registry.started(name, 1, now=70)
    assert len(registry.entries) == 3
    registry.done("c", now=71)
    registry.started("f", 1, now=72)  # the finished one goes first
    assert "c" not in registry.entries and "b" not in registry.entries


def test_tracker_shares_changes_with_the_master() -> None:
    class Clock:
        def seconds(self) -> float:
            return 5.0

    tracker = ProgressTracker(ProgressRegistry(), Clock(), share=True)

    class R:
        upload_id = "mine"
        content_length = 10

    tracker.started(R())
    tracker.progress(R(), 4)
    assert tracker.take_outbox() == {"mine": {"state": "uploading", "received": 4, "size": 10}}
    assert tracker.take_outbox() == {}


def _answered_elsewhere() -> tuple[InMemoryServer, list[Deferred[dict[str, object]]]]:
    """A server whose polls are answered by another process (a prefork master): the answers
    it asked for, held until the test fires them."""
    server = InMemoryServer(Recorder(), progress_path="/progress")
    pending: list[Deferred[dict[str, object]]] = []

    def ask(upload_id: str) -> Deferred[dict[str, object]]:
        pending.append(Deferred())
        return pending[-1]

    server.state = ServerState(Recorder(), server.config, server.clock, progress_source=ask)
    return server, pending


def test_polls_can_be_answered_elsewhere_in_order() -> None:
    server, pending = _answered_elsewhere()
    conn = server.connect()
    conn.send(
        b"GET /progress?X-Progress-ID=z HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert conn.output() == b""  # the pipelined request waits its turn
    conn.send(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")  # arrives while still waiting
    assert conn.output() == b""
    pending[0].callback({"state": "uploading", "received": 7, "size": 9})
    out = conn.output()
    assert statuses(out) == [200, 200, 200]
    assert out.index(b'"received": 7') < out.index(b"/after") < out.index(b"/later")


def test_a_poll_waiting_for_its_entry_is_not_closed_as_idle() -> None:
    server, pending = _answered_elsewhere()
    conn = server.connect()
    conn.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")  # arms the keep-alive wait
    assert statuses(conn.output()) == [200]
    conn.send(b"GET /progress?X-Progress-ID=z HTTP/1.1\r\nHost: x\r\n\r\n")
    server.clock.advance(server.config.keepalive_timeout + 1)
    assert not conn.closed  # waiting for the master's answer is not idle
    pending[0].callback({"state": "uploading", "received": 7, "size": 9})
    out = conn.output()
    assert statuses(out) == [200, 200] and b'"received": 7' in out  # output is cumulative
    assert not conn.closed


def test_upload_id_sources() -> None:
    assert upload_id_from(b"/u?a=1&X-Progress-ID=q%20x", []) == "q x"
    assert upload_id_from(b"/u", [(b"x-progress-id", b"h1")]) == "h1"
    assert upload_id_from(b"/u?X-Progress-ID=", []) is None
