"""The listening settings (``listen``, ``uwsgi``, ``fastcgi``, ``backlog``) as Twisted endpoints,
the same way for every process that serves HTTP: ``catalyzer`` and ``catalyzer-front``.

A description catalyzer cannot use is an :class:`EndpointSpecError` whose message names the option,
the description and the reason; the entry points turn it into one line on stderr and exit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints

from catalyzer.server.faces import Face, describe
from catalyzer.server.proxyheader import ProxiedEndpoint, split_proxied
from catalyzer.settings import Config

__all__ = ["EndpointSpecError", "open_forwarding_warning", "server_endpoints", "with_backlog"]


class EndpointSpecError(Exception):
    """A listening description that cannot be used (the message is the whole user error)."""


def with_backlog(description: str, backlog: int) -> str:
    """``description`` with ``:backlog=N`` added when its endpoint type takes one and it has none."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description


def server_endpoints(
    config: Config, reactor: Any, faces: tuple[Face, ...] = (Face.HTTP, Face.UWSGI, Face.FASTCGI)
) -> list[tuple[str, Any]]:
    """``(description, endpoint)`` for every listening setting of ``faces`` in ``config``:
    ``--backlog`` applied, ``haproxy:`` wrapped by catalyzer's PROXY protocol listener."""
    described = [(Face.HTTP, d) for d in config.listen]
    described += [(Face.UWSGI, d) for d in config.uwsgi]
    described += [(Face.FASTCGI, d) for d in config.fastcgi]
    out: list[tuple[str, Any]] = []
    for face, description in described:
        if face not in faces:
            continue
        option = "--listen" if face is Face.HTTP else f"--{face.value}"
        proxied, inner = split_proxied(description)
        if proxied and inner.split(":", 1)[0].lower() not in ("tcp", "tcp6", "unix", "systemd"):
            raise EndpointSpecError(
                f"{option} {description!r}: the PROXY protocol is supported on tcp, tcp6, unix "
                "and systemd endpoints (it comes before TLS: terminate TLS in the proxy)"
            )
        try:
            endpoint = endpoints.serverFromString(reactor, with_backlog(inner, config.backlog))
            if proxied:
                endpoint = ProxiedEndpoint(endpoint, reactor)
        except IndexError:
            if not inner.startswith("systemd:"):
                raise
            raise EndpointSpecError(
                f"{option} {description!r}: no socket at that index was passed by systemd "
                "(LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES describe the sockets it passes)"
            ) from None
        except Exception as e:  # the endpoint parsers raise a variety of types
            raise EndpointSpecError(f"{option} {description!r}: {e or type(e).__name__}") from None
        out.append((describe(face, description), endpoint))
    return out


def open_forwarding_warning(config: Config) -> str | None:
    """The warning to log once when ``forwarded-allow-ips`` trusts every client."""
    if "*" not in config.forwarded_allow_ips.split(","):
        return None
    return (
        "--forwarded-allow-ips '*': every client can set REMOTE_ADDR, the scheme and the "
        "host with Forwarded/X-Forwarded-* headers; list your proxies' addresses instead "
        "unless only a proxy can reach this server"
    )
