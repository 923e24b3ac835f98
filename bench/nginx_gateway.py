"""catalyzer behind nginx: ``--uwsgi`` against uWSGI's ``--uwsgi-socket`` and gunicorn's
``--protocol uwsgi``, and catalyzer's FastCGI face against its HTTP face, driven by wrk.

    .venv/bin/python bench/nginx_gateway.py [--duration SECONDS] [--only NAME[,NAME...]]
                                            [--source OTHER_TREE/src]

Every backend runs 2 worker processes on a free loopback port with access logs off; one nginx
(1 worker, request bodies buffered in memory) is started per backend with the configuration
``docs/deploying.md`` shows for that protocol (the same blocks ``tests/integration/test_nginx.py``
runs; the HTTP face gets a proxy_pass block with upstream keep-alive). wrk (2 threads, 32
connections) runs ``hello`` (13 bytes) and ``post1m`` (a 1 MiB POST to an app that reads it all)
against nginx. Results are printed as one JSON object per case and written to
``bench/results/nginx-gateway-*.json``; ratios are meaningful within one run only, and official
numbers are the lead's to take on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.run import POST_SCRIPT, round_order, run_wrk

BIN = procs.VENV_BIN
DEPLOYING = procs.ROOT / "docs" / "deploying.md"
RESULTS = procs.ROOT / "bench" / "results"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WORKERS = 2
CONNECTIONS = 32
SCENARIOS = {"hello": ("hello", ()), "post1m": ("echo", ("-s", POST_SCRIPT))}

_BLOCK = re.compile(
    r"^<!-- tested-config: (?P<name>\S+) -->\n```nginx\n(?P<body>.*?)^```$", re.M | re.S
)
HTTP_BLOCK = """
upstream catalyzer_http {
    server 127.0.0.1:9002;
    keepalive 8;
}

server {
    listen 80;

    location / {
        proxy_pass http://catalyzer_http;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }
}
"""


@dataclass(frozen=True)
class Backend:
    name: str
    protocol: str  # which nginx block fronts it: uwsgi, fastcgi or http
    argv: Callable[[str, int], list[str]]
    available: Callable[[], str | None]  # why it cannot run here, or None


def _twistd(face: str) -> Callable[[str, int], list[str]]:
    option = {"uwsgi": "--uwsgi", "fastcgi": "--fastcgi", "http": "--listen"}[face]

    def argv(app: str, port: int) -> list[str]:
        return [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "catalyzer",
            "--app",
            f"bench.apps:{app}",
            "--procs",
            str(WORKERS),
            option,
            f"tcp:{port}:interface={procs.HOST}",
            "--access-log",
            "off",
        ]

    return argv


def _uwsgi(app: str, port: int) -> list[str]:
    return [
        str(BIN / "uwsgi"),
        "--uwsgi-socket",
        f"{procs.HOST}:{port}",
        "--processes",
        str(WORKERS),
        "--listen",
        "1024",
        "--disable-logging",
        "--die-on-term",
        "--virtualenv",
        str(procs.ROOT / ".venv"),
        "--wsgi",
        f"bench.apps:{app}",
    ]


def _gunicorn(app: str, port: int) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        "--protocol",
        "uwsgi",
        "--workers",
        str(WORKERS),
        "--bind",
        f"{procs.HOST}:{port}",
        f"bench.apps:{app}",
    ]


def _installed(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return (
            None if (BIN / name).exists() else f"{name} is not installed (pip install '.[bench]')"
        )

    return check


def _gunicorn_uwsgi() -> str | None:
    missing = _installed("gunicorn")()
    if missing:
        return missing
    help_text = subprocess.run(
        [str(BIN / "gunicorn"), "--help"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    if "--protocol" not in help_text:
        return "this gunicorn has no --protocol uwsgi (added in later versions)"
    return None


BACKENDS = [
    Backend("catalyzer-uwsgi", "uwsgi", _twistd("uwsgi"), lambda: None),
    Backend("uwsgi-uwsgi-socket", "uwsgi", _uwsgi, _installed("uwsgi")),
    Backend("gunicorn-uwsgi", "uwsgi", _gunicorn, _gunicorn_uwsgi),
    Backend("catalyzer-fastcgi", "fastcgi", _twistd("fastcgi"), lambda: None),
    Backend("catalyzer-http", "http", _twistd("http"), lambda: None),
]


def server_block(protocol: str, listen: int, backend: int) -> str:
    if protocol == "http":
        block = HTTP_BLOCK
    else:
        blocks = {m["name"]: m["body"] for m in _BLOCK.finditer(DEPLOYING.read_text())}
        block = blocks[protocol]
    block = re.sub(r"\blisten 80;", f"listen {procs.HOST}:{listen};", block)
    return re.sub(r"(\n\s*server )127\.0\.0\.1:\d+;", rf"\g<1>{procs.HOST}:{backend};", block)


def nginx_config(directory: Path, servers: str) -> Path:
    for name in ("uwsgi_params", "fastcgi_params"):
        shutil.copy(Path("/etc/nginx") / name, directory / name)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {directory}/client_body;\n"
        f"    proxy_temp_path {directory}/proxy;\n"
        f"    fastcgi_temp_path {directory}/fastcgi;\n"
        f"    uwsgi_temp_path {directory}/uwsgi;\n"
        f"    scgi_temp_path {directory}/scgi;\n"
        "    client_max_body_size 2m;\n"
        "    client_body_buffer_size 2m;\n"
        f"{servers}\n}}\n"
    )
    return conf


def run_case(
    backend: Backend, scenario: str, duration: int, work: Path, source: Path | None = None
) -> dict[str, Any]:
    app, wrk_extra = SCENARIOS[scenario]
    backend_port, nginx_port = procs.free_port(), procs.free_port()
    directory = work / f"{backend.name}-{scenario}"
    directory.mkdir()
    conf = nginx_config(directory, server_block(backend.protocol, nginx_port, backend_port))
    server = procs.start_server(
        backend.name,
        backend.argv(app, backend_port),
        backend_port,
        directory / "backend.log",
        source if backend.name.startswith("catalyzer") else None,
    )
    nginx = procs.start_server(
        "nginx", [NGINX, "-p", str(directory), "-c", str(conf)], nginx_port, directory / "nginx.log"
    )
    result: dict[str, Any] = {"backend": backend.name, "scenario": scenario}
    try:
        if server.proc.poll() is not None:
            raise procs.NotReady(f"{backend.name} exited:\n{server.log_tail()}")
        result["ready_seconds"] = round(procs.wait_ready(nginx), 2)
        wrk = run_wrk(nginx_port, CONNECTIONS, duration, tuple(wrk_extra))
        result.update({k: v for k, v in wrk.items() if k != "raw"})
        if wrk["requests"] == 0 or wrk["wrk_rc"] != 0:
            result["wrk_output"] = wrk["raw"]
    except procs.NotReady as e:
        result["error"] = f"{e}\n--- backend ---\n{server.log_tail()}"
    finally:
        procs.stop_server(nginx)
        result["backend_stop"] = procs.stop_server(server)
    return result


def run(runs: int, duration: int, only: set[str] | None = None) -> dict[str, Any]:
    """Every (backend, scenario) ``runs`` times, in rounds that each start one backend further
    on; per case the median req/s and every run's figure."""
    if not Path(NGINX).exists():
        return {"unavailable": f"nginx is not installed ({NGINX})"}
    backends = [b for b in BACKENDS if not only or b.name in only]
    skipped = {b.name: why for b in backends if (why := b.available()) is not None}
    backends = [b for b in backends if b.name not in skipped]
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {
        b.name: {scenario: [] for scenario in SCENARIOS} for b in backends
    }
    with tempfile.TemporaryDirectory(prefix="catalyzer-nginx-bench-") as tmp:
        for n in range(1, runs + 1):
            work = Path(tmp) / f"run{n}"
            work.mkdir()
            for backend in round_order(backends, n):
                for scenario in SCENARIOS:
                    measured[backend.name][scenario].append(
                        run_case(backend, scenario, duration, work)
                    )
    cases: dict[str, dict[str, Any]] = {}
    for name, by_scenario in measured.items():
        for scenario, rs in by_scenario.items():
            rps = [None if "error" in r else r.get("rps") for r in rs]
            good = [v for v in rps if v is not None]
            cases[f"{name}/{scenario}"] = {
                "rps_median": statistics.median(good) if good else None,
                "rps": rps,
                "errors": sum(int(r.get("error_total") or 0) for r in rs),
                "failed": [r["error"].splitlines()[0] for r in rs if "error" in r],
            }
    return {
        "runs": runs,
        "duration": duration,
        "workers": WORKERS,
        "connections": CONNECTIONS,
        "skipped": skipped,
        "cases": cases,
    }


def ratio(
    data: dict[str, Any], a: str, b: str, scenario: str
) -> tuple[float | None, list[float | None]]:
    """Backend ``a`` over ``b`` on ``scenario``: the ratio of medians, and run by run."""
    ca, cb = (data.get("cases", {}).get(f"{n}/{scenario}") for n in (a, b))
    if not ca or not cb or not ca["rps_median"] or not cb["rps_median"]:
        return None, []
    rounds = [x / y if x and y else None for x, y in zip(ca["rps"], cb["rps"], strict=True)]
    return ca["rps_median"] / cb["rps_median"], rounds


def markdown(data: dict[str, Any]) -> list[str]:
    """The section of docs/benchmarks.md."""
    lines = ["## Behind nginx: uwsgi, FastCGI and HTTP faces (bench/nginx_gateway.py)", ""]
    if "unavailable" in data:
        return [*lines, f"Not measured: {data['unavailable']}.", ""]
    lines += [
        f"One nginx (1 worker, bodies buffered in memory) in front of each backend, configured "
        "with the blocks `docs/deploying.md` shows (HTTP: upstream keep-alive); every backend "
        f"runs {data['workers']} worker processes with its access log off. wrk -t2 "
        f"-c{data['connections']} for {data['duration']} s against nginx; {data['runs']} runs "
        "of every case, in rounds that each start one backend further on. `hello` is 13 bytes; "
        "`post1m` a 1 MiB POST to an app that reads it all. req/s medians, then each run; "
        "*vs catalyzer --uwsgi* divides medians.",
        "",
        "| backend | hello req/s | runs | vs catalyzer --uwsgi | post1m req/s | runs | vs catalyzer --uwsgi | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    cases = data["cases"]
    names = sorted({key.split("/")[0] for key in cases}, key=[b.name for b in BACKENDS].index)
    for name in names:
        row = [f"| {name}"]
        errors = 0
        for scenario in SCENARIOS:
            case = cases[f"{name}/{scenario}"]
            errors += case["errors"] + len(case["failed"])
            median = case["rps_median"]
            versus, _ = ratio(data, name, "catalyzer-uwsgi", scenario)
            row += [
                "-" if median is None else f"{median:,.0f}",
                " / ".join("-" if v is None else f"{v:,.0f}" for v in case["rps"]),
                "-" if versus is None else f"{versus:.2f}x",
            ]
        row.append(str(errors))
        lines.append(" | ".join(row) + " |")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per case")
    parser.add_argument("--only", default="", help="backends to run, comma-separated")
    parser.add_argument(
        "--source",
        type=Path,
        help="a directory whose catalyzer package catalyzer's backends import (another tree's "
        "src, for an A/B run)",
    )
    args = parser.parse_args(argv)
    if not Path(NGINX).exists():
        print(f"nginx is not installed ({NGINX}): apt-get install nginx", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    wanted = {n for n in args.only.split(",") if n}
    results = []
    with tempfile.TemporaryDirectory(prefix="catalyzer-nginx-bench-") as tmp:
        for backend in BACKENDS:
            if wanted and backend.name not in wanted:
                continue
            why_not = backend.available()
            if why_not is not None:
                entry = {"backend": backend.name, "skipped": why_not}
                print(json.dumps(entry), flush=True)
                results.append(entry)
                continue
            for scenario in SCENARIOS:
                entry = run_case(backend, scenario, args.duration, Path(tmp), args.source)
                if args.source is not None:
                    entry["source"] = str(args.source)
                print(json.dumps(entry), flush=True)
                results.append(entry)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"nginx-gateway-{stamp}.json"
    out.write_text(json.dumps({"duration": args.duration, "results": results}, indent=2) + "\n")
    print(f"results in {out.relative_to(procs.ROOT)}", file=sys.stderr)
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
