"""The connection state table, and the channel keeping to it."""

from __future__ import annotations

import pytest

from catalyzer.server.connstate import TRANSITIONS, ConnState, IllegalTransition, check_transition
from catalyzer.testing import InMemoryServer
from tests.helpers import GET, hello


def test_every_state_has_a_row_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(ConnState)
    assert TRANSITIONS[ConnState.CLOSED] == frozenset()
    assert TRANSITIONS[ConnState.CLOSING] == frozenset({ConnState.CLOSED})


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ConnState.CLOSED, ConnState.OPEN),
        (ConnState.CLOSING, ConnState.OPEN),
        (ConnState.RESPONDING, ConnState.AWAITING),
        (ConnState.OPEN, ConnState.OPEN),
    ],
)
def test_illegal_transitions_raise(old: ConnState, new: ConnState) -> None:
    with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
        check_transition(old, new)


def test_channel_walks_the_table() -> None:
    server = InMemoryServer(hello)
    conn = server.connect()
    channel = conn.channel
    assert channel.state is ConnState.OPEN
    conn.send(GET)
    assert channel.state is ConnState.OPEN  # answered at once, connection kept
    conn.send(GET.replace(b"Host: x", b"Host: x\r\nConnection: close"))
    assert channel.state is ConnState.CLOSING and channel.closing
    conn.finish_close()
    assert channel.state is ConnState.CLOSED and channel.disconnected
    with pytest.raises(IllegalTransition):
        channel._enter(ConnState.RESPONDING)
