"""Binding the listening endpoints, or ending the process with one line: the single-process
server, the prefork master and ``catalyzer-dispatch`` all bind this way.

Binding happens in ``privilegedStartService`` (before twistd drops privileges) and every endpoint
catalyzer accepts binds synchronously, so a failure is known at once. It is a user error (a port
in use, no permission), not a bug: the process stops with status 1 and one line on standard
error naming the endpoint and the reason, without a traceback, and without leaving the endpoints
bound before it listening.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import interfaces
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from catalyzer.server.startchecks import StartError

__all__ = ["ListenError", "listen_all", "listen_now"]

E = TypeVar("E")
P = TypeVar("P")


class ListenError(StartError):
    """An endpoint could not be bound."""


def listen_now(
    endpoint: interfaces.IStreamServerEndpoint, factory: interfaces.IProtocolFactory
) -> interfaces.IListeningPort:
    """``endpoint.listen(factory)``'s port, at once; the bind's own error if it failed."""
    result: list[Any] = []
    endpoint.listen(factory).addBoth(result.append)
    if not result:
        raise OSError("did not bind at once")
    if isinstance(result[0], Failure):
        result[0].raiseException()
    port: interfaces.IListeningPort = result[0]
    return port


def _stop_listening(port: Any) -> object:
    return port.stopListening()


def _host(port: Any) -> object:
    return port.getHost()


def listen_all(
    endpoints: Sequence[tuple[str, E]],
    listen: Callable[[E], P],
    *,
    logger: Logger,
    prefix: str = "catalyzer",
    close: Callable[[P], object] = _stop_listening,
    address: Callable[[P], object] = _host,
) -> list[P]:
    """``listen(endpoint)`` for each ``(description, endpoint)`` in order, logging where each
    listens (``address``, by default the port's ``getHost()``).

    If one fails, those already bound are closed
    (``close``, by default ``stopListening()``) and :class:`ListenError` ends the process with
    ``"{prefix}: cannot listen on {description}: {reason}"``.
    """
    bound: list[P] = []
    for description, endpoint in endpoints:
        try:
            listener = listen(endpoint)
        except Exception as e:  # endpoints fail in many types, all of them the user's to fix
            # CannotListenError's own text repeats the address; the socket's error is the reason.
            reason = e.socketError or e if isinstance(e, CannotListenError) else e
            for other in bound:
                close(other)
            raise ListenError(f"{prefix}: cannot listen on {description}: {reason}") from None
        bound.append(listener)
        logger.info(
            "listening on {description} ({address})",
            description=description,
            address=address(listener),
        )
    return bound
