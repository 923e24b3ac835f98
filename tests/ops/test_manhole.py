"""The manhole: endpoint policy in memory (MemoryReactor, nothing bound), then real sessions.

The real sessions run the manhole in a subprocess (this file run as a script: ``serve``), which
prints ``READY`` once it listens; the tests talk to it with plain sockets on a unix socket in
``tmp_path`` or on 127.0.0.1, reading with deadlines. SSH sessions use Twisted Conch's client, also
in a subprocess (this file again: ``ssh``), and OpenSSH's ``ssh`` when it is installed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from catalyzer.ops.manhole import ManholeService, banner, make_manhole_service
from catalyzer.settings import SettingError

DEADLINE = 8.0  # for any one wait on a socket or a client subprocess
START_DEADLINE = 15.0  # from exec to READY (well under a second when the machine is idle)
SCRIPT = Path(__file__).resolve()
PROMPT = b">>> "


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n


def namespace() -> dict[str, object]:
    return {"stats": lambda: {"requests": 42}, "counter": Counter()}


# -- policy, in memory -----------------------------------------------------------------------


def start(description: str, keys_path: str | None = None) -> tuple[Any, ManholeService]:
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    service = make_manhole_service(description, namespace(), reactor, keys_path)
    assert isinstance(service, ManholeService)
    service.startService()
    return reactor, service


def refused(description: str, match: str, keys_path: str | None = None) -> str:
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    with pytest.raises(SettingError, match=match) as info:
        make_manhole_service(description, namespace(), reactor, keys_path)
    assert reactor.tcpServers == [] and reactor.unixServers == []
    message = str(info.value)
    assert repr(description) in message and "\n" not in message
    return message


def test_banner_lists_the_namespace_in_order() -> None:
    ns: dict[str, object] = {
        "workers": lambda: [],
        "dump": print,
        "stats": dict,  # a class: not shown as a call
        "reload": Counter().bump,
        "server": object(),
        "_private": 1,
    }
    assert banner(ns) == "catalyzer manhole: workers(), dump(), stats, reload(), server"


def test_unix_socket_gets_mode_0600() -> None:
    reactor, service = start("unix:/run/x/manhole.sock")
    [(address, _factory, _backlog, mode, _want_pid)] = reactor.unixServers
    assert address == "/run/x/manhole.sock"
    assert mode == 0o600
    assert service.port is not None and service.host_key_fingerprint is None


@pytest.mark.parametrize("description", ["unix:/run/m.sock:mode=0600", "unix:/run/m.sock:0400"])
def test_unix_socket_with_an_owner_only_mode_is_kept(description: str) -> None:
    reactor, _ = start(description)
    [(_address, _factory, _backlog, mode, _want_pid)] = reactor.unixServers
    assert mode & 0o077 == 0


@pytest.mark.parametrize(
    "description",
    ["unix:/run/m.sock:mode=0666", "unix:/run/m.sock:mode=0660", "unix:/run/m.sock:0644"],
)
def test_unix_socket_open_to_group_or_others_is_refused(description: str) -> None:
    refused(description, "group or others")


def test_unix_socket_with_a_bad_mode_is_refused() -> None:
    refused("unix:/run/m.sock:mode=rw", "not an octal file mode")


@pytest.mark.parametrize("description", ["tcp:0", "tcp:8022", "tcp:0:interface=0.0.0.0"])
def test_tcp_on_every_interface_without_keys_is_refused(description: str) -> None:
    refused(description, "only listen on")


@pytest.mark.parametrize(
    "description", ["tcp:0:interface=10.1.2.3", "tcp:0:interface=localhost", "tcp:0:192.0.2.1"]
)
def test_tcp_on_a_non_loopback_interface_without_keys_is_refused(description: str) -> None:
    refused(description, "not a loopback address")


@pytest.mark.parametrize(
    ("description", "interface"),
    [
        ("tcp:0:interface=127.0.0.1", "127.0.0.1"),
        ("tcp:0:interface=\\:\\:1", "::1"),
        ("tcp:8022:127.0.0.1", "127.0.0.1"),  # interface given positionally
    ],
)
def test_tcp_on_loopback_is_allowed(description: str, interface: str) -> None:
    reactor, _ = start(description)
    [(_port, _factory, _backlog, bound)] = reactor.tcpServers
    assert bound == interface


@pytest.mark.parametrize(
    "description", ["ssl:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1", "stdio:", "systemd:"]
)
def test_other_endpoint_types_are_refused(description: str) -> None:
    refused(description, "is not allowed")


def test_malformed_endpoint_is_a_setting_error() -> None:
    refused("tcp:http:interface=127.0.0.1", "not valid")


def test_missing_keys_file_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    message = refused("tcp:0", "does not exist", missing)
    assert repr(missing) in message


def test_keys_file_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    refused("tcp:0", "not a regular file", str(tmp_path))


def test_keys_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    keys = write_key_pair(tmp_path, "client")[1]
    os.chmod(keys, 0o664)
    refused("tcp:0", "writable by group or others", str(keys))


def test_keys_file_without_keys_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text("# nobody yet\nnot a key\n")
    refused("tcp:0", "no usable public key", str(keys))


def test_keys_allow_every_interface_over_ssh(tmp_path: Path) -> None:
    from twisted.conch.manhole_ssh import ConchFactory

    keys = write_key_pair(tmp_path, "client")[1]
    reactor, service = start("tcp:0", str(keys))
    [(_port, factory, _backlog, interface)] = reactor.tcpServers
    assert interface == "" and isinstance(factory, ConchFactory)
    assert service.host_key_fingerprint is not None
    assert service.host_key_fingerprint.startswith("SHA256:")
    # A new host key per service, held by the instance (not ConchFactory's shared class dicts).
    _, other = start("tcp:0", str(keys))
    assert other.host_key_fingerprint != service.host_key_fingerprint
    assert ConchFactory.publicKeys == {}


def test_keys_over_a_unix_socket_is_ssh_with_mode_0600(tmp_path: Path) -> None:
    from twisted.conch.manhole_ssh import ConchFactory

    keys = write_key_pair(tmp_path, "client")[1]
    reactor, _ = start("unix:/run/m.sock", str(keys))
    [(_address, factory, _backlog, mode, _want_pid)] = reactor.unixServers
    assert mode == 0o600 and isinstance(factory, ConchFactory)


def test_stopping_the_service_forgets_the_port() -> None:
    reactor, service = start("unix:/run/m.sock")
    assert reactor.unixServers and service.port is not None and service.running
    service.stopService()
    assert service.port is None and not service.running


def plain_session() -> tuple[Any, Any]:
    """A plain manhole protocol on a StringTransport: (protocol, transport)."""
    from twisted.internet.testing import StringTransport

    reactor, _ = start("unix:/run/m.sock")
    factory = reactor.unixServers[0][1]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_a_dumb_client_gets_no_escape_sequences() -> None:
    proto, transport = plain_session()
    for line in [b"x = 1", b"x + 1", b"print('a\\nb')", b"1/0", b"for i in (1, 2):", b"  i", b""]:
        proto.dataReceived(line + b"\r\n")
    out = transport.value()
    assert b"\x1b" not in out and b"\r\n2\r\n" in out and b"\r\na\r\nb\r\n" in out
    assert out.startswith(b"catalyzer manhole: stats(), counter\r\n>>> ")


def test_line_endings_split_across_reads() -> None:
    proto, transport = plain_session()
    transport.clear()
    proto.dataReceived(b"1 + 1\r")  # bare CR: run now
    assert transport.value() == b"1 + 1\r\n2\r\n>>> "
    transport.clear()
    proto.dataReceived(b"\n")  # the LF of that CR LF: not a second Enter
    assert transport.value() == b""
    proto.dataReceived(b"\n")  # a second LF is
    assert transport.value() == b"\r\n>>> "
    transport.clear()
    proto.dataReceived(b"3\r")
    proto.dataReceived(b"\x00")  # CR NUL
    proto.dataReceived(b"4\n")
    assert transport.value() == b"3\r\n3\r\n>>> 4\r\n4\r\n>>> "


def test_editing_keys_put_the_terminal_in_insert_mode_once() -> None:
    proto, transport = plain_session()
    transport.clear()
    proto.dataReceived(b"ab\x1b[D")  # left arrow: a real terminal
    assert transport.value() == b"ab\x1b[4h\x1b[1D"
    proto.dataReceived(b"\x1b[Dc\r")
    assert transport.value().count(b"\x1b[4h") == 1
    assert transport.value().endswith(b"\r\nNameError: name 'cab' is not defined\r\n>>> ")


# -- helpers for real sessions -----------------------------------------------------------------


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """An Ed25519 key pair: (private key file, authorized_keys file holding its public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = directory / f"{name}_key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    os.chmod(private, 0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    authorized = directory / f"{name}_authorized_keys"
    authorized.write_bytes(b"# manhole test\n" + public + b" test@catalyzer\n")
    os.chmod(authorized, 0o600)
    return private, authorized


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    where: str  # the socket path, or the tcp port
    fingerprint: str | None
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


@contextlib.contextmanager
def manhole_server(tmp_path: Path, description: str, keys: Path | None = None) -> Iterator[Server]:
    log = tmp_path / "server.log"
    args = [sys.executable, "-P", str(SCRIPT), "serve", description]
    if keys is not None:
        args.append(str(keys))
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file, cwd=tmp_path)
    try:
        line = _read_line(proc, time.monotonic() + START_DEADLINE).decode()
        words = line.split()
        if not words or words[0] != "READY":
            pytest.fail(f"manhole did not start: {line!r}\n{log.read_text(errors='replace')}")
        yield Server(proc, words[1], None if words[2] == "-" else words[2], log)
        assert proc.poll() is None, "the server died during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


class Session:
    """A raw client: sends lines, reads up to a prompt with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def unix(cls, path: str) -> Session:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def tcp(cls, port: int) -> Session:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))

    def read_until(self, needle: bytes) -> bytes:
        """Everything up to and including the next ``needle``; fails at the deadline."""
        deadline = time.monotonic() + DEADLINE
        while needle not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {needle!r} within {DEADLINE} s; got {self.buf!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                pytest.fail(f"connection closed before {needle!r}; got {self.buf!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(needle)
        return head + needle

    def run(self, line: bytes, end: bytes = b"\r\n") -> list[bytes]:
        """Send ``line``; the output lines up to the next prompt (the echoed input first)."""
        self.sock.sendall(line + end)
        return self.read_until(PROMPT)[: -len(PROMPT)].split(b"\r\n")

    def closed_by_server(self) -> bool:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self) -> None:
        self.sock.close()


def ssh(target: str, key: Path, *lines: str) -> subprocess.CompletedProcess[str]:
    """Run Conch's client (this file, ``ssh``) against ``target``, a client endpoint."""
    return subprocess.run(
        [sys.executable, "-P", str(SCRIPT), "ssh", target, str(key), *lines],
        capture_output=True,
        text=True,
        timeout=START_DEADLINE + DEADLINE,
        check=False,
    )


# -- real sessions -------------------------------------------------------------------------------


@pytest.mark.integration
def test_session_over_the_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    with manhole_server(tmp_path, f"unix:{path}") as server:
        assert server.where == path
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600

        s = Session.unix(path)
        assert s.read_until(PROMPT) == b"catalyzer manhole: stats(), counter\r\n>>> "
        assert s.run(b'stats()["requests"] + 1') == [b'stats()["requests"] + 1', b"43", b""]
        assert s.run(b"total = counter.bump() + 100")[1:] == [b""]
        assert s.run(b"total")[1:] == [b"101", b""]
        # A bare CR (what a terminal in raw mode sends for Enter) runs the line at once.
        assert s.run(b"6 * 7", end=b"\r")[1:] == [b"42", b""]
        assert s.run(b"print('hello')")[1:] == [b"hello", b""]
        assert b"ZeroDivisionError: division by zero" in s.run(b"1 / 0")
        s.sock.sendall(b"def f():\r\n")
        assert s.read_until(b"... ") == b"def f():\r\n... "
        s.sock.sendall(b"    return 7\r\n")
        assert s.read_until(b"... ") == b"    return 7\r\n... "
        assert s.run(b"") == [b"", b""]
        assert s.run(b"f()")[1:] == [b"7", b""]

        # Another session: its own globals, the same live objects.
        t = Session.unix(path)
        t.read_until(PROMPT)
        assert b"NameError: name 'total' is not defined" in t.run(b"total")
        assert t.run(b"counter.n")[1:] == [b"1", b""]
        # exit() and SystemExit end the session, not the server.
        t.sock.sendall(b"exit()\r\n")
        assert t.closed_by_server()
        t.close()
        s.sock.sendall(b"raise SystemExit(3)\r\n")
        assert s.closed_by_server()
        s.close()

        u = Session.unix(path)
        u.read_until(PROMPT)
        assert u.run(b"counter.bump()")[1:] == [b"2", b""]
        u.sock.sendall(b"\x04")  # Ctrl-D on an empty line
        assert u.closed_by_server()
        u.close()


@pytest.mark.integration
def test_session_over_loopback_tcp(tmp_path: Path) -> None:
    with manhole_server(tmp_path, "tcp:0:interface=127.0.0.1") as server:
        s = Session.tcp(int(server.where))
        assert s.read_until(PROMPT).startswith(b"catalyzer manhole: ")
        assert s.run(b'stats()["requests"] + 1')[1:] == [b"43", b""]
        s.close()


@pytest.mark.integration
def test_ssh_with_the_authorized_key(tmp_path: Path) -> None:
    key, authorized = write_key_pair(tmp_path, "client")
    with manhole_server(tmp_path, "tcp:0:interface=127.0.0.1", authorized) as server:
        assert server.fingerprint is not None
        assert server.fingerprint in server.log_text()
        done = ssh(
            f"tcp:127.0.0.1:{server.where}", key, 'stats()["requests"] + 1', "y = 21", "y * 2"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"HOSTKEY {server.fingerprint}" in done.stdout
        lines = done.stdout.splitlines()
        assert "catalyzer manhole: stats(), counter" in lines
        assert "43" in lines and "42" in lines
        assert "EXIT-STATUS 0" in lines  # exit() ends the session like a shell that succeeded


@pytest.mark.integration
def test_ssh_with_another_key_is_rejected(tmp_path: Path) -> None:
    authorized = write_key_pair(tmp_path, "client")[1]
    stranger = write_key_pair(tmp_path, "stranger")[0]
    with manhole_server(tmp_path, "tcp:0:interface=127.0.0.1", authorized) as server:
        done = ssh(f"tcp:127.0.0.1:{server.where}", stranger, 'stats()["requests"] + 1')
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"HOSTKEY {server.fingerprint}" in done.stdout
        # Not the whole output: the random host key's fingerprint may contain "43".
        answer = done.stdout.split("\n", 1)[1]
        assert "NOT AUTHENTICATED" in answer and "43" not in answer


@pytest.mark.integration
def test_ssh_over_a_unix_socket(tmp_path: Path) -> None:
    key, authorized = write_key_pair(tmp_path, "client")
    path = str(tmp_path / "m.sock")
    with manhole_server(tmp_path, f"unix:{path}", authorized):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        done = ssh(f"unix:{path}", key, 'stats()["requests"] + 1')
        assert done.returncode == 0, done.stdout + done.stderr
        assert "43" in done.stdout.splitlines()


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
    reason="OpenSSH client not installed",
)
def test_openssh_client_without_a_pty(tmp_path: Path) -> None:
    key, authorized = write_key_pair(tmp_path, "client")
    with manhole_server(tmp_path, "tcp:0:interface=127.0.0.1", authorized) as server:
        config = tmp_path / "ssh_config"
        config.write_text("")
        # Host key checking: the test's own known_hosts, so nothing outside tmp_path is touched.
        command = ["ssh", "-F", str(config), "-T", "-p", server.where, "-i", str(key)]
        for option in [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=accept-new",
            f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "LogLevel=ERROR",
            f"ConnectTimeout={DEADLINE:.0f}",
        ]:
            command += ["-o", option]
        command.append("anyone@127.0.0.1")
        # No pty: lines on stdin, each run in turn; end of input ends the session (exit status 0).
        done = subprocess.run(
            command,
            input='stats()["requests"] + 1\n',
            capture_output=True,
            text=True,
            timeout=START_DEADLINE,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "43" in done.stdout.splitlines()
        # The key OpenSSH saw is the one the server logged.
        seen = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(tmp_path / "known_hosts")],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=True,
        )
        assert f" {server.fingerprint} " in seen.stdout


# -- the subprocesses ----------------------------------------------------------------------------


def _serve(description: str, keys_path: str | None) -> None:
    """Start the manhole on ``description``; print ``READY <path or port> <fingerprint or ->``."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = make_manhole_service(description, namespace(), reactor, keys_path)
    assert isinstance(service, ManholeService)
    service.startService()
    assert service.port is not None
    host: Any = service.port.getHost()
    where = host.port if description.startswith("tcp:") else os.fsdecode(host.name)
    print("READY", where, service.host_key_fingerprint or "-", flush=True)
    reactor.run()


def _ssh(target: str, key_path: str, lines: list[str]) -> int:
    """Log in to the SSH manhole at ``target`` with the key in ``key_path``, open a shell on a dumb
    pty, send ``lines`` and ``exit()``, print what came back. Prints ``HOSTKEY <fingerprint>``
    once the server presented its key. Exit status: 0 session ran, 2 not authenticated, 3 timed
    out, 4 could not connect."""
    from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.protocol import Factory

    key = keys.Key.fromFile(key_path)
    state = {"code": 4, "authenticated": False}

    def finish(code: int) -> None:
        state["code"] = code
        if reactor.running:
            reactor.stop()

    class Shell(channel.SSHChannel):
        name = b"session"

        def channelOpen(self, data: bytes) -> None:
            pty = session.packRequest_pty_req(b"dumb", (24, 80, 0, 0), b"")
            self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
            d = self.conn.sendRequest(self, b"shell", b"", wantReply=True)
            d.addCallback(
                lambda _: self.write("".join(f"{x}\r" for x in [*lines, "exit()"]).encode())
            )

        def dataReceived(self, data: bytes) -> None:
            sys.stdout.write(data.decode("utf-8", "replace"))

        def request_exit_status(self, data: bytes) -> int:
            print("\nEXIT-STATUS", int.from_bytes(data[:4], "big"), flush=True)
            return 1

        def closed(self) -> None:
            self.conn.transport.loseConnection()

    class Connection(connection.SSHConnection):
        def serviceStarted(self) -> None:
            state["authenticated"] = True
            print("OUTPUT", flush=True)
            self.openChannel(Shell(conn=self))

    class Auth(userauth.SSHUserAuthClient):
        offered = False

        def getPublicKey(self) -> Any:
            if self.offered:
                return None
            self.offered = True
            return key.public()

        def getPrivateKey(self) -> Any:
            return defer.succeed(key)

        def getPassword(self, prompt: object = None) -> None:
            return None

    class Client(transport.SSHClientTransport):
        def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
            digest = keys.Key.fromString(hostKey).fingerprint(keys.FingerprintFormats.SHA256_BASE64)
            print("HOSTKEY", "SHA256:" + digest.rstrip("="), flush=True)
            return defer.succeed(True)

        def connectionSecure(self) -> None:
            self.requestService(Auth(b"anyone", Connection()))

        def connectionLost(self, reason: object = None) -> None:
            super().connectionLost(reason)
            if not state["authenticated"]:
                print("NOT AUTHENTICATED", flush=True)
            finish(0 if state["authenticated"] else 2)

    def connected_failed(failure: Any) -> None:
        print("CONNECT FAILED", failure.getErrorMessage(), flush=True)
        finish(4)

    clientFromString(reactor, target).connect(Factory.forProtocol(Client)).addErrback(
        connected_failed
    )

    def timed_out() -> None:
        print("TIMEOUT", flush=True)
        finish(3)

    reactor.callLater(DEADLINE, timed_out)
    reactor.run()
    sys.stdout.flush()
    return int(state["code"])


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "ssh":
        sys.exit(_ssh(sys.argv[2], sys.argv[3], sys.argv[4:]))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve DESCRIPTION [KEYS] | ssh TARGET KEY LINE...")
