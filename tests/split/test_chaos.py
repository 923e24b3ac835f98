"""Split mode across hosts, on one machine: each process in a network namespace of its own,
joined by a bridge in another namespace this test creates (never the root namespace, no default
route, nothing leaves the machine). Needs root and iproute2; skipped with a message elsewhere.
Everything created is torn down in a ``finally``.

A handler is cut off by taking its link down mid-run (a partition, no process death): the front
loses it within the liveness window and re-dispatches what it had not started; a third handler
joins mid-run; the link comes back and the partitioned handler is reset and rejoins. The test
app journals ``request-id method pid`` before any work: every request got exactly one answer and
no POST ran twice. The second test puts latency and loss (20 ms +- 5 ms, 2%) on what each
handler receives: with ``tc netem`` where the kernel has sch_netem (tried, then after ``modprobe
sch_netem``); otherwise with iptables in the handler's namespace, a ``statistic`` match dropping
2% at random and an ``NFQUEUE`` rule whose packets tests/split/nfqdelay.py gives back 15-25 ms
later; skipped with what failed where neither works. The kernel's counters prove the loss and
the delay were there. The topology and command lines are bench/netns.py's, which
bench/split.py's ``scale-netns`` uses too."""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.netns import Net

from bench import netns
from tests.integration.conftest import REPO, ServerProcess, child_env
from tests.split.test_integration import APP, FAST, JOINED

pytestmark = pytest.mark.integration


def _netem_missing(net: Net) -> str | None:
    """Why ``tc netem`` cannot be used here (None if it can): tried on the loopback of the
    bridge's namespace, after ``modprobe sch_netem`` if the first try fails."""
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"

    def attempt() -> str | None:
        cmd = ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        try:
            net.run(net.bridge, *cmd)
        except subprocess.CalledProcessError as e:
            return e.stderr.decode(errors="replace").strip() or f"exit status {e.returncode}"
        net.run(net.bridge, "tc", "qdisc", "del", "dev", "lo", "root")
        return None

    failed = attempt()
    if failed is None:
        return None
    if shutil.which("modprobe") is None:
        loaded = "modprobe is not installed"
    else:
        done = subprocess.run(
            ["modprobe", "sch_netem"], capture_output=True, text=True, timeout=20, check=False
        )
        if done.returncode == 0 and (failed := attempt()) is None:
            return None
        loaded = done.stderr.strip() or f"exit status {done.returncode}"
    return (
        f"tc netem is not available: this kernel has no sch_netem qdisc (tc: {failed}; "
        f"modprobe sch_netem: {loaded})"
    )


@pytest.fixture
def net() -> Iterator[Net]:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    n = Net()
    try:
        yield n
    finally:
        n.destroy()


def _front_in(ns: str, addr: str, timing: list[str], log: Path) -> ServerProcess:
    """A front in namespace ``ns`` whose handler socket is bound on ``addr`` (started: the caller
    keeps it for the clean-up, then waits for it to listen)."""
    return ServerProcess(
        netns.front_args(addr, "tcp:0:interface=127.0.0.1", *timing),
        log,
        child_env(),
        command="catalyzer-front",
        prefix=netns.in_namespace(ns),
    )


def _handler_in(
    ns: str, front_addr: str, timing: list[str], journal: Path, log: Path
) -> ServerProcess:
    """A handler (3 threads) in namespace ``ns``, journaling every request it runs."""
    return ServerProcess(
        netns.handler_args(front_addr, APP, 3, *timing),
        log,
        child_env({"SPLIT_JOURNAL": str(journal)}),
        command="catalyzer-handler",
        prefix=netns.in_namespace(ns),
    )


def _loadgen(ns: str, port: int, count: int, seed: int, workers: int, out: Path) -> list[str]:
    """The command line of ``tests.split.loadgen`` run inside ``ns``."""
    return [
        *netns.in_namespace(ns),
        *(sys.executable, "-m", "tests.split.loadgen"),
        *(str(port), str(count), str(seed), str(workers), str(out)),
    ]


def test_partition_join_and_rejoin_lose_nothing(net: Net, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    processes: list[ServerProcess] = []
    try:
        front_host = net.add("front")
        front_ns, front_addr = front_host.ns, front_host.address
        front = _front_in(front_ns, front_addr, FAST, tmp_path / "front.log")
        processes.append(front)
        front.wait_listening()

        def handler(role: str) -> tuple[ServerProcess, str]:
            host = net.add(role)
            ns, outer = host.ns, host.link
            joined = len(re.findall(JOINED, front.log()))
            process = _handler_in(ns, front_addr, FAST, journal, tmp_path / f"{role}.log")
            processes.append(process)
            front.wait_for_log(JOINED, deadline=20.0, count=joined + 1)
            return process, outer

        cut, cut_link = handler("h1")
        handler("h2")
        out = tmp_path / "outcomes.json"
        load = subprocess.Popen(
            _loadgen(front_ns, front.port, 1200, 17, 12, out), cwd=REPO, env=child_env()
        )
        try:
            front.wait_until(
                lambda: (
                    True if journal.exists() and journal.read_text().count("\n") > 150 else None
                ),
                60.0,
                "the load under way",
            )
            net.link(cut_link, up=False)  # a partition: the process lives on
            front.wait_for_log(rf"handler \S+ pid {cut.pid} lost: silent for 1.5s", deadline=20.0)
            joiner, _ = handler("h3")  # joins mid-run
            net.link(cut_link, up=True)
            front.wait_for_log(
                rf"handler \S+ pid {cut.pid} tag \S+ joined with", count=2, deadline=30.0
            )
            assert load.wait(timeout=240) == 0
        finally:
            if load.poll() is None:
                load.kill()
                load.wait(timeout=10)
        rows = json.loads(out.read_text())
        assert len(rows) == 1200
        assert len({r["rid"] for r in rows}) == 1200  # one answer each
        assert [r for r in rows if r["status"] is None] == []
        assert [r for r in rows if r["pid"] == -1] == []
        ran: dict[str, list[int]] = collections.defaultdict(list)
        for line in journal.read_text().splitlines():
            rid, _method, pid = line.split()
            ran[rid].append(int(pid))
        assert [rid for rid, pids in ran.items() if rid.startswith("p") and len(pids) > 1] == []
        for r in rows:
            if r["status"] != 200:
                # Only a POST told to go on the partitioned handler: 502, run there at most once.
                assert (r["status"], r["method"]) == (502, "POST"), r
                assert ran[r["rid"]] in ([], [cut.pid])
        served = collections.Counter(r["pid"] for r in rows if r["status"] == 200)
        assert served[joiner.pid] > 0  # the handler that joined mid-run took work
    finally:
        for process in reversed(processes):
            process.terminate()


# 20 ms +- 5 ms and 2% loss on what each handler receives.
DELAY_MS, JITTER_MS, LOSS_PERCENT = 20, 5, 2
IPTABLES = ("iptables", "iptables-legacy")


def _iptables_missing(net: Net) -> tuple[str | None, str]:
    """Without netem: the iptables that can queue packets to user space (NFQUEUE, for the delay)
    and drop at random (the ``statistic`` match, for the loss) in a namespace, or why none can
    (tried in the bridge's namespace, on its loopback, rules removed after)."""
    tried = []
    for tool in IPTABLES:
        if shutil.which(tool) is None:
            tried.append(f"{tool}: not installed")
            continue
        rules = [
            ["-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "ACCEPT"],
            ["-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"],
        ]
        try:
            for rule in rules:
                net.run(net.bridge, tool, "-A", "INPUT", "-i", "lo", *rule)
        except subprocess.CalledProcessError as e:
            tried.append(f"{tool}: {e.stderr.decode(errors='replace').strip()}")
            continue
        finally:
            flush = [*netns.in_namespace(net.bridge), tool, "-F", "INPUT"]
            subprocess.run(flush, capture_output=True, timeout=20, check=False)
        return tool, ""
    return None, "; ".join(tried)


class Impaired:
    """Delay and loss on what a handler's namespace receives: ``tc netem`` on its bridge port
    where the kernel has sch_netem; otherwise an iptables ``statistic`` match dropping at random
    and an ``NFQUEUE`` rule whose packets tests.split.nfqdelay gives back late."""

    def __init__(self, net: Net, tmp_path: Path) -> None:
        self.net = net
        self.tmp_path = tmp_path
        netem = _netem_missing(net)
        self.iptables: str | None = None
        if netem is not None:
            self.iptables, why = _iptables_missing(net)
            if self.iptables is None:
                pytest.skip(f"{netem}; and no iptables with NFQUEUE and statistic: {why}")
        self.delayers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.hosts: list[netns.Host] = []

    @property
    def how(self) -> str:
        return "tc netem" if self.iptables is None else f"{self.iptables} + nfqdelay"

    def impair(self, host: netns.Host, queue: int) -> None:
        if self.iptables is None:
            tc = ["tc", "qdisc", "add", "dev", host.link, "root", "netem"]
            tc += ["delay", f"{DELAY_MS}ms", f"{JITTER_MS}ms", "loss", f"{LOSS_PERCENT}%"]
            self._run(self.net.bridge, tc)
            self.hosts.append(host)
            return
        log = self.tmp_path / f"nfqdelay-{queue}.log"
        with open(log, "wb") as out:
            delayer = subprocess.Popen(
                [
                    *netns.in_namespace(host.ns),
                    *(sys.executable, "-m", "tests.split.nfqdelay"),
                    *(str(queue), str(DELAY_MS), str(JITTER_MS), "300"),
                ],
                cwd=REPO,
                env=child_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.delayers.append((delayer, log))
        _wait_for_text(log, "ready", delayer, 20.0)
        loss = ["-m", "statistic", "--mode", "random", "--probability", f"{LOSS_PERCENT / 100}"]
        for rule in (
            [*loss, "-j", "DROP"],
            ["-j", "NFQUEUE", "--queue-num", str(queue)],
        ):
            self._run(host.ns, [self.iptables, "-A", "INPUT", "-i", host.dev, *rule])
        self.hosts.append(host)

    def _run(self, ns: str, cmd: list[str]) -> None:
        # The tool worked a moment ago (probed): a failure now is the test's.
        try:
            self.net.run(ns, *cmd)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"{cmd}: {e.stderr.decode(errors='replace').strip()}")

    def dropped_and_delayed(self) -> tuple[int, int]:
        """Packets dropped and delayed so far, over every impaired host (from the kernel's
        counters: proof the impairment was there)."""
        dropped = delayed = 0
        for host in self.hosts:
            if self.iptables is None:
                cmd = [*netns.in_namespace(self.net.bridge), "tc", "-s", "qdisc", "show"]
                text = subprocess.run(
                    [*cmd, "dev", host.link], capture_output=True, text=True, timeout=20, check=True
                ).stdout
                dropped += sum(int(n) for n in re.findall(r"dropped (\d+)", text))
                sent = re.findall(r"Sent \d+ bytes (\d+) pkt", text)
                delayed += sum(int(n) for n in sent)
                continue
            cmd = [*netns.in_namespace(host.ns), self.iptables, "-L", "INPUT", "-v", "-n", "-x"]
            text = subprocess.run(
                cmd, capture_output=True, text=True, timeout=20, check=True
            ).stdout
            for line in text.splitlines():
                cols = line.split()
                if len(cols) > 2 and cols[2] == "DROP":
                    dropped += int(cols[0])
                if len(cols) > 2 and cols[2] == "NFQUEUE":
                    delayed += int(cols[0])
        return dropped, delayed

    def close(self) -> list[str]:
        """Stop the delayers (by PID); their last lines."""
        said = []
        for delayer, log in self.delayers:
            if delayer.poll() is None:
                delayer.terminate()
            try:
                delayer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                delayer.kill()
                delayer.wait(timeout=10)
            said.extend(log.read_text(errors="replace").strip().splitlines()[-1:])
        self.delayers.clear()
        return said


def _wait_for_text(
    path: Path, text: str, process: subprocess.Popen[bytes], deadline: float
) -> None:
    end = time.monotonic() + deadline
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}: {path.read_text()}")
        if time.monotonic() > end:
            pytest.fail(f"no {text!r} from {process.args!r} within {deadline:g}s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)  # the polling interval


def test_latency_and_loss_on_the_handler_links(net: Net, tmp_path: Path) -> None:
    impaired = Impaired(net, tmp_path)
    journal = tmp_path / "journal"
    processes: list[ServerProcess] = []
    try:
        front_host = net.add("front")
        timing = ["--heartbeat-interval", "0.5", "--handler-liveness", "5"]
        front = _front_in(front_host.ns, front_host.address, timing, tmp_path / "front.log")
        processes.append(front)
        front.wait_listening()
        for n in (1, 2):
            host = net.add(f"h{n}")
            impaired.impair(host, queue=n)
            log = tmp_path / f"h{n}.log"
            processes.append(_handler_in(host.ns, front_host.address, timing, journal, log))
            front.wait_for_log(JOINED, deadline=30.0, count=n)
        out = tmp_path / "outcomes.json"
        done = subprocess.run(
            _loadgen(front_host.ns, front.port, 400, 23, 8, out),
            cwd=REPO,
            env=child_env(),
            timeout=240,
            check=False,
        )
        assert done.returncode == 0
        rows = json.loads(out.read_text())
        assert len({r["rid"] for r in rows}) == 400
        assert [r for r in rows if r["status"] != 200 or r["pid"] == -1] == []
        dropped, delayed = impaired.dropped_and_delayed()
        assert dropped > 0, f"{impaired.how} dropped nothing: the links were not lossy"
        assert delayed > 0, f"{impaired.how} delayed nothing"
    finally:
        for process in reversed(processes):
            process.terminate()
        said = impaired.close()
    if impaired.iptables is not None:
        held = sum(int(line.split()[1]) for line in said if line.startswith("delayed "))
        assert held > 0, said
