"""Binding or ending the process with one line (server/listening), with fake endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from catalyzer.server.listening import ListenError, listen_all, listen_now

log = Logger(namespace="tests")


class Port:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopped = False

    def getHost(self) -> str:
        return f"host of {self.name}"

    def stopListening(self) -> None:
        self.stopped = True


class Endpoint:
    def __init__(self, result: Any) -> None:
        self.result = result

    def listen(self, factory: object) -> defer.Deferred[Any]:
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        if self.result is None:
            return defer.Deferred()  # never fires
        return defer.succeed(self.result)


def test_listen_now_returns_the_port_or_raises_the_error() -> None:
    port = Port("a")
    assert listen_now(Endpoint(port), None) is port  # type: ignore[arg-type]
    with pytest.raises(OSError, match="in use"):
        listen_now(Endpoint(OSError("in use")), None)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="did not bind at once"):
        listen_now(Endpoint(None), None)  # type: ignore[arg-type]


def test_listen_all_binds_in_order() -> None:
    a, b = Port("a"), Port("b")
    bound = listen_all(
        [("A", Endpoint(a)), ("B", Endpoint(b))],
        lambda e: listen_now(e, None),  # type: ignore[arg-type]
        logger=log,
    )
    assert bound == [a, b]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            CannotListenError("127.0.0.1", 80, OSError(13, "Permission denied")),
            "[Errno 13] Permission denied",
        ),
        (OSError(98, "Address already in use"), "[Errno 98] Address already in use"),
        (
            ValueError("cannot pass a HostnameAddress listener"),
            "cannot pass a HostnameAddress listener",
        ),
    ],
)
def test_a_failure_closes_what_was_bound_and_exits_1_with_one_line(
    capfd: pytest.CaptureFixture[str], error: Exception, reason: str
) -> None:
    a = Port("a")
    with pytest.raises(ListenError) as raised:
        listen_all(
            [("tcp:1", Endpoint(a)), ("tcp:80", Endpoint(error))],
            lambda e: listen_now(e, None),  # type: ignore[arg-type]
            logger=log,
            prefix="prog: error",
        )
    assert raised.value.code == 1
    assert a.stopped
    assert capfd.readouterr().err == f"prog: error: cannot listen on tcp:80: {reason}\n"
