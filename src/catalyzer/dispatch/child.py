"""A dispatcher child: ``python -m catalyzer.dispatch.child``, spawned by
:class:`catalyzer.dispatch.PreforkDispatcher` (never by hand).

A fresh interpreter that runs one task at a time, in a plain blocking loop (no reactor: a task is
ordinary blocking code). It speaks AMP on the control socket the dispatcher passed, without
importing Twisted, which keeps its start-up short:

- to the dispatcher: ``Ready`` once ``fork_init`` has run; for each task, ``ResultChunk`` boxes
  for a result larger than one AMP value, then the answer to ``Run`` (``ok``, ``data``);
- from the dispatcher: ``Chunk`` boxes (arguments larger than one AMP value), ``Run`` (the
  task's target and the last piece of its pickled arguments), ``Stop`` (exit once read).

It runs ``fork_init`` and imports the ``classes`` modules before it says Ready (a failure there
is a boot failure: exit status 3, the traceback on stderr). It ignores SIGINT (a Ctrl-C in a terminal reaches the whole process group: the dispatcher decides
when its children stop), exits on end-of-file on the control socket, and dies with its parent
(``PR_SET_PDEATHSIG`` on Linux). SIGTERM from outside ends it after the task in hand.

The dispatcher passes its settings as JSON in ``CATALYZER_DISPATCH``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from catalyzer.dispatch import tasks, wire

BOOT_FAILURE: Final = 3  # as catalyzer.process.supervision.BOOT_FAILURE

_PR_SET_PDEATHSIG: Final = 1


class _Stopping(Exception):
    """Raised out of a blocking read by SIGTERM when no task is in hand."""


class Child:
    def __init__(self, spec: Mapping[str, Any], sock: socket.socket) -> None:
        self.sock = sock
        self.classes: list[str] = list(spec.get("classes", ()))
        self.precall = _hook(spec.get("precall"))
        self.postcall = _hook(spec.get("postcall"))
        self.parser = wire.BoxParser()
        self.pending: list[dict[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.found: dict[str, Callable[..., Any]] = {}
        self.waiting = False  # blocked reading the socket: SIGTERM may end us at once
        self.stop_requested = False

    # -- the loop

    def serve(self) -> None:
        self.send(wire.encode_box([(b"_command", b"Ready"), (b"pid", b"%d" % os.getpid())]))
        while True:
            box = self.next_box()
            if box is None:
                return
            command = box.get(b"_command")
            if command == b"Run":
                self.run(box)
            elif command == b"Chunk":
                self.chunks.append(box[b"data"])
            elif command == b"Stop":
                return
            # Anything else (an answer to one of our boxes) needs nothing from us.
            if self.stop_requested:
                return

    def next_box(self) -> dict[bytes, bytes] | None:
        while not self.pending:
            try:
                self.waiting = True
                if self.stop_requested:
                    return None
                data = self.sock.recv(65536)
            except _Stopping:
                return None
            finally:
                self.waiting = False
            if not data:
                return None
            self.pending = self.parser.feed(data)
        return self.pending.pop(0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- one task

    def run(self, box: dict[bytes, bytes]) -> None:
        target = box[b"target"].decode("utf-8")
        payload = b"".join([*self.chunks, box[b"data"]]) if self.chunks else box[b"data"]
        self.chunks = []
        ok, data = self.call(target, payload)
        pieces = tasks.split(data)
        out = [wire.encode_box([(b"_command", b"ResultChunk"), (b"data", p)]) for p in pieces[:-1]]
        out.append(
            wire.encode_box(
                [
                    (b"_answer", box[b"_ask"]),
                    (b"ok", b"True" if ok else b"False"),
                    (b"data", pieces[-1]),
                ]
            )
        )
        self.send(b"".join(out))

    def call(self, target: str, payload: bytes) -> tuple[bool, bytes]:
        """``(True, pickled value)`` or ``(False, JSON error)``."""
        try:
            args = tasks.loads(payload)
        except Exception as e:
            return False, tasks.error_from_exception(e).to_json()
        value, error = tasks.call(
            target,
            args,
            self.classes,
            found=self.found,
            precall=self.precall,
            postcall=self.postcall,
        )
        if error is not None:
            return False, error.to_json()
        try:
            return True, tasks.dumps(value)
        except tasks.SerializationError as e:
            return False, tasks.TaskError(tasks.SERIALIZATION, f"the result: {e}").to_json()

    # -- signals

    def terminate(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True
        if self.waiting:
            raise _Stopping
        # Otherwise the loop ends after the task or box in hand.


def _hook(path: str | None) -> Callable[..., Any] | None:
    return tasks.load_path(path) if path else None


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(0)


def main() -> None:
    if wire.ENV_KEY not in os.environ:
        raise SystemExit(
            "catalyzer.dispatch.child is started by a PreforkDispatcher, not by hand "
            f"(it reads its spec from {wire.ENV_KEY})"
        )
    spec = json.loads(os.environ.pop(wire.ENV_KEY))
    _die_with_parent(int(spec["parent"]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path[:0] = [p for p in spec.get("path", ()) if p not in sys.path]
    name = spec.get("name")
    if name:
        try:
            from setproctitle import setproctitle
        except ImportError:
            pass
        else:
            setproctitle(f"{name} child")
    sock = socket.socket(fileno=int(spec["control_fd"]))
    try:
        init = spec.get("fork_init")
        if init:
            tasks.load_path(init)()
        # The modules searched for tasks by name are imported now: one that cannot be is a
        # boot failure (which halts the dispatcher), not an error in every task.
        for module in spec.get("classes", ()):
            importlib.import_module(module)
        child = Child(spec, sock)
    except Exception:
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(BOOT_FAILURE)
    signal.signal(signal.SIGTERM, child.terminate)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the dispatcher went away
        child.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
