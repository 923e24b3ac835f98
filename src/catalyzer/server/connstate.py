"""The states of one HTTP connection and the transitions between them, in one table.

The reader (:mod:`catalyzer.http.reader`) has its own states for what it is parsing; these are the
connection's: whether it may take the next request off the reader, is busy with one, or is going.

::

    OPEN ──▶ RESPONDING ──▶ OPEN          a request answered by the app, connection kept
    OPEN ──▶ AWAITING ──▶ OPEN            an answer the server makes elsewhere (progress polls)
    OPEN | RESPONDING | AWAITING ──▶ CLOSING ──▶ CLOSED
    any state but CLOSED ──▶ CLOSED       the client went away, or the connection was aborted

A response running when the connection starts CLOSING (the client half-closed its write side) is
left to finish; the connection stays CLOSING.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["TRANSITIONS", "ConnState", "IllegalTransition", "check_transition"]


class ConnState(enum.Enum):
    OPEN = "open"  # takes the next request or protocol error off the reader (idle or reading)
    RESPONDING = "responding"  # a WSGIResponse is running; later requests wait in the reader
    AWAITING = "awaiting"  # a server-made answer is on its way (progress from the master)
    CLOSING = "closing"  # nothing more is taken; output drains, then the transport closes
    CLOSED = "closed"  # the transport is gone


_S = ConnState
TRANSITIONS: Final[dict[ConnState, frozenset[ConnState]]] = {
    _S.OPEN: frozenset({_S.RESPONDING, _S.AWAITING, _S.CLOSING, _S.CLOSED}),
    _S.RESPONDING: frozenset({_S.OPEN, _S.CLOSING, _S.CLOSED}),
    _S.AWAITING: frozenset({_S.OPEN, _S.CLOSING, _S.CLOSED}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A connection was asked to move between two states the table does not link: a bug."""


# Each state also holds its successors as a tuple: the check runs twice a request, and a tuple is
# searched by identity, where a dict or set lookup calls Enum's Python-level __hash__. The
# request's own transitions (OPEN -> RESPONDING -> OPEN) come first, so they match at once.
_HOT_FIRST: Final = (_S.RESPONDING, _S.OPEN)
for _state, _successors in TRANSITIONS.items():
    _state.successors = tuple(  # type: ignore[attr-defined]
        sorted(_successors, key=lambda s: (s not in _HOT_FIRST, s.value))
    )


def check_transition(old: ConnState, new: ConnState) -> None:
    if new not in old.successors:  # type: ignore[attr-defined]
        raise IllegalTransition(f"connection state {old.name} -> {new.name}")
