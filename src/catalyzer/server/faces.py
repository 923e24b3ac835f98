"""The protocols a listening endpoint can speak, and which one a description names.

``--listen``, ``--uwsgi`` and ``--fastcgi`` endpoints travel together (through the prefork master
to its workers) as one list of descriptions: a gateway endpoint's description is its Twisted
endpoint string behind the face's name, ``uwsgi:tcp:9000`` or ``fastcgi:unix:/run/app.sock``, which
is also how it is named in the log. No Twisted endpoint type is called ``uwsgi`` or ``fastcgi``.
"""

from __future__ import annotations

import enum

from twisted.internet.protocol import Factory

from catalyzer.server.channel import HTTPFactory, ServerState

__all__ = ["Face", "describe", "factory_for", "split_face"]


class Face(enum.Enum):
    HTTP = "http"
    UWSGI = "uwsgi"
    FASTCGI = "fastcgi"


_PREFIXED = {Face.UWSGI.value + ":": Face.UWSGI, Face.FASTCGI.value + ":": Face.FASTCGI}


def describe(face: Face, endpoint: str) -> str:
    """The description of ``endpoint`` serving ``face``."""
    return endpoint if face is Face.HTTP else f"{face.value}:{endpoint}"


def split_face(description: str) -> tuple[Face, str]:
    """``(face, Twisted endpoint string)`` of a description made by :func:`describe`."""
    for prefix, face in _PREFIXED.items():
        if description.startswith(prefix):
            return face, description[len(prefix) :]
    return Face.HTTP, description


def factory_for(face: Face, server: ServerState) -> Factory:
    if face is Face.HTTP:
        return HTTPFactory(server)
    from catalyzer.server.gateway import FastCGIChannel, GatewayFactory, UwsgiChannel

    return GatewayFactory(server, UwsgiChannel if face is Face.UWSGI else FastCGIChannel)
