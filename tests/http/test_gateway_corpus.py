"""The uwsgi and FastCGI corpus (``gateway_corpus.py``) fed to the bare parsers, three ways: whole
(one read), bytewise (one byte per read) and ``more`` (the case followed by more input: for uwsgi,
bytes nothing may read; for FastCGI, an FCGI_GET_VALUES record, answered unless the peer broke the
protocol); uwsgi also in views of one buffer reused between reads and with its body received into
the body as pieces of the size it asks for (``body_room``), as its channel reads."""

from __future__ import annotations

import dataclasses
import errno
import io
from typing import Any

import pytest

from catalyzer.http import fastcgi as f
from catalyzer.http.cgi import CGIRequest, Malformed, Refused
from catalyzer.http.fastcgi import Abort, FastCGIParser, Reply
from catalyzer.http.reader import Limits
from catalyzer.http.spool import spool_failure
from catalyzer.http.uwsgi import UwsgiParser
from catalyzer.wsgi.environ import ConnectionInfo, base_environ, build_cgi_environ
from tests.http.gateway_corpus import (
    FASTCGI_INVALID,
    FASTCGI_VALID,
    GET_VALUES,
    UWSGI_INVALID,
    UWSGI_VALID,
    Case,
    fcgi,
    post,
    uw,
)

MODES = ("whole", "bytewise", "more")
# uwsgi also in 7-byte views of one reused buffer, as its channel reads, and with a body kept in
# memory read in pieces of the size the parser asks for (body_room).
UWSGI_MODES = (*MODES, "reused-view", "into-space")
CONN = ConnectionInfo("127.0.0.1", "9000", "127.0.0.1", "40000")


def kind(event: object) -> str:
    if isinstance(event, CGIRequest):
        return "request"
    if isinstance(event, Refused):
        return f"refused:{event.status}"
    if isinstance(event, Malformed):
        return "malformed"
    if isinstance(event, Abort):
        return "abort"
    if isinstance(event, Reply):
        kind_ = event.data[1]
        if kind_ == f.END_REQUEST:
            return f"reply:{kind_}:{event.data[12]}"
        return f"reply:{kind_}"
    raise AssertionError(event)


def limits(case: Case) -> Limits:
    return dataclasses.replace(Limits(), **case.limits)


def feed(parser: Any, data: bytes, mode: str) -> list[object]:
    events: list[object] = []
    if mode == "bytewise":
        pieces = [data[i : i + 1] for i in range(len(data))]
    elif mode in ("reused-view", "into-space"):
        pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    else:
        pieces = [data]
    # The uwsgi channel reads into one buffer it reuses: the parser gets views of it and must
    # copy what it keeps (overwritten after each read here, so a kept view shows junk).
    buffer = bytearray(7)
    for piece in pieces:
        room = parser.body_room if mode == "into-space" else 0
        if room:
            # Read for the body in pieces of the size it asks for, as the channel's recv does.
            parser.received_piece(piece[:room])
            if piece[room:]:
                parser.receive_data(piece[room:])
        elif mode in ("reused-view", "into-space"):
            buffer[: len(piece)] = piece
            parser.receive_data(memoryview(buffer)[: len(piece)])
            buffer[:] = b"\xff" * len(buffer)
        else:
            parser.receive_data(piece)
        while (event := parser.next_event()) is not None:
            events.append(event)  # no request_done(): each response is still running
    return events


def check_requests(case: Case, events: list[object]) -> None:
    got = [e for e in events if isinstance(e, CGIRequest)]
    assert len(got) == len(case.requests)
    for cgi, want in zip(got, case.requests, strict=True):
        request = cgi.request
        assert request.method == want["method"]
        assert request.target == want["target"].encode("latin-1")
        body = request.body.read() if request.body is not None else b""
        assert body == want.get("body", b"")
        assert request.body_length == len(body)
        if request.body is not None:
            request.body.seek(0)
            if case.limits.get("body_spool_threshold", 1 << 20) < len(body):
                assert not isinstance(request.body, io.BytesIO)
        environ = build_cgi_environ(cgi, base_environ(CONN))
        for key, value in want.get("environ", {}).items():
            assert environ.get(key) == value, key
        for key in want.get("absent", []):
            assert key not in environ, key
        assert environ["wsgi.input"].read() == body


def close_bodies(events: list[object]) -> None:
    for event in events:
        if isinstance(event, CGIRequest) and event.request.body is not None:
            event.request.body.close()


def ids(cases: list[Case], modes: tuple[str, ...] = MODES) -> list[Any]:
    return [pytest.param(c, m, id=f"{c.name}-{m}") for c in cases for m in modes]


# -- uwsgi


@pytest.mark.parametrize(("case", "mode"), ids(UWSGI_VALID + UWSGI_INVALID, UWSGI_MODES))
def test_uwsgi(case: Case, mode: str) -> None:
    parser = UwsgiParser(limits(case))
    wire = case.wire + (b"GET / HTTP/1.1\r\n\r\n" * 3 if mode == "more" else b"")
    events = feed(parser, wire, mode)
    try:
        if case.more is not None and mode == "more":
            assert [kind(e) for e in events] == case.more
            return
        assert [kind(e) for e in events] == case.events
        check_requests(case, events)
        if case.events:
            assert parser.stopped
            parser.receive_data(case.wire)  # nothing follows a uwsgi request
            assert parser.next_event() is None
        else:
            assert not parser.stopped
            parser.receive_eof()
            assert parser.next_event() is None
            assert parser.stopped
    finally:
        close_bodies(events)


def test_uwsgi_corpus_size() -> None:
    assert len(UWSGI_VALID) >= 10 and len(UWSGI_INVALID) >= 15


# -- FastCGI


@pytest.mark.parametrize(("case", "mode"), ids(FASTCGI_VALID + FASTCGI_INVALID))
def test_fastcgi(case: Case, mode: str) -> None:
    parser = FastCGIParser(limits(case), max_conns=7)
    wire = case.wire + (GET_VALUES if mode == "more" else b"")
    events = feed(parser, wire, mode)
    try:
        expected = list(case.events)
        if mode == "more" and "malformed" not in expected and expected:
            expected.append("reply:10")
        if case.more is not None and mode == "more":
            assert [kind(e) for e in events] == case.more
            return
        assert [kind(e) for e in events] == expected
        check_requests(case, events)
        if "malformed" in expected:
            assert parser.stopped
            parser.receive_data(GET_VALUES)
            assert parser.next_event() is None
        if not case.events:
            parser.receive_eof()
            assert parser.next_event() is None
    finally:
        close_bodies(events)


def test_fastcgi_get_values_answer() -> None:
    parser = FastCGIParser(max_conns=7)
    parser.receive_data(GET_VALUES)
    event = parser.next_event()
    assert isinstance(event, Reply)
    assert event.data[1] == f.GET_VALUES_RESULT
    length = int.from_bytes(event.data[4:6], "big")
    pairs = f.parse_pairs(event.data[8 : 8 + length])
    # Only the names it knows; FCGI_X is not answered.
    assert pairs == {b"FCGI_MAX_CONNS": b"7", b"FCGI_MPXS_CONNS": b"0"}


def test_fastcgi_corpus_size() -> None:
    assert len(FASTCGI_VALID) >= 15 and len(FASTCGI_INVALID) >= 15


def test_stdout_records_split_at_65535() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes
    records = f.stdout_records(3, data)
    lengths = [int.from_bytes(h[4:6], "big") for h in records[::2]]
    assert lengths == [65535, 65535, 153600 - 2 * 65535]
    assert b"".join(records[1::2]) == data
    assert f.end_request(3)[:8] == bytes((1, f.STDOUT, 0, 3, 0, 0, 0, 0))


# -- a body that cannot be spooled: refused naming the directory (HTTP face: tests/http/test_reader)


@pytest.mark.parametrize("face", ["uwsgi", "fastcgi"])
@pytest.mark.parametrize("mode", MODES)
def test_a_body_that_cannot_be_spooled_is_refused_naming_the_directory(
    tmp_path: Any, face: str, mode: str
) -> None:
    gone = tmp_path / "gone"
    spooling = Limits(body_spool_threshold=1024, spool_dir=str(gone))
    body = bytes(range(256)) * 20
    parser: Any
    if face == "uwsgi":
        parser, wire = UwsgiParser(spooling), uw(post(body), body)
    else:
        parser, wire = FastCGIParser(spooling), fcgi(post(body), body)
    events = feed(parser, wire, mode)
    assert events == [
        Refused(503, f"cannot spool the request body to {gone}: No such file or directory", 1)
        if face == "fastcgi"
        else Refused(503, f"cannot spool the request body to {gone}: No such file or directory")
    ]


def test_no_room_in_the_spool_directory_is_507() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert spool_failure(full, "/spool") == (
        507,
        "cannot spool the request body to /spool: No space left on device",
    )
    assert spool_failure(OSError(errno.EACCES, "Permission denied"), None)[0] == 503


def test_fastcgi_stdin_past_a_content_length_of_zero_is_kept() -> None:
    variables = {**post(b""), "CONTENT_LENGTH": "0"}
    [event] = feed(FastCGIParser(Limits()), fcgi(variables, b"extra"), "whole")
    assert isinstance(event, CGIRequest) and event.request.body is not None
    assert event.request.body.read() == b"extra"
