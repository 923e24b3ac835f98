"""Hosts on one machine for split mode: a network namespace per process, joined by a bridge in a
namespace of its own (never the root namespace, no default route, nothing leaves the machine).

Shared by ``bench/split.py``'s ``scale-netns`` and the chaos tests (tests/split/test_chaos.py):
the topology, the command lines of a front and a handler inside a namespace, and the clean-up.
Needs root and iproute2; :func:`unavailable` says why not, for a skip with a message.

Every namespace :class:`Net` creates is deleted by :meth:`Net.destroy` (idempotent), which the
caller runs in a ``finally`` and which also runs at interpreter exit, so an exception, a failed
assertion or a Ctrl-C leaves nothing behind. Deleting a namespace deletes the veth ends in it and
their peers: the namespaces are all there is to clean.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

# The port of the front's handler socket: every front has a namespace (an address) of its own.
HANDLER_PORT = 5560


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None if they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these as root)"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = f"czprobe{uuid.uuid4().hex[:6]}"
    if ip("netns", "add", probe, check=False).returncode != 0:
        return "cannot create network namespaces here (ip netns add failed)"
    ip("netns", "del", probe, check=False)
    return None


def in_namespace(ns: str) -> list[str]:
    """The prefix that runs a command in ``ns`` (``ip netns exec`` execs it: same PID)."""
    return ["ip", "netns", "exec", ns]


@dataclass(frozen=True)
class Host:
    ns: str  # the namespace's name
    address: str  # its address on the bridge
    link: str  # its veth end in the bridge's namespace (down = a partition)
    dev: str  # its veth end in its own namespace


class Net:
    """Namespaces on one bridge: :meth:`add` gives a namespace with an address on it."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.tag = tag
        # A /24 drawn from 10.200-249.x: two Nets alive at once (other tests, a bench) differ.
        self.subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
        self.bridge = f"czb{tag}"
        self.namespaces: list[str] = []
        self.hosts = 0
        atexit.register(self.destroy)
        try:
            self._new(self.bridge)
            self.run(self.bridge, "ip", "link", "add", "br0", "type", "bridge")
            self.run(self.bridge, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.destroy()
            raise

    def _new(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")

    def run(self, ns: str, *cmd: str) -> None:
        subprocess.run([*in_namespace(ns), *cmd], check=True, timeout=20, capture_output=True)

    def add(self, role: str) -> Host:
        """A namespace for ``role`` (its first letter names it), linked to the bridge."""
        self.hosts += 1
        ns = f"cz{role[:1]}{self.hosts}{self.tag}"
        self._new(ns)
        inner, outer = f"e{self.hosts}", f"p{self.hosts}{self.tag}"
        self.run(ns, "ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        self.run(ns, "ip", "link", "set", outer, "netns", self.bridge)
        self.run(self.bridge, "ip", "link", "set", outer, "master", "br0")
        self.run(self.bridge, "ip", "link", "set", outer, "up")
        address = f"{self.subnet}.{self.hosts}"
        self.run(ns, "ip", "addr", "add", f"{address}/24", "dev", inner)
        self.run(ns, "ip", "link", "set", inner, "up")
        return Host(ns, address, outer, inner)

    def link(self, outer: str, up: bool) -> None:
        self.run(self.bridge, "ip", "link", "set", outer, "up" if up else "down")

    def destroy(self) -> None:
        """Delete every namespace made (again: a no-op)."""
        while self.namespaces:
            ip("netns", "del", self.namespaces.pop(), check=False)
        atexit.unregister(self.destroy)


def front_args(address: str, listen: str, *extra: str) -> list[str]:
    """``catalyzer-front`` options for a front whose handler socket is on ``address`` (in its
    namespace) and HTTP on ``listen``; keys are not needed inside namespaces this machine made."""
    return [
        *("--listen", listen),
        *("--handlers", f"tcp://{address}:{HANDLER_PORT}", "--insecure-handlers"),
        *("--access-log", "off"),
        *extra,
    ]


def handler_args(front_address: str, app: str, threads: int, *extra: str) -> list[str]:
    """``catalyzer-handler`` options for a handler of ``app`` joining the front at
    ``front_address``."""
    return [
        *("--app", app, "--connect", f"tcp://{front_address}:{HANDLER_PORT}"),
        *("--threads", str(threads), "--access-log", "off"),
        *extra,
    ]
