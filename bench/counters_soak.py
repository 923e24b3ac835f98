"""Do the prefork counters keep up with the requests answered while workers are replaced?

    .venv/bin/python bench/counters_soak.py [--seconds 60] [--procs 2] [--max-requests 5000]
        [--hup-every 10] [--connections 50]

The soak of issue 14, shortened: ``catalyzer --procs N --max-requests M --stats`` serves
``bench.apps:hello`` to wrk while the master gets a HUP every ``--hup-every`` seconds. Then
``catalyzer_requests_total`` from ``/metrics`` is compared with the requests wrk saw answered.
The server can count a little more than wrk (at most one request per connection: those wrk cut at
its deadline, answered by the server but not counted by wrk), never less. Exit status 1 when the
counters miss anything.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs
from bench.run import run_wrk


def counted(stats_port: int) -> float:
    url = f"http://{procs.HOST}:{stats_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(n) for n in re.findall(r"^catalyzer_requests_total\{[^}]*\} (\S+)$", text, re.M)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--hup-every", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()

    port, stats_port = procs.free_port(), procs.free_port()
    argv = [
        str(procs.VENV_BIN / "twistd"),
        "-n",
        "--pidfile=",
        "catalyzer",
        "--app",
        "bench.apps:hello",
        "--listen",
        f"tcp:{port}:interface={procs.HOST}",
        "--procs",
        str(args.procs),
        "--max-requests",
        str(args.max_requests),
        "--stats",
        f"tcp:{stats_port}:interface={procs.HOST}",
        "--access-log",
        "off",
    ]
    log = Path(tempfile.mkdtemp(prefix="catalyzer-soak-")) / "server.log"
    server = procs.start_server("catalyzer", argv, port, log)
    try:
        procs.wait_ready(server)
        before = counted(stats_port)  # wait_ready's own requests
        result: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: result.update(run_wrk(port, args.connections, args.seconds))
        )
        load.start()
        hups = 0
        while load.is_alive():
            load.join(args.hup_every)  # the HUP period; wrk's end stops the loop at once
            if load.is_alive():
                server.proc.send_signal(signal.SIGHUP)
                hups += 1
        answered = int(result["requests"])
        seen = counted(stats_port) - before
        log_text = log.read_text(errors="replace")
        replaced = len(re.findall(r"max-requests; starting its replacement$", log_text, re.M))
        print(
            f"{answered} requests answered (wrk), {seen:.0f} counted, difference "
            f"{seen - answered:+.0f} (allowed 0..+{args.connections}); {hups} HUPs, "
            f"{replaced} max-requests recycles, wrk errors {result['errors']}"
        )
        return 0 if 0 <= seen - answered <= args.connections else 1
    finally:
        procs.stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
