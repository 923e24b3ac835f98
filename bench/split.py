"""Split mode against the single-process engine: throughput ratios, CPU per request, the hop's
latency and the scaling over handler processes (issue 13's Performance targets).

    .venv/bin/python -m bench.split [--runs 3] [--duration 5] [--only hello,big,scale]
                                    [--procs 1,2,4] [--tree DIR] [--json PATH]

Every measurement starts its servers fresh on 127.0.0.1 (free ports), waits for a 2xx answer,
runs ``wrk --latency`` against them and stops them by PID. Scenarios:

- ``hello``: ``bench.apps:hello`` with keep-alive, single process (``catalyzer``, app in the
  reactor) and front + one handler (``catalyzer-front`` + ``catalyzer-handler``), interleaved:
  each run measures both, in alternating order. Reported: requests/s and the split/single ratio
  of the medians, p50/p99 of each (the hop's latency is their difference), and the CPU time
  each process spent per request (the sum over its threads of ``/proc/PID/task/*/schedstat``,
  nanoseconds of run time, read before and after wrk: a count that does not depend on how busy
  the shared machine is, unlike requests/s).
- ``big``: the same with ``bench.apps:big`` (1 MiB responses).
- ``hop``: the same as ``hello`` with one connection: the latency the hop to the handler adds,
  without queueing (with 16 connections p50 and p99 are mostly waiting for the CPU).
- ``scale``: ``bench.apps:sleep50`` (50 ms in the app) through front + a handler with
  ``--procs N`` for each N of ``--procs``, 8 threads each, 64 connections.
- ``scale-netns``: the same app and load with every process on a host of its own: the front
  (and wrk, on its loopback) in one network namespace, each handler host
  (``catalyzer-handler --procs P``) in another, joined by a bridge in a namespace of its own
  (bench/netns.py; no traffic in the root namespace). For each ``HxP`` of ``--layouts`` (H
  hosts of P processes), interleaved. Reported beside the app's limit: H * P * 8 threads / 50
  ms. Needs root and ``ip netns``: skipped with a message elsewhere.

``--tree DIR`` runs the catalyzer of another checkout (its ``src`` first on PYTHONPATH, this
venv's packages) for old-against-new comparisons: run this twice, or see docs/split.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import netns, procs
from bench.run import run_wrk

TWISTD = str(procs.VENV_BIN / "twistd")
CONNECTIONS = {"hello": 16, "big": 16, "hop": 1, "scale": 64, "scale-netns": 64}
APPS = {
    "hello": "hello",
    "big": "big",
    "hop": "hello",
    "scale": "sleep50",
    "scale-netns": "sleep50",
}
SCALE_THREADS = 8
SLEEP50_SECONDS = 0.05
# The front's HTTP port inside its namespace (a namespace of its own: nothing else binds there).
NETNS_HTTP_PORT = 8080
NETNS_START_DEADLINE = 60.0
# The handler's --threads in hello, big and hop (``--handler-threads``): 4 as the README runs it;
# a handler never runs the app in its reactor, and more threads hide the round trip to the front.
HANDLER_THREADS = [4]
# Extra front options for every run (``--front-args``), e.g. a larger ``--window``.
FRONT_ARGS: list[str] = []
# Extra handler options for hello, big and hop (``--handler-args``), e.g. ``--prefetch 0``.
HANDLER_ARGS: list[str] = []


def _pythonpath(tree: Path | None) -> str:
    parts = [str(tree / "src")] if tree is not None else []
    return os.pathsep.join([*parts, str(procs.ROOT)])


def _start(
    name: str, argv: list[str], port: int, log_path: Path, tree: Path | None
) -> procs.Server:
    """:func:`procs.start_server`, with ``tree``'s catalyzer first on the path (that function
    sets PYTHONPATH to this checkout)."""
    if tree is None:
        return procs.start_server(name, argv, port, log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # noqa: SIM115 (closed by procs.stop_server)
    env = {**os.environ, "PYTHONPATH": _pythonpath(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        argv,
        cwd=procs.ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return procs.Server(name, argv, port, proc, log_path, log_file)


def _task_files(pid: int, name: str) -> Iterator[str]:
    """The text of ``/proc/P/task/T/<name>`` for every thread T of ``pid`` and its descendants
    (threads that end meanwhile are skipped)."""
    for p in procs.process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/{name}") as f:
                    yield f.read()
            except OSError:
                continue


def task_cpu_ns(pid: int) -> int:
    """Nanoseconds of CPU every thread of ``pid`` and of its descendants has run (schedstat)."""
    return sum(int(text.split()[0]) for text in _task_files(pid, "schedstat") if text.strip())


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of ``pid`` and descendants."""
    return sum(
        int(line.split()[1])
        for text in _task_files(pid, "status")
        for line in text.splitlines()
        if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt"))
    )


@contextmanager
def serving(
    kind: str,
    app: str,
    log_dir: Path,
    tree: Path | None,
    n_procs: int = 1,
    threads: int = 0,
    handler_args: Sequence[str] = (),
) -> Iterator[tuple[int, dict[str, int]]]:
    """Servers for one measurement: ``single`` or ``split``; yields the HTTP port and the PIDs
    whose CPU is counted (by role)."""
    port = procs.free_port()
    listen = ["--listen", f"tcp:{port}:interface={procs.HOST}", "--access-log", "off"]
    servers: list[procs.Server] = []

    def stop() -> None:
        for server in reversed(servers):
            procs.stop_server(server)

    with ExitStack() as stack:
        stack.callback(stop)
        if kind == "single":
            argv = [TWISTD, "-n", "--pidfile=", "catalyzer", "--app", f"bench.apps:{app}"]
            argv += listen
            if threads:
                argv += ["--threads", str(threads)]
            servers.append(_start("single", argv, port, log_dir / "single.log", tree))
            pids = {"single": servers[0].pid}
        else:
            handlers_at = f"tcp://127.0.0.1:{procs.free_port()}"
            front = [TWISTD, "-n", "--pidfile=", "catalyzer-front", "--handlers", handlers_at]
            front += FRONT_ARGS
            servers.append(_start("front", front + listen, port, log_dir / "front.log", tree))
            handler = [
                TWISTD,
                "-n",
                "--pidfile=",
                "catalyzer-handler",
                "--app",
                f"bench.apps:{app}",
                "--connect",
                handlers_at,
                "--access-log",
                "off",
                "--procs",
                str(n_procs),
            ]
            if threads:
                handler += ["--threads", str(threads)]
            handler += handler_args
            servers.append(_start("handler", handler, 0, log_dir / "handler.log", tree))
            pids = {"front": servers[0].pid, "handler": servers[1].pid}
        procs.wait_ready(servers[0])
        if kind == "split" and n_procs > 1:
            _wait_handlers(port, n_procs)
        yield port, pids


def _wait_handlers(port: int, n: int, timeout: float = 30.0) -> None:
    """The front answers once one handler has joined; with ``--procs N``, wait until its log
    says N have."""
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        if time.monotonic() > deadline:
            raise procs.NotReady(f"{n} handlers did not join within {timeout:g}s")
        if _joined(n):
            return
        time.sleep(0.1)  # polling interval, not synchronisation


_FRONT_LOG: list[Path] = []


def _joined(n: int) -> bool:
    if not _FRONT_LOG:
        return True
    try:
        text = _FRONT_LOG[0].read_text(errors="replace")
    except OSError:
        return False
    return text.count(" joined with ") >= n


def measure(
    kind: str,
    scenario: str,
    duration: int,
    log_dir: Path,
    tree: Path | None,
    n_procs: int = 1,
) -> dict[str, Any]:
    app = APPS[scenario]
    threads = SCALE_THREADS if scenario == "scale" else HANDLER_THREADS[0] if kind == "split" else 0
    sub = log_dir / f"{scenario}-{kind}-{n_procs}-{time.monotonic_ns()}"
    sub.mkdir(parents=True, exist_ok=True)
    _FRONT_LOG[:] = [sub / "front.log"]
    record: dict[str, Any] = {"kind": kind, "scenario": scenario, "procs": n_procs}
    try:
        extra = HANDLER_ARGS if scenario in ("hello", "big", "hop") else []
        with serving(kind, app, sub, tree, n_procs, threads, extra) as (port, pids):
            cpu0 = {role: task_cpu_ns(pid) for role, pid in pids.items()}
            cs0 = {role: context_switches(pid) for role, pid in pids.items()}
            result = run_wrk(port, CONNECTIONS[scenario], duration, threads=1)
            cpu = {role: task_cpu_ns(pid) - cpu0[role] for role, pid in pids.items()}
            cs = {role: context_switches(pid) - cs0[role] for role, pid in pids.items()}
    except procs.NotReady as e:
        record["error"] = str(e).splitlines()[0]
        return record
    n = max(1, result["requests"])
    record.update(
        rps=result["rps"],
        requests=result["requests"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        errors=result["error_total"],
        cpu_us_per_request={role: round(ns / n / 1000, 1) for role, ns in cpu.items()},
        switches_per_request={role: round(c / n, 2) for role, c in cs.items()},
    )
    return record


def _wait_log(
    server: procs.Server,
    needle: str,
    count: int,
    deadline: float,
    what: str,
    watch: tuple[procs.Server, ...] = (),
) -> None:
    """Until ``needle`` appears ``count`` times in the server's log; NotReady if it or one of
    ``watch`` exits, or ``deadline`` seconds pass, first."""
    end = time.monotonic() + deadline
    for _ in range(100_000):
        try:
            seen = server.log_path.read_text(errors="replace").count(needle)
        except OSError:
            seen = 0
        if seen >= count:
            return
        for s in (server, *watch):
            if s.proc.poll() is not None:
                raise procs.NotReady(
                    f"{s.name} exited with status {s.proc.returncode} before {what}:\n"
                    + s.log_tail()
                )
        if time.monotonic() > end:
            raise procs.NotReady(f"no {what} within {deadline:g}s:\n{server.log_tail()}")
        time.sleep(0.1)  # polling interval, not synchronisation


def parse_layout(text: str) -> tuple[int, int]:
    """``"HxP"``: H handler hosts of P processes each."""
    hosts, _, per_host = text.partition("x")
    try:
        h, p = int(hosts), int(per_host)
    except ValueError:
        raise ValueError(f"layout {text!r}: want HOSTSxPROCS, e.g. 2x1") from None
    if not (1 <= h <= 8 and 1 <= p <= 8):
        raise ValueError(f"layout {text!r}: 1 to 8 hosts of 1 to 8 processes")
    return h, p


@contextmanager
def serving_netns(
    app: str,
    hosts: int,
    per_host: int,
    log_dir: Path,
    tree: Path | None,
    make_net: Callable[[], netns.Net] = netns.Net,
) -> Iterator[tuple[str, dict[str, int]]]:
    """A front and ``hosts`` handler hosts (``--procs per_host``), each in a namespace of its
    own; yields the front's namespace (wrk runs there, on its loopback) and the PIDs whose CPU is
    counted. Processes stopped and namespaces deleted on the way out, whatever happened."""
    servers: list[procs.Server] = []
    with ExitStack() as stack:
        net = make_net()
        stack.callback(net.destroy)  # runs after the servers are stopped (LIFO)

        def stop() -> None:
            for server in reversed(servers):
                procs.stop_server(server)

        stack.callback(stop)
        front_host = net.add("front")
        listen = f"tcp:{NETNS_HTTP_PORT}:interface={procs.HOST}"
        front = [TWISTD, "-n", "--pidfile=", "catalyzer-front"]
        front += netns.front_args(front_host.address, listen, *FRONT_ARGS)
        argv = [*netns.in_namespace(front_host.ns), *front]
        servers.append(_start("front", argv, NETNS_HTTP_PORT, log_dir / "front.log", tree))
        _wait_log(servers[0], "listening on ", 1, NETNS_START_DEADLINE, "front listening")
        for h in range(hosts):
            host = net.add(f"h{h}")
            handler = [TWISTD, "-n", "--pidfile=", "catalyzer-handler"]
            handler += netns.handler_args(
                front_host.address, f"bench.apps:{app}", SCALE_THREADS, "--procs", str(per_host)
            )
            argv = [*netns.in_namespace(host.ns), *handler]
            servers.append(_start(f"handler{h}", argv, 0, log_dir / f"handler{h}.log", tree))
        _wait_log(
            servers[0],
            " joined with ",
            hosts * per_host,
            NETNS_START_DEADLINE,
            f"{hosts * per_host} handler processes joined",
            watch=tuple(servers[1:]),
        )
        pids = {"front": servers[0].pid}
        pids.update({s.name: s.pid for s in servers[1:]})
        yield front_host.ns, pids


def measure_netns(layout: str, duration: int, log_dir: Path, tree: Path | None) -> dict[str, Any]:
    hosts, per_host = parse_layout(layout)
    n = hosts * per_host
    sub = log_dir / f"scale-netns-{layout}-{time.monotonic_ns()}"
    sub.mkdir(parents=True, exist_ok=True)
    limit = n * SCALE_THREADS / SLEEP50_SECONDS
    record: dict[str, Any] = {
        "kind": "split-netns",
        "scenario": "scale-netns",
        "layout": layout,
        "procs": n,
        "limit_rps": limit,
    }
    try:
        with serving_netns(APPS["scale-netns"], hosts, per_host, sub, tree) as (ns, pids):
            cpu0 = {role: task_cpu_ns(pid) for role, pid in pids.items()}
            cs0 = {role: context_switches(pid) for role, pid in pids.items()}
            result = run_wrk(
                NETNS_HTTP_PORT,
                CONNECTIONS["scale-netns"],
                duration,
                threads=1,
                prefix=netns.in_namespace(ns),
            )
            cpu = {role: task_cpu_ns(pid) - cpu0[role] for role, pid in pids.items()}
            cs = {role: context_switches(pid) - cs0[role] for role, pid in pids.items()}
    except (procs.NotReady, subprocess.CalledProcessError) as e:
        record["error"] = str(e).splitlines()[0]
        return record
    if not result["requests"]:
        record["error"] = f"wrk: {result['raw'].strip()[:200]}"
        return record
    count = max(1, result["requests"])
    record.update(
        rps=result["rps"],
        of_limit=round(result["rps"] / limit, 3),
        requests=result["requests"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        errors=result["error_total"],
        cpu_us_per_request={role: round(ns / count / 1000, 1) for role, ns in cpu.items()},
        switches_per_request={role: round(c / count, 2) for role, c in cs.items()},
    )
    return record


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    out: dict[str, Any] = {
        "runs": len(records),
        "failed": len(records) - len(ok),
        "rps": _median([r["rps"] for r in ok]),
        "rps_each": [round(r["rps"]) for r in ok],
        "p50_ms": _median([r["p50_ms"] for r in ok if r["p50_ms"] is not None]),
        "p99_ms": _median([r["p99_ms"] for r in ok if r["p99_ms"] is not None]),
        "errors": sum(r["errors"] for r in ok),
    }
    roles = sorted({role for r in ok for role in r["cpu_us_per_request"]})
    out["cpu_us_per_request"] = {
        role: _median([r["cpu_us_per_request"][role] for r in ok]) for role in roles
    }
    out["switches_per_request"] = {
        role: _median([r["switches_per_request"][role] for r in ok]) for role in roles
    }
    return out


def run_scale_netns(
    layouts: list[str], runs: int, duration: int, log_dir: Path, tree: Path | None
) -> dict[str, Any]:
    """``scale-netns``: every layout once per run, in alternating order; medians per layout."""
    why = netns.unavailable()
    if why is not None:
        print(f"scale-netns skipped: {why}", flush=True)
        return {"skipped": why}
    by: dict[str, list[dict[str, Any]]] = {layout: [] for layout in layouts}
    for i in range(runs):
        for layout in layouts if i % 2 == 0 else list(reversed(layouts)):
            r = measure_netns(layout, duration, log_dir, tree)
            print(f"scale-netns {layout} run {i + 1}: {_line(r)}", flush=True)
            by[layout].append(r)
    out: dict[str, Any] = {}
    for layout, records in by.items():
        hosts, per_host = parse_layout(layout)
        summary = summarize(records)
        summary["procs"] = hosts * per_host
        summary["limit_rps"] = hosts * per_host * SCALE_THREADS / SLEEP50_SECONDS
        rps = summary["rps"]
        summary["of_limit"] = round(rps / summary["limit_rps"], 3) if rps else None
        out[layout] = summary
    return out


def run(
    scenarios: list[str],
    runs: int,
    duration: int,
    procs_list: list[int],
    tree: Path | None,
    layouts: tuple[str, ...] = ("1x1", "2x1", "2x2", "4x1"),
) -> dict[str, Any]:
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-split-{os.getpid()}"
    data: dict[str, Any] = {
        "method": f"{runs} interleaved runs of wrk -t1 --latency -d{duration}s, medians; "
        "CPU from /proc/PID/task/*/schedstat over the wrk run",
        "tree": str(tree) if tree else str(procs.ROOT),
        "loadavg": os.getloadavg(),
        "handler_threads": HANDLER_THREADS[0],
        "scenarios": {},
    }
    for scenario in scenarios:
        if scenario == "scale-netns":
            data["scenarios"][scenario] = run_scale_netns(
                list(layouts), runs, duration, log_dir, tree
            )
            continue
        if scenario == "scale":
            by: dict[int, list[dict[str, Any]]] = {n: [] for n in procs_list}
            for i in range(runs):
                order = procs_list if i % 2 == 0 else list(reversed(procs_list))
                for n in order:
                    r = measure("split", scenario, duration, log_dir, tree, n)
                    print(f"scale procs={n} run {i + 1}: {_line(r)}", flush=True)
                    by[n].append(r)
            data["scenarios"]["scale"] = {str(n): summarize(rs) for n, rs in by.items()}
            continue
        both: dict[str, list[dict[str, Any]]] = {"single": [], "split": []}
        for i in range(runs):
            for kind in ("single", "split") if i % 2 == 0 else ("split", "single"):
                r = measure(kind, scenario, duration, log_dir, tree)
                print(f"{scenario} {kind} run {i + 1}: {_line(r)}", flush=True)
                both[kind].append(r)
        summary: dict[str, Any] = {kind: summarize(rs) for kind, rs in both.items()}
        single, split = summary["single"]["rps"], summary["split"]["rps"]
        summary["ratio"] = round(split / single, 3) if single and split else None
        data["scenarios"][scenario] = summary
        print(f"{scenario}: split/single {summary['ratio']}", flush=True)
    return data


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    return (
        f"{r['rps']:,.0f} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms errors {r['errors']} "
        f"cpu us/req {r['cpu_us_per_request']} switches/req {r['switches_per_request']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, metavar="SECONDS")
    parser.add_argument("--only", default="hello,big,hop,scale,scale-netns")
    parser.add_argument("--procs", default="1,2,4", help="handler processes for scale")
    parser.add_argument(
        "--layouts",
        default="1x1,2x1,2x2,4x1",
        help="scale-netns: handler HOSTSxPROCS, each host a network namespace",
    )
    parser.add_argument("--tree", type=Path, help="another checkout's catalyzer (its src/)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--front-args", default="", help="extra catalyzer-front options, e.g. '--window 1048576'"
    )
    parser.add_argument(
        "--handler-args",
        default="",
        help="extra catalyzer-handler options (not for scale), e.g. '--prefetch 0'",
    )
    parser.add_argument(
        "--handler-threads", type=int, default=4, help="the handler's --threads (not for scale)"
    )
    args = parser.parse_args(argv)
    HANDLER_THREADS[:] = [args.handler_threads]
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(scenarios) - set(APPS)
    if unknown or args.runs < 1 or args.duration < 1:
        parser.error(f"scenarios: {', '.join(APPS)}; --runs and --duration at least 1")
    procs_list = [int(n) for n in args.procs.split(",")]
    layouts = tuple(x.strip() for x in args.layouts.split(",") if x.strip())
    for layout in layouts:
        try:
            parse_layout(layout)
        except ValueError as e:
            parser.error(str(e))
    FRONT_ARGS[:] = shlex.split(args.front_args)
    HANDLER_ARGS[:] = shlex.split(args.handler_args)
    data = run(scenarios, args.runs, args.duration, procs_list, args.tree, layouts)
    text = json.dumps(data, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def markdown(data: dict[str, Any]) -> list[str]:
    """The results as a docs/benchmarks.md section."""
    lines = [
        "### Split mode: front + handlers on one host (bench/split.py)",
        "",
        f"{data['method']}. `single` is `catalyzer` (app in the reactor), `split` is "
        f"`catalyzer-front` + one `catalyzer-handler` (`--threads {data.get('handler_threads', 4)}`); "
        "CPU is per request, "
        "each process with all its threads (the front's includes libzmq's I/O thread).",
        "",
        "| scenario | single req/s | split req/s | split/single | p50 single/split | "
        "p99 single/split | CPU us/req single | front | handler |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in data["scenarios"].items():
        if name in ("scale", "scale-netns"):
            continue
        one, two = s["single"], s["split"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        lines.append(
            f"| {name} | {one['rps'] or 0:,.0f} | {two['rps'] or 0:,.0f} | {s['ratio']} | "
            f"{ms(one['p50_ms'])} / {ms(two['p50_ms'])} ms | "
            f"{ms(one['p99_ms'])} / {ms(two['p99_ms'])} ms | "
            f"{one['cpu_us_per_request'].get('single')} | {two['cpu_us_per_request'].get('front')} "
            f"| {two['cpu_us_per_request'].get('handler')} |"
        )
    scale = data["scenarios"].get("scale")
    if scale:
        lines += [
            "",
            f"`bench.apps:sleep50` (50 ms in the app), {CONNECTIONS['scale']} connections, "
            f"handler `--procs N --threads {SCALE_THREADS}`:",
            "",
            "| handler processes | req/s (median) | each run | p99 |",
            "|---:|---:|---|---:|",
        ]
        for n, s in scale.items():
            each = " / ".join(f"{v:,}" for v in s["rps_each"])
            lines.append(f"| {n} | {s['rps'] or 0:,.0f} | {each} | {s['p99_ms']} ms |")
    spread = data["scenarios"].get("scale-netns")
    if spread and "skipped" in spread:
        lines += ["", f"Handler hosts in network namespaces: skipped ({spread['skipped']}).", ""]
    elif spread:
        lines += [
            "",
            "The same load with the front and each handler host in a network namespace of its "
            "own, over veth pairs and a bridge (HxP: H hosts of `--procs P`):",
            "",
            "| hosts x procs | req/s (median) | each run | app's limit | of limit | p99 |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for layout, s in spread.items():
            each = " / ".join(f"{v:,}" for v in s["rps_each"])
            lines.append(
                f"| {layout} | {s['rps'] or 0:,.0f} | {each} | {s['limit_rps']:,.0f} | "
                f"{s['of_limit']} | {s['p99_ms']} ms |"
            )
    return [*lines, ""]
