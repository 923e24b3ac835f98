"""The ``--threads`` pool: N daemon threads that run the application, and the way back to the
reactor, with as few thread wake-ups as a request allows.

Twisted's ``ThreadPool`` hands each call through a coordinator (``Team``, ``LockWorker``, a
``queue.Queue`` per worker: three locks and a context lookup per call), and ``callFromThread``
writes to the reactor's waker pipe once per call. On a hello-world app that machinery, and the
GIL hand-offs each lock and pipe write invite, was most of what ``--threads`` cost per request.
Here a call is a ``deque`` append and, when a thread is parked, one lock release, and the answers
of all threads share one waker write until the reactor has taken them: under load many responses
complete per reactor wake-up instead of one.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["AppThreads", "ThreadStartError"]

log = Logger(namespace="catalyzer.app")

_Call = tuple[Callable[..., object], tuple[Any, ...]]


class ThreadStartError(RuntimeError):
    """The system refused one of the pool's threads (a limit on threads or on memory). The
    threads already started have ended: the pool is as before :meth:`AppThreads.start`."""


class AppThreads:
    """``size`` threads fed from one queue (:meth:`callInThread`), answering through
    :meth:`call_from_thread`, which runs its calls in the reactor thread in order.

    ``wake_reactor`` is the reactor's own ``callFromThread``: it is called at most once per batch
    of answers the reactor has not yet taken. With ``woken_at_poll`` set, the reactor calls
    :meth:`poll_begins` each time it is about to wait for events, and only then are threads woken
    for the calls it queued meanwhile.

    ``since[n]`` is when thread ``n`` began its current call (``clock``'s time; 0.0: waiting
    for one), written by that thread alone, so that the reactor thread can tell a pool whose
    every thread is stuck in a long call (:mod:`catalyzer.prefork.poolrescue`); and
    ``on_saturated``, if set, is called in the reactor thread when a call is queued while every
    thread is busy."""

    def __init__(
        self,
        size: int,
        wake_reactor: Callable[[Callable[[], None]], object],
        name: str = "catalyzer-app",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self.size = size
        self.name = name
        self._wake_reactor = wake_reactor
        # Calls not yet taken, and the wake-up locks of the threads parked for want of one (last
        # parked on top: the thread woken next is the one whose memory is still in cache). A
        # parked thread sleeps acquiring its own lock, which it holds at every other moment.
        self._jobs: collections.deque[_Call | None] = collections.deque()
        self._parked: list[threading.Lock] = []
        # A thread has been woken and has not yet looked for a call: it will take the next one.
        self._waking = False
        # Set once the reactor calls poll_begins before each wait for events: a call queued
        # while the reactor runs then wakes no thread. One woken at once would only wait for the
        # GIL, which the reactor gives up when it waits: its wake-up and its wait for the GIL
        # are saved, and the calls of a whole reactor turn go to the thread together.
        self.woken_at_poll = False
        # Appended by the pool threads, emptied by the reactor thread: deque's append and
        # popleft are atomic, so no lock is needed.
        self._answers: collections.deque[_Call] = collections.deque()
        self._wake_pending = False
        self.threads: list[threading.Thread] = []
        self.clock = clock
        self.since = [0.0] * size
        self.on_saturated: Callable[[], object] | None = None

    def start(self) -> None:
        for n in range(self.size):
            # Daemon: a thread stuck in the app must not keep the process alive past die-timeout.
            thread = threading.Thread(
                target=self._work, args=(n,), name=f"{self.name}-{n}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as e:
                self.stop()
                raise ThreadStartError(
                    f"--threads {self.size}: the system refused thread {n + 1} ({e}); use "
                    "fewer threads or raise the process's limits (ulimit -u, ulimit -v, systemd TasksMax)"
                ) from None
            self.threads.append(thread)

    def stop(self) -> None:
        """Let every thread finish the call in hand, then end them (called once no request is
        in flight)."""
        # One None each; the thread that takes one wakes the next while any are left.
        self._jobs.extend([None] * len(self.threads))
        self._wake_one()
        for thread in self.threads:
            thread.join()
        self.threads = []

    def callInThread(self, f: Callable[..., object], /, *args: Any) -> None:
        self._jobs.append((f, args))
        if not self.woken_at_poll:
            self._wake_one()
        if self.on_saturated is not None and 0.0 not in self.since:
            self.on_saturated()

    @property
    def parked(self) -> int:
        """How many threads are waiting for a call (not yet woken for one)."""
        return len(self._parked)

    def poll_begins(self) -> None:
        """The reactor is about to wait for events (with :attr:`woken_at_poll`): wake a thread
        for the calls it queued since it last did."""
        if self._jobs:
            self._wake_one()

    def _wake_one(self) -> None:
        """Wake a parked thread for the calls queued, unless one woken already has yet to look
        for them. With none parked, every thread is busy or about to look for a call again."""
        if self._waking:
            return
        try:
            wake = self._parked.pop()
        except IndexError:
            return
        self._waking = True
        wake.release()

    def _next(self, wake: threading.Lock) -> _Call | None:
        """The oldest call not yet taken, parking this thread until there is one.

        One thread is woken at a time, and wakes the next only if it leaves calls behind:
        ``queue.SimpleQueue`` passes a wake-up on from each woken thread to the next, which then
        takes the GIL only to find nothing to do and park again, and with a GIL every such
        hand-off is paid for by the threads that had work. A call that takes long still has
        the calls behind it taken by other threads (woken by the one that took it)."""
        jobs = self._jobs
        parked = self._parked
        while True:
            try:
                job = jobs.popleft()
            except IndexError:
                pass
            else:
                if jobs:
                    self._wake_one()
                return job
            parked.append(wake)
            if jobs:  # queued after we looked and before we were parked: the queuer missed us
                try:
                    parked.remove(wake)
                    continue
                except ValueError:  # or it found us: take its wake-up, then the call
                    pass
            wake.acquire()
            self._waking = False

    def _work(self, slot: int) -> None:
        wake = threading.Lock()
        wake.acquire()
        next_job = self._next
        since = self.since
        clock = self.clock
        while (job := next_job(wake)) is not None:
            f, args = job
            since[slot] = clock()
            try:
                f(*args)
            except BaseException:  # the responses catch their own; never lose a thread
                log.failure("a call in the application thread pool raised")
            finally:
                since[slot] = 0.0

    # -- the way back

    def call_from_thread(self, f: Callable[..., object], /, *args: Any) -> None:
        """Run ``f(*args)`` in the reactor thread, after every call made before it."""
        self._answers.append((f, args))
        # Appended before the flag is read: a drain that has already cleared the flag is either
        # still looping (and takes this answer) or is followed by the wake-up asked here.
        if not self._wake_pending:
            self._wake_pending = True
            self._wake_reactor(self._drain)

    def _drain(self) -> None:
        self._wake_pending = False
        answers = self._answers
        try:
            while answers:
                f, args = answers.popleft()
                f(*args)
        finally:
            # Only if a call raised (the reactor logs it): the answers behind it still run.
            if answers and not self._wake_pending:
                self._wake_pending = True
                self._wake_reactor(self._drain)
