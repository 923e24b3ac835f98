"""The manhole: an interactive Python prompt inside the running server.

``make_manhole_service(description, namespace, reactor, keys_path)`` returns a Twisted service that
listens on the endpoint ``description`` and gives every connection a Python prompt (Twisted Conch's
:class:`~twisted.conch.manhole.Manhole`) whose globals are a copy of ``namespace``: what a session
assigns stays in that session; the objects in ``namespace`` are the live ones.

Anyone who can open the manhole can do anything the server process can, so where it may listen is
policy, checked before anything is bound (a violation raises :class:`SettingError` naming the
endpoint):

``unix:PATH`` (recommended)
    A plain terminal stream on a unix socket created with mode 0600 (``:mode=0600`` is added when
    the description has none; a mode giving the group or others any access is refused, and so is an
    abstract-namespace socket, which has no permissions at all). The socket's permissions are the
    authentication: only its owner (and root) can connect. Connect with
    ``socat -,raw,echo=0 UNIX-CONNECT:PATH`` (line editing, history, Ctrl-C, Ctrl-D to leave) or,
    for scripts, ``socat - UNIX-CONNECT:PATH`` / ``nc -U PATH``. The socket is created by
    ``chmod`` right after ``bind``, so also keep it in a directory only the server user can enter.

``tcp:PORT:interface=ADDRESS``
    Without ``keys_path``: the same plain stream, allowed only on a loopback address
    (``127.0.0.1``, ``::1``); a tcp endpoint without an interface listens on every interface and
    is refused. Note that any local user can connect to a loopback port.

``keys_path`` (tcp on any interface, or unix)
    SSH (Conch's ``ConchFactory``) with public-key authentication against ``keys_path``, one
    OpenSSH ``authorized_keys`` file. Any user name is accepted: the file is the only authority.
    Lines with ``authorized_keys`` options (``from=...`` and the like) are not understood and so
    authorize nothing. The file is read again on every login attempt, so removing a key takes
    effect at once; at start-up it must exist, be a regular file nobody but its owner can write,
    and hold at least one key. Over a unix socket:
    ``ssh -o ProxyCommand='socat - UNIX-CONNECT:PATH' manhole``.

Any other endpoint type is refused.

SSH host key: an Ed25519 key generated in memory (``cryptography``) each time the service is made.
Nothing is written to disk, there is no key file to protect or rotate, and generating it takes
microseconds (an RSA key takes a noticeable fraction of a second); every OpenSSH since 6.5
accepts it. Its SHA256 fingerprint is logged when the service starts (``ssh-keygen -lf`` format),
so a client can check it instead of trusting it blindly; as it changes on every restart, point the
client's ``UserKnownHostsFile`` at a throw-away file or compare the fingerprint by hand.

The output is terminal-friendly but never assumes a capable terminal: no syntax colouring, no
screen reset or clear, no redraw on a window-size change; a client that only sends lines and reads
bytes (a test, ``nc``) sees the banner, its echoed input, the results and the prompts. Cursor
control sequences are only sent in answer to editing keys (arrows, backspace, Ctrl-L), which only a
real terminal sends. ``CR LF`` and ``CR NUL`` count as one Enter, and a bare ``CR`` (what a
terminal in raw mode sends) is acted on at once; this is why the plain stream is not telnet:
Twisted's telnet transport holds a bare ``CR`` back until the next byte, and its option
negotiation shows up as garbage on a client that is not a telnet client (and no telnet client can
open a unix socket anyway).

``exit()``, ``quit()`` and ``raise SystemExit`` end the session, never the server.
"""

# Twisted Conch is mostly unannotated; calls into it are untyped.
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from types import CodeType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from catalyzer.settings import SettingError

try:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch import manhole, manhole_ssh
    from twisted.conch.checkers import (
        IAuthorizedKeysDB,
        SSHPublicKeyChecker,
        readAuthorizedKeyFile,
    )
    from twisted.conch.insults import insults
    from twisted.conch.ssh import keys
except ImportError as e:  # pragma: no cover - depends on the extras installed
    raise ImportError(
        f"the manhole needs Twisted Conch: pip install 'catalyzer[manhole]' ({e})"
    ) from e

__all__ = ["ManholeService", "banner", "make_manhole_service"]

log = Logger(namespace="catalyzer.ops.manhole")

_OWNER_ONLY_MODE = "0600"
# How insults names arrow, Home, End and the other keys only a terminal sends.
_FUNCTION_KEYS = frozenset(insults.FUNCTION_KEYS)


def banner(namespace: Mapping[str, object]) -> str:
    """One line naming what ``namespace`` offers, e.g.
    ``catalyzer manhole: workers(), dump(), stats(), reload(), server``.

    Names starting with ``_`` are left out; functions get ``()``; the order is the namespace's.
    """
    names = [
        f"{name}()" if callable(value) and not isinstance(value, type) else name
        for name, value in namespace.items()
        if not name.startswith("_")
    ]
    return "catalyzer manhole: " + (", ".join(names) if names else "(empty namespace)")


# -- the prompt ------------------------------------------------------------------------------


class _Leave:
    """``exit`` and ``quit`` in a session: end the session (the builtins would raise SystemExit,
    and ``site``'s versions also close the server's stdin)."""

    def __init__(self, session: _Manhole) -> None:
        self._session = session

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to leave the manhole"

    def __call__(self, code: object = None) -> None:
        self._session.leave()


class _Interpreter(manhole.ManholeInterpreter):
    def runcode(self, code: CodeType) -> None:
        try:
            super().runcode(code)
        except SystemExit:
            self.handler.leave()


class _Manhole(manhole.Manhole):
    """Conch's plain (uncoloured) manhole, with a banner and without the terminal-taking-over."""

    def __init__(self, namespace: dict[str, object], banner_line: str) -> None:
        super().__init__(namespace)
        assert self.namespace is not None  # the session's own copy of `namespace`
        self.namespace.setdefault("exit", _Leave(self))
        self.namespace.setdefault("quit", _Leave(self))
        self._banner = banner_line
        self._modes_set = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = _Interpreter(self, self.namespace)

    def initializeScreen(self) -> None:
        # RecvLine resets the terminal (clearing the user's screen) and sets insert mode with an
        # escape sequence; here the banner and the prompt are all that is written.
        self.terminal.write(self._banner.encode("utf-8") + b"\n")
        self.terminal.write(self.ps[self.pn])
        self.mode = "insert"

    def keystrokeReceived(self, keyID: object, modifier: object) -> None:
        if not self._modes_set and keyID in _FUNCTION_KEYS:
            # A function key: this is a real terminal, which needs insert mode for editing in the
            # middle of a line to display right.
            self._modes_set = True
            self.terminal.setModes([insults.modes.IRM])
        super().keystrokeReceived(keyID, modifier)

    def terminalSize(self, width: int, height: int) -> None:
        # RecvLine clears the screen and redraws the prompt (erasing the banner); only remember.
        self.width = width
        self.height = height

    def leave(self) -> None:
        self.terminal.loseConnection()


class _TerminalProtocol(insults.ServerProtocol):
    """insults' server side, taking ``CR LF`` / ``CR NUL`` as one Enter and not resetting the
    client's terminal on the way out."""

    _after_cr = False

    def dataReceived(self, data: bytes) -> None:
        if self._after_cr and data[:1] in (b"\n", b"\0"):
            data = data[1:]
        data = data.replace(b"\r\n", b"\r").replace(b"\r\0", b"\r")
        self._after_cr = data.endswith(b"\r")
        if data:
            super().dataReceived(data)

    def loseConnection(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def _terminal_factory(namespace: dict[str, object]) -> Callable[[], _TerminalProtocol]:
    line = banner(namespace)

    def build() -> _TerminalProtocol:
        return _TerminalProtocol(_Manhole, namespace, line)

    return build


# -- SSH ---------------------------------------------------------------------------------------


@implementer(IAuthorizedKeysDB)
class _AuthorizedKeysFile:
    """Every key in one ``authorized_keys`` file, whatever the user name; read on each use."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> list[keys.Key]:
        with open(self.path, "rb") as f:
            return list(readAuthorizedKeyFile(f))

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:
        try:
            return self.read()
        except OSError as e:
            log.error("manhole: cannot read keys file {path}: {error}", path=self.path, error=e)
            return []


class _Session(manhole_ssh.TerminalSession):
    # Conch's TerminalSession only knows its size from a pty request; `ssh -T` sends none.
    width = 80
    height = 24
    _proto: Any = None

    def openShell(self, proto: Any) -> None:
        # Conch's TerminalSession closes the channel without an exit status, which OpenSSH's
        # client reports as a failure (exit 255); end a session the way a shell ends instead.
        def end_session() -> None:
            proto.processEnded(Failure(ProcessDone(0)))

        proto.loseConnection = end_session
        self._proto = proto
        super().openShell(proto)

    def windowChanged(self, newWindowSize: object) -> None:
        pass

    def eofReceived(self) -> None:
        # `echo 'stats()' | ssh -T ...`: every line has been run by now.
        if self._proto is not None:
            self._proto.loseConnection()


def _ssh_factory(
    namespace: dict[str, object], keys_file: _AuthorizedKeysFile
) -> tuple[manhole_ssh.ConchFactory, str]:
    """The SSH manhole's factory, with a new host key, and that key's fingerprint."""
    # TerminalRealm is an IRealm without saying so, and its annotations want a ServerProtocol
    # class where any callable returning one does.
    realm: Any = manhole_ssh.TerminalRealm()
    realm.sessionFactory = _Session
    realm.chainedProtocolFactory = _terminal_factory(namespace)
    factory = manhole_ssh.ConchFactory(Portal(realm, [SSHPublicKeyChecker(keys_file)]))
    host_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    # Instance attributes: ConchFactory's class-level dicts are shared by every instance. Conch
    # annotates them as bytes; keys.Key objects are what it uses.
    factory.publicKeys = {b"ssh-ed25519": host_key.public()}
    factory.privateKeys = {b"ssh-ed25519": host_key}  # type: ignore[dict-item]
    return factory, _fingerprint(host_key)


def _fingerprint(key: keys.Key) -> str:
    """``SHA256:...``, as ``ssh-keygen -lf`` and ``ssh`` print it."""
    digest: str = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


# -- the service -------------------------------------------------------------------------------


class ManholeService(StreamServerEndpointService):
    """Listens on the manhole endpoint when started; listening errors raise from ``startService``.

    ``port`` is the listening port once started (``port.getHost()`` gives a ``tcp:0`` port).
    ``host_key_fingerprint`` is the SSH host key's fingerprint, or None for a plain manhole.
    """

    _raiseSynchronously = True

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        host_key_fingerprint: str | None,
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.host_key_fingerprint = host_key_fingerprint
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort | None) -> IListeningPort | None:
        if port is None:  # listening failed, and StreamServerEndpointService logged why
            return None
        self.port = port
        if self.host_key_fingerprint is None:
            log.info("manhole ready at {description}", description=self.description)
        else:
            log.info(
                "manhole (SSH, host key {fingerprint}) ready at {description}",
                description=self.description,
                fingerprint=self.host_key_fingerprint,
            )
        return port

    def stopService(self) -> defer.Deferred[None]:
        self.port = None
        d: defer.Deferred[None] = super().stopService()
        return d


# -- policy ----------------------------------------------------------------------------------


def _parse(description: str) -> tuple[list[str], dict[str, str]]:
    """Twisted's endpoint-description syntax: ``:`` separates, the first ``=`` of a part makes it
    a keyword, a backslash escapes the next character."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    buf: list[str] = []
    key: str | None = None
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            buf.append(next(chars, ""))
        elif ch == ":":
            if key is None:
                args.append("".join(buf))
            else:
                kwargs[key] = "".join(buf)
            buf, key = [], None
        elif ch == "=" and key is None:
            key, buf = "".join(buf), []
        else:
            buf.append(ch)
    if key is None:
        args.append("".join(buf))
    else:
        kwargs[key] = "".join(buf)
    return args, kwargs


def _argument(args: list[str], kwargs: dict[str, str], name: str, position: int) -> str | None:
    """The value of endpoint parameter ``name``, given by keyword or at ``position`` (0 being the
    first argument after the endpoint type)."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > position + 1:
        return args[position + 1]
    return None


def _check_unix(description: str, args: list[str], kwargs: dict[str, str]) -> str:
    """The description to listen on: ``description`` with ``:mode=0600`` when it has no mode."""
    address = _argument(args, kwargs, "address", 0)
    if not address:
        raise SettingError(f"manhole endpoint {description!r}: no socket path given")
    if address.startswith("\0"):
        raise SettingError(
            f"manhole endpoint {description!r}: an abstract-namespace socket has no permissions,"
            " anyone on the host could connect; give a filesystem path"
        )
    mode = _argument(args, kwargs, "mode", 1)
    if mode is None:
        return f"{description}:mode={_OWNER_ONLY_MODE}"
    try:
        bits = int(mode, 8)
    except ValueError:
        raise SettingError(
            f"manhole endpoint {description!r}: mode {mode!r} is not an octal file mode"
        ) from None
    if bits & 0o077:
        raise SettingError(
            f"manhole endpoint {description!r}: mode {mode} lets the group or others connect;"
            f" use mode={_OWNER_ONLY_MODE} (or leave mode out)"
        )
    return description


def _check_tcp(description: str, args: list[str], kwargs: dict[str, str]) -> None:
    interface = _argument(args, kwargs, "interface", 1) or ""
    if not interface:
        raise SettingError(
            f"manhole endpoint {description!r} listens on every interface; without a keys file"
            " the manhole may only listen on loopback (interface=127.0.0.1 or ::1) or a unix"
            " socket"
        )
    try:
        loopback = ipaddress.ip_address(interface).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SettingError(
            f"manhole endpoint {description!r}: interface {interface} is not a loopback address;"
            " without a keys file the manhole may only listen on 127.0.0.1, ::1 or a unix socket"
        )


def _check_keys_file(description: str, path: str) -> _AuthorizedKeysFile:
    where = f"manhole keys file {path!r} (for endpoint {description!r})"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SettingError(f"{where} does not exist") from None
    except OSError as e:
        raise SettingError(f"{where} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SettingError(f"{where} is not a regular file")
    if st.st_mode & 0o022:
        raise SettingError(
            f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o});"
            " anyone who can write it can let themselves in"
        )
    keys_file = _AuthorizedKeysFile(path)
    try:
        found = keys_file.read()
    except OSError as e:
        raise SettingError(f"{where} cannot be read: {e.strerror}") from None
    if not found:
        raise SettingError(
            f"{where} holds no usable public key (one OpenSSH public key per line, no options)"
        )
    return keys_file


def make_manhole_service(
    description: str,
    namespace: dict[str, object],
    reactor: object,
    keys_path: str | None = None,
) -> IService:
    """A service that, once started, serves a manhole with ``namespace`` on endpoint
    ``description`` (see the module docstring for what is allowed). Raises :class:`SettingError`
    for a refused or malformed description or a bad keys file; nothing is bound until the service
    starts. The result is a :class:`ManholeService`.
    """
    args, kwargs = _parse(description)
    kind = args[0]
    if kind == "unix":
        listen_on = _check_unix(description, args, kwargs)
    elif kind == "tcp":
        if keys_path is None:
            _check_tcp(description, args, kwargs)
        listen_on = description
    else:
        raise SettingError(
            f"manhole endpoint {description!r}: type {kind!r} is not allowed; use unix:PATH"
            " (recommended), tcp:PORT:interface=127.0.0.1, or tcp with a keys file (SSH)"
        )

    factory: IProtocolFactory
    fingerprint: str | None = None
    if keys_path is None:
        # Annotated as Any: Factory's type parameter wants a `factory` property insults lacks.
        build: Callable[[], Any] = _terminal_factory(namespace)
        factory = Factory.forProtocol(build)
    else:
        factory, fingerprint = _ssh_factory(namespace, _check_keys_file(description, keys_path))

    try:
        endpoint = serverFromString(reactor, listen_on)
    except (ValueError, TypeError, KeyError) as e:
        raise SettingError(f"manhole endpoint {description!r} is not valid: {e}") from None
    service: IService = ManholeService(description, endpoint, factory, fingerprint)
    return service
