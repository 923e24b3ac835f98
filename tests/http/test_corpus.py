"""The raw-request corpus in ``corpus/``, fed to a bare RequestReader and to a full connection.

Each ``NAME.http`` holds the exact bytes a client sends; ``NAME.expect`` beside it is JSON:

common keys
    ``note``: what the case is about. ``settings``: InMemoryServer keyword arguments (a bare reader
    gets the matching :class:`Limits`). ``xfail``: ``{"reason": ..., "only": [...]}`` for a known
    server bug, ``only`` listing the affected ``SIDE-MODE`` runs (all six when absent).

``invalid/``
    ``status``: the one response expected, or ``null`` for input cut short (the client then
    closes; nothing may be answered). ``events``: what a bare reader yields, as ``"request"``,
    ``"continue"`` or ``"error:STATUS"`` (default: ``["error:STATUS"]``, or none for ``null``).
    ``second``: overrides of ``status``/``events`` when the second request follows the case.

``valid/``
    ``requests``: one entry per request, in order: ``method``, ``target`` (raw), ``path``
    (PATH_INFO), ``query``, ``body`` (latin-1), optional ``environ`` (keys the app must see with
    these values), ``absent`` (keys it must not see), ``continue`` (a 100 Continue comes first),
    ``app: false`` (answered by the server itself), ``status`` (default 200). ``closes``: the
    connection ends after the last request, so a following one is not read.

Each case runs three ways per side: ``whole`` (one read), ``bytewise`` (one byte per read) and
``second`` (the case, then ``GET /second`` in the same read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from catalyzer.http.reader import Request, RequestReader
from catalyzer.testing import InMemoryConnection, InMemoryServer
from tests.http.support import (
    SECOND,
    RecordingApp,
    assert_no_leak,
    close_bodies,
    feed,
    feed_bytewise,
    kind,
    limits_for,
    logged_errors,
    parse_responses,
    status_line_count,
)

CORPUS = Path(__file__).parent / "corpus"
SIDES = ("reader", "server")
MODES = ("whole", "bytewise", "second")


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    raw: bytes
    expect: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.expect.get("settings", {}))

    def wire(self, mode: str) -> bytes:
        return self.raw + SECOND if mode == "second" else self.raw


def load(kind_: str) -> list[Case]:
    cases = []
    for path in sorted((CORPUS / kind_).glob("*.http")):
        expect = json.loads(path.with_suffix(".expect").read_text())
        cases.append(Case(kind_, path.stem, path.read_bytes(), expect))
    return cases


def params(cases: list[Case]) -> list[Any]:
    out = []
    for case in cases:
        xfail = case.expect.get("xfail")
        for side in SIDES:
            for mode in MODES:
                marks = []
                if xfail and f"{side}-{mode}" in xfail.get("only", [f"{side}-{mode}"]):
                    marks.append(pytest.mark.xfail(strict=True, reason=xfail["reason"]))
                out.append(
                    pytest.param(case, side, mode, id=f"{case.name}-{side}-{mode}", marks=marks)
                )
    return out


VALID = load("valid")
INVALID = load("invalid")


def test_corpus_is_complete() -> None:
    assert len(VALID) >= 30
    assert len(INVALID) >= 100
    for kind_ in ("valid", "invalid"):
        stems = {p.stem for p in (CORPUS / kind_).iterdir() if p.suffix in (".http", ".expect")}
        for stem in stems:
            assert (CORPUS / kind_ / f"{stem}.http").exists(), f"{kind_}/{stem}.http missing"
            assert (CORPUS / kind_ / f"{stem}.expect").exists(), f"{kind_}/{stem}.expect missing"


def send(conn: InMemoryConnection, data: bytes, mode: str) -> None:
    if mode == "bytewise":
        conn.send_bytewise(data)
    else:
        conn.send(data)


def read(reader: RequestReader, data: bytes, mode: str) -> list[Any]:
    return feed_bytewise(reader, data) if mode == "bytewise" else feed(reader, data)


# -- invalid input


def invalid_expectation(case: Case, mode: str) -> tuple[int | None, list[str]]:
    """``(status, reader events)`` for one way of sending the case."""
    status = case.expect["status"]
    events = case.expect.get("events", [f"error:{status}"] if status is not None else [])
    second = case.expect.get("second", {})
    if mode == "second" and second:
        status = second.get("status", status)
        if "events" in second:
            events = second["events"]
        elif "status" in second:
            # The following bytes turn a request cut short into an error.
            events = [e for e in events if not e.startswith("error:")] + [f"error:{status}"]
    return status, events


@pytest.mark.parametrize(("case", "side", "mode"), params(INVALID))
def test_invalid(case: Case, side: str, mode: str) -> None:
    status, events = invalid_expectation(case, mode)
    if side == "reader":
        check_invalid_reader(case, mode, status, events)
    else:
        check_invalid_server(case, mode, status, events)


def check_invalid_reader(case: Case, mode: str, status: int | None, expected: list[str]) -> None:
    reader = RequestReader(limits_for(case.settings))
    events = read(reader, case.wire(mode), mode)
    try:
        assert [kind(e) for e in events] == expected
        if status is None:
            # Cut short: the reader waits for more, and the end of input drops the request.
            assert not reader.stopped
            reader.receive_eof()
            assert reader.next_event() is None
            assert reader.stopped
            assert reader.current is None
        elif expected[-1].startswith("error:"):
            # Nothing is read after an error, however much more arrives.
            assert reader.stopped
            completed = reader.completed_requests
            reader.receive_data(SECOND)
            reader.receive_data(SECOND)
            assert reader.next_event() is None
            assert reader.completed_requests == completed
    finally:
        close_bodies(events)


def check_invalid_server(case: Case, mode: str, status: int | None, expected: list[str]) -> None:
    app = RecordingApp()
    server = InMemoryServer(app, **case.settings)
    conn = server.connect()
    with logged_errors() as errors:
        send(conn, case.wire(mode), mode)
        output = conn.output()
        assert_no_leak(output)
        responses = parse_responses(output)
        interim = [r for r in responses if r.status < 200]
        final = [r for r in responses if r.status >= 200]
        assert [r.status for r in interim] == [100] * expected.count("continue")
        assert status_line_count(output) == len(responses)
        assert b"/second" not in output
        if status is None:
            assert final == []
            assert not conn.closed
            # The client half-closes, then goes: still nothing to answer, and the server closes.
            conn.channel.readConnectionLost()
            assert conn.output() == output
            assert conn.closed
            conn.lose()
        else:
            assert [r.status for r in final] == [status]
            assert final[0].closes, f"no Connection: close in {final[0].headers}"
            assert final[0].body == f"{status} {final[0].reason}\n".encode()
            assert conn.closed
            conn.finish_close()
            assert conn.output() == output
        # The bad request never reached the application, and neither did anything after it.
        assert app.calls == []
        assert server.state.channels == set()
    assert errors == []


# -- valid input


@pytest.mark.parametrize(("case", "side", "mode"), params(VALID))
def test_valid(case: Case, side: str, mode: str) -> None:
    requests = list(case.expect["requests"])
    closes = case.expect.get("closes", False)
    if mode == "second" and not closes:
        requests.append({"method": "GET", "target": "/second", "path": "/second", "query": ""})
    if side == "reader":
        check_valid_reader(case, mode, requests, closes)
    else:
        check_valid_server(case, mode, requests, closes)


def check_valid_reader(case: Case, mode: str, requests: list[dict[str, Any]], closes: bool) -> None:
    reader = RequestReader(limits_for(case.settings))
    events = read(reader, case.wire(mode), mode)
    try:
        expected_kinds = []
        for r in requests:
            expected_kinds += ["continue", "request"] if r.get("continue") else ["request"]
        assert [kind(e) for e in events] == expected_kinds
        got = [e for e in events if isinstance(e, Request)]
        for request, want in zip(got, requests, strict=True):
            assert request.method == want["method"]
            assert request.target == want["target"].encode("latin-1")
            body = request.body.read() if request.body is not None else b""
            assert body == want.get("body", "").encode("latin-1")
            assert request.body_length == len(body)
        assert reader.stopped == closes
        assert reader.current is None
        assert not reader.in_headers and not reader.in_body
    finally:
        close_bodies(events)


def check_valid_server(case: Case, mode: str, requests: list[dict[str, Any]], closes: bool) -> None:
    app = RecordingApp()
    server = InMemoryServer(app, **case.settings)
    conn = server.connect()
    with logged_errors() as errors:
        send(conn, case.wire(mode), mode)
        output = conn.output()
        assert_no_leak(output)
        heads = sum(1 for r in requests if r["method"] == "HEAD")
        responses = parse_responses(output, head_requests=heads)
        interim = [r.status for r in responses if r.status < 200]
        final = [r for r in responses if r.status >= 200]
        assert interim == [100] * sum(1 for r in requests if r.get("continue"))
        assert [r.status for r in final] == [r.get("status", 200) for r in requests]
        assert status_line_count(output) == len(responses)
        if closes:
            assert final[-1].closes, f"no Connection: close in {final[-1].headers}"
            assert conn.closed
        else:
            assert not any(r.closes for r in final)
            assert not conn.closed

        served = [r for r in requests if r.get("app", True)]
        assert len(app.calls) == len(served)
        for call, want in zip(app.calls, served, strict=True):
            assert call.method == want["method"]
            assert call.path == want["path"]
            assert call.query == want["query"]
            assert call.body == want.get("body", "").encode("latin-1")
            for key, value in want.get("environ", {}).items():
                assert call.environ.get(key) == value, key
            for key in want.get("absent", []):
                assert key not in call.environ, key
        conn.lose()
    assert errors == []
