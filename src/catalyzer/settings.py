"""Every setting catalyzer has, defined once.

The ``twistd`` option table (``catalyzer.tap``), value validation and the settings page in
``docs/settings.md`` are all generated from :data:`SETTINGS`, so a setting cannot exist in one place
and be missing or different in another. This module is pure: no Twisted, no I/O.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
# The settings of split mode's two commands only (twistd catalyzer-front, catalyzer-handler).
SPLIT_SECTION = "Split mode"


class SettingError(ValueError):
    """A setting was given a value it cannot take. The message names setting, value and rule."""


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``"65536"``, ``"64K"``, ``"64KiB"``, ``"1M"``, ``"1G"`` -> bytes (binary multiples)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError("expected a byte count such as 65536, 64K, 1M or 1G")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _positive_size(text: str) -> int:
    value = parse_size(text)
    if value < 1:
        raise ValueError("must be 1 byte or more")
    return value


def _non_negative_size(text: str) -> int:
    value = parse_size(text)
    if value < 0:
        raise ValueError("must be 0 bytes or more")
    return value


def _non_negative_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a number of seconds above 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number, 0 or more")
    return value


def _zmq_endpoint(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise ValueError("expected a ZeroMQ endpoint such as tcp://127.0.0.1:5560 or ipc:///run/x")
    return text


def _app_spec(text: str) -> str:
    # Only the shape is checked here; importing happens where the app will run.
    from catalyzer.wsgi.appspec import parse_app_spec

    parse_app_spec(text)
    return text


def _progress_path(text: str) -> str:
    if text and (not text.startswith("/") or "?" in text):
        raise ValueError("must be empty or a path starting with '/' (no query)")
    return text


def _script_name(text: str) -> str:
    if text and (not text.startswith("/") or text.endswith("/")):
        raise ValueError("must be empty or start with '/' and not end with '/'")
    return text


def _allow_ips(text: str) -> str:
    from catalyzer.wsgi.forwarded import TrustedProxies

    TrustedProxies.parse(text)
    return ",".join(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Setting:
    """One setting: its name on the command line and in config files, its type and its rules."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    section: str
    metavar: str = "VALUE"
    short: str | None = None
    # A repeatable option collects a list; its default is a list too.
    repeatable: bool = False
    flag: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    def coerce(self, raw: object) -> Any:
        """Validate one raw value (a string from the command line, or a typed config value)."""
        try:
            if self.flag and isinstance(raw, bool):
                return raw
            if isinstance(raw, str):
                return self.parse(raw)
            if isinstance(raw, bool):
                raise ValueError("expected a " + self.metavar.lower())
            if isinstance(raw, int | float):
                return self.parse(str(raw))
            raise ValueError(f"expected a {self.metavar.lower()}, got {type(raw).__name__}")
        except (ValueError, TypeError) as e:
            raise SettingError(f"setting {self.name!r}: bad value {raw!r}: {e}") from None


SETTINGS: tuple[Setting, ...] = (
    # -- application
    Setting(
        "app",
        "",
        _app_spec,
        section="Application",
        metavar="MODULE:CALLABLE",
        help="The WSGI application: 'package.module:callable', or a factory call such as "
        "'package.module:create_app()' (literal arguments only). Required.",
    ),
    Setting(
        "script-name",
        "",
        _script_name,
        section="Application",
        metavar="PATH",
        help="SCRIPT_NAME: the URL prefix the application is mounted at behind a proxy. A request "
        "path starting with it has it removed from PATH_INFO.",
    ),
    Setting(
        "threads",
        0,
        _non_negative_int,
        section="Application",
        metavar="N",
        help="0 runs the application in the reactor thread (one request at a time per process). N "
        "runs it in a pool of N threads, for applications that wait on I/O.",
    ),
    # -- processes
    Setting(
        "procs",
        1,
        _positive_int,
        section="Processes",
        metavar="N",
        short="p",
        help="1 serves from the twistd process itself. N >= 2 makes it a master that binds the "
        "listening sockets and supervises N worker processes sharing them.",
    ),
    Setting(
        "max-requests",
        0,
        _non_negative_int,
        section="Processes",
        metavar="N",
        help="With procs >= 2: replace a worker after about N requests (0: never). Its "
        "replacement is ready before it stops accepting, and one worker recycles at a time.",
    ),
    Setting(
        "max-requests-jitter",
        0,
        _non_negative_int,
        section="Processes",
        metavar="N",
        help="Adds a random 0..N to each worker's max-requests, so workers do not all recycle "
        "together.",
    ),
    Setting(
        "reuse-port",
        False,
        parse_bool,
        section="Processes",
        flag=True,
        help="With procs >= 2: give each worker its own SO_REUSEPORT socket on a TCP endpoint "
        "instead of one socket all workers accept from. The kernel then hashes new connections "
        "to workers whether or not they are busy in the app: only for apps whose every request "
        "is fast (see docs/prefork.md).",
    ),
    Setting(
        "handoff-after",
        0.05,
        _non_negative_seconds,
        section="Processes",
        metavar="SECONDS",
        help="With procs >= 2: once a worker has been this long in the app on one request "
        "(with threads N: every thread in its call), its idle keep-alive connections with a new "
        "request waiting are passed to an idle worker, which answers them (0: never). The "
        "longest wait: a worker whose recent calls are all short waits twice their 99th "
        "percentile instead, down to 0.01 s (docs/prefork.md).",
    ),
    Setting(
        "balance-every",
        0.25,
        _non_negative_seconds,
        section="Processes",
        metavar="SECONDS",
        help="With procs >= 2: every this many seconds the master compares the workers' request "
        "rates; a worker serving at least twice the rate of the least busy one (and 200 "
        "requests a second or more) passes the share of its active keep-alive connections "
        "above the mean to it, between requests, so that connections opened in one burst do "
        "not all stay on one worker (0: never; docs/prefork.md).",
    ),
    Setting(
        "max-worker-rss",
        0,
        _non_negative_int,
        section="Processes",
        metavar="MiB",
        help="With procs >= 2: replace a worker whose resident memory (RSS) is above this many "
        "MiB after a response (0: never). Checked between requests; the replacement is ready "
        "before the worker stops accepting, and the log line gives the figure.",
    ),
    Setting(
        "timeout",
        0.0,
        _non_negative_seconds,
        section="Processes",
        metavar="SECONDS",
        help="With procs >= 2: a worker that spends longer than this inside the application on "
        "one request has its Python stack logged with the request, and is killed and replaced "
        "(0: never). Receiving the request and sending the response do not count.",
    ),
    Setting(
        "worker-liveness",
        10.0,
        _non_negative_seconds,
        section="Processes",
        metavar="SECONDS",
        help="With procs >= 2: a worker sends a heartbeat every second; one silent for this long "
        "while not inside the application (stopped, a reactor stuck outside the app) is frozen: "
        "it is killed and replaced (0: never). Time inside the application is timeout's.",
    ),
    # -- listening
    Setting(
        "listen",
        [DEFAULT_LISTEN],
        str,
        section="Listening",
        metavar="ENDPOINT",
        short="l",
        repeatable=True,
        help="Where to accept connections, in Twisted's endpoint syntax: 'tcp:8080', "
        "'tcp6:8080:interface=\\:\\:1', 'unix:/run/app.sock', "
        "'ssl:8443:privateKey=key.pem:certKey=cert.pem', 'systemd:domain=INET:index=0'. "
        "'haproxy:' in front of a tcp, tcp6, unix or systemd endpoint expects a PROXY protocol "
        "(v1 or v2) header on each connection, and REMOTE_ADDR is the client it names. "
        "Repeat to listen on several. Not listened on by default when uwsgi or fastcgi is given.",
    ),
    Setting(
        "uwsgi",
        [],
        str,
        section="Listening",
        metavar="ENDPOINT",
        repeatable=True,
        help="Where to accept the uwsgi protocol from a web server in front (nginx uwsgi_pass), "
        "same endpoint syntax as listen; repeatable. The variable block may hold at most "
        "max-request-line + max-header-bytes bytes (65535 at most, the protocol's limit); "
        "bigger: 431. Trusts the peer with REMOTE_ADDR and the scheme (so reachable by the web "
        "server only); forwarded-allow-ips then judges the REMOTE_ADDR it sent. See "
        "docs/deploying.md.",
    ),
    Setting(
        "fastcgi",
        [],
        str,
        section="Listening",
        metavar="ENDPOINT",
        repeatable=True,
        help="Where to accept FastCGI (responder role) from a web server in front (nginx "
        "fastcgi_pass), same endpoint syntax as listen; repeatable. One request at a time per "
        "connection (FCGI_MPXS_CONNS=0), FCGI_KEEP_CONN honoured; the params stream is limited "
        "like uwsgi's variable block. Trusts the peer like uwsgi. See docs/deploying.md.",
    ),
    Setting(
        "forwarded-allow-ips",
        "127.0.0.1,::1,unix",
        _allow_ips,
        section="Listening",
        metavar="LIST",
        help="Peers whose Forwarded and X-Forwarded-For/-Proto/-Host/-Port/-Prefix headers are "
        "believed (REMOTE_ADDR, wsgi.url_scheme, HTTP_HOST, SERVER_PORT, SCRIPT_NAME come from "
        "them): comma-separated addresses and networks ('10.0.0.0/8'), 'unix' for Unix-socket "
        "peers, or '*' for everyone (warned about at start-up). From any other peer these "
        "headers are removed before the application sees them. See docs/deploying.md.",
    ),
    Setting(
        "backlog",
        1024,
        _positive_int,
        section="Listening",
        metavar="N",
        help="Listen queue length for tcp, ssl and unix endpoints that do not set their own "
        "'backlog='. Twisted's default of 50 makes a burst of new connections wait a second "
        "for the client's SYN retry.",
    ),
    Setting(
        "max-connections",
        1000,
        _positive_int,
        section="Listening",
        metavar="N",
        help="Open client connections per process. At the limit each new connection sheds the "
        "one making least progress (incomplete request headers, oldest first; then idle "
        "keep-alive); only when none can go does the server stop accepting until one closes, "
        "and waiting clients stay in the listen backlog.",
    ),
    # -- request limits
    Setting(
        "max-request-line",
        8190,
        _positive_size,
        section="Limits",
        metavar="BYTES",
        help="Longest request target. Longer: 414.",
    ),
    Setting(
        "max-headers",
        100,
        _positive_int,
        section="Limits",
        metavar="N",
        help="Most header fields in a request (trailers included). More: 431.",
    ),
    Setting(
        "max-header-bytes",
        65536,
        _positive_size,
        section="Limits",
        metavar="BYTES",
        help="Most bytes of header fields in a request, names and values together. More: 431.",
    ),
    Setting(
        "max-body",
        1024**3,
        _positive_size,
        section="Limits",
        metavar="BYTES",
        help="Largest request body. A larger declared Content-Length is refused with 413 before "
        "any of it is read; a chunked body is refused when it grows past the limit.",
    ),
    Setting(
        "max-chunk-line",
        4096,
        _positive_size,
        section="Limits",
        metavar="BYTES",
        help="Longest chunk-size line (with extensions) in a chunked request body. Longer: 400.",
    ),
    Setting(
        "body-spool-threshold",
        1024**2,
        _positive_size,
        section="Limits",
        metavar="BYTES",
        help="Request bodies up to this size are kept in memory; larger ones go to a temporary file.",
    ),
    Setting(
        "spool-dir",
        "",
        str,
        section="Limits",
        metavar="DIR",
        help="Where request bodies larger than body-spool-threshold are spooled (empty: the "
        "system's temporary directory, TMPDIR). A body that cannot be written there is refused "
        "with 507 (no room left) or 503 (any other error) and Connection: close, in one log "
        "line naming the directory; the server keeps serving.",
    ),
    Setting(
        "max-pipeline",
        16,
        _positive_int,
        section="Limits",
        metavar="N",
        help="Complete pipelined requests read ahead of the one being answered. Past it the server "
        "stops reading from that connection until it catches up.",
    ),
    # -- timeouts
    Setting(
        "header-timeout",
        10.0,
        _positive_seconds,
        section="Timeouts",
        metavar="SECONDS",
        help="The request line and headers must arrive within this time of their first byte: 408.",
    ),
    Setting(
        "body-timeout",
        10.0,
        _positive_seconds,
        section="Timeouts",
        metavar="SECONDS",
        help="The window over which the body's data rate is measured; see body-min-rate.",
    ),
    Setting(
        "body-min-rate",
        1024,
        _non_negative_int,
        section="Timeouts",
        metavar="BYTES/S",
        help="A request body arriving slower than this over a body-timeout window is cut off "
        "with 408. 0 only requires some data in each window.",
    ),
    Setting(
        "keepalive-timeout",
        5.0,
        _non_negative_seconds,
        section="Timeouts",
        metavar="SECONDS",
        help="An idle keep-alive connection is closed after this long; 0 disables keep-alive.",
    ),
    Setting(
        "write-timeout",
        30.0,
        _positive_seconds,
        section="Timeouts",
        metavar="SECONDS",
        help="A response the client stops reading for this long is abandoned: the connection is "
        "aborted and the response iterable closed.",
    ),
    Setting(
        "die-timeout",
        30.0,
        _non_negative_seconds,
        section="Timeouts",
        metavar="SECONDS",
        help="On SIGTERM, requests in flight get this long to finish before their connections "
        "are cut.",
    ),
    # -- operations
    Setting(
        "stats",
        "",
        str,
        section="Operations",
        metavar="ENDPOINT",
        help="Serve /metrics (Prometheus), /status (JSON) and /ready on this endpoint, e.g. "
        "'tcp:9100:interface=127.0.0.1'. With procs >= 2 the master serves them, adding up "
        "every worker's numbers. Off when empty.",
    ),
    Setting(
        "manhole",
        "",
        str,
        section="Operations",
        metavar="ENDPOINT",
        help="An interactive Python prompt inside the running server (the master with procs >= "
        "2), e.g. 'unix:/run/myapp/manhole.sock' (created mode 0600). TCP only on loopback, or "
        "anywhere with manhole-keys (then it is SSH). Needs the 'manhole' extra. Off when empty.",
    ),
    Setting(
        "manhole-keys",
        "",
        str,
        section="Operations",
        metavar="PATH",
        help="An OpenSSH authorized_keys file: serve the manhole over SSH, with these keys.",
    ),
    Setting(
        "progress-path",
        "",
        _progress_path,
        section="Upload progress",
        metavar="PATH",
        help="Answer GET PATH?X-Progress-ID=ID (or with an X-Progress-ID header) in the engine, "
        "without calling the app, with the progress of the upload carrying that id: JSON "
        '{"state": "starting"|"uploading"|"done"|"error", "received": N, "size": M}. '
        "With procs >= 2 any worker answers for any upload. Off when empty.",
    ),
    Setting(
        "progress-ttl",
        60.0,
        _positive_seconds,
        section="Upload progress",
        metavar="SECONDS",
        help="How long a finished or failed upload's progress is kept.",
    ),
    Setting(
        "progress-entries",
        1000,
        _positive_int,
        section="Upload progress",
        metavar="N",
        help="Most uploads tracked at once; past it the oldest finished ones are forgotten.",
    ),
    Setting(
        "reload",
        False,
        parse_bool,
        section="Operations",
        flag=True,
        help="Development: serve new code about a second after any of the app's modules is "
        "saved. Runs the app in a worker process under a master (also with procs 1) that keeps "
        "the socket and swaps workers. While the app cannot be imported, every response shows "
        "the error.",
    ),
    Setting(
        "watch",
        [],
        str,
        section="Operations",
        metavar="PATH",
        repeatable=True,
        help="With reload: more files to watch: a file, a directory (everything below it) or a "
        "glob such as 'templates/**/*.html'. Repeatable.",
    ),
    # -- split mode
    Setting(
        "handlers",
        [],
        _zmq_endpoint,
        section=SPLIT_SECTION,
        metavar="ZMQ-ENDPOINT",
        repeatable=True,
        help="catalyzer-front: where handlers connect, a ZeroMQ endpoint to bind "
        "('tcp://127.0.0.1:5560', 'tcp://0.0.0.0:5560', 'ipc:///run/app/handlers'); repeatable. "
        "Required.",
    ),
    Setting(
        "connect",
        [],
        _zmq_endpoint,
        section=SPLIT_SECTION,
        metavar="ZMQ-ENDPOINT",
        repeatable=True,
        help="catalyzer-handler: a front's handlers endpoint to connect to "
        "('tcp://front:5560'); repeat to serve several fronts. Required.",
    ),
    Setting(
        "curve-key",
        "",
        str,
        section=SPLIT_SECTION,
        metavar="PATH",
        help="Both: this side's CURVE key pair, a '.key_secret' file made by 'python -m "
        "catalyzer.split.keys DIR NAME'. Encrypts the front-handler traffic; the front then "
        "needs handler-keys and a handler front-key.",
    ),
    Setting(
        "handler-keys",
        "",
        str,
        section=SPLIT_SECTION,
        metavar="DIR",
        help="catalyzer-front, with curve-key: a directory of the public keys ('*.key') of the "
        "handlers allowed to connect; any other key is refused (one log line each).",
    ),
    Setting(
        "front-key",
        "",
        str,
        section=SPLIT_SECTION,
        metavar="PATH",
        help="catalyzer-handler, with curve-key: the front's public key file ('front.key').",
    ),
    Setting(
        "insecure-handlers",
        False,
        parse_bool,
        section=SPLIT_SECTION,
        flag=True,
        help="catalyzer-front: bind a handlers endpoint that is not loopback or ipc without "
        "CURVE keys (anyone who can reach it can serve your traffic). Refused otherwise.",
    ),
    Setting(
        "tag",
        "",
        str,
        section=SPLIT_SECTION,
        metavar="TAG",
        help="catalyzer-handler: a label for this handler's version ('v42'), shown per handler "
        "by the front.",
    ),
    Setting(
        "weight",
        1.0,
        _non_negative_float,
        section=SPLIT_SECTION,
        metavar="W",
        help="catalyzer-handler: its share of the work relative to other handlers (the front "
        "gives each request to the handler with credit whose in-flight count per slot and "
        "weight is lowest); 0 takes no new work.",
    ),
    Setting(
        "prefetch",
        8,
        _non_negative_int,
        section=SPLIT_SECTION,
        metavar="N",
        help="catalyzer-handler: requests each handler process takes beyond its threads. They "
        "wait in the handler for a thread, so a thread that finishes starts the next request at "
        "once instead of waiting a round trip to the front for it. If every thread stays busy "
        "for prefetch-stall without one finishing, they go back to the front (for another "
        "handler), and the process takes no more than its threads until one finishes. 0: only "
        "as many as its threads.",
    ),
    Setting(
        "prefetch-stall",
        0.05,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-handler: the longest a prefetched request waits behind busy threads "
        "none of which finishes (see prefetch).",
    ),
    Setting(
        "queue-length",
        1024,
        _positive_int,
        section=SPLIT_SECTION,
        metavar="N",
        help="catalyzer-front: requests waiting for a handler's credit. A request past it is "
        "answered 503 with Retry-After at once.",
    ),
    Setting(
        "queue-timeout",
        30.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-front: a request no handler took within this time of its arrival is "
        "answered 503 with Retry-After.",
    ),
    Setting(
        "no-handler-grace",
        2.0,
        _non_negative_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-front: with no handler connected, a request waits this long for one to "
        "join before it is answered 503 with Retry-After.",
    ),
    Setting(
        "start-timeout",
        5.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-front: a handler that has not started a request this long after it was "
        "sent is told to drop it (CANCEL), and the request goes to another handler. It also "
        "travels with the request: a handler never starts one older than this.",
    ),
    Setting(
        "first-byte-timeout",
        60.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-front: a started request whose response has not begun within this "
        "time is answered 504 and cancelled at the handler.",
    ),
    Setting(
        "stall-timeout",
        30.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="catalyzer-front: a response whose handler sends nothing for this long while the "
        "client is ready for more is cut (the client's connection is aborted).",
    ),
    Setting(
        "retries",
        1,
        _non_negative_int,
        section=SPLIT_SECTION,
        metavar="N",
        help="catalyzer-front: how many times a GET, HEAD or OPTIONS request is sent to another "
        "handler after the handler running it was lost before any of its response reached "
        "the client. Other methods are never run twice: 502.",
    ),
    Setting(
        "window",
        2 * 1024 * 1024,
        _positive_size,
        section=SPLIT_SECTION,
        metavar="BYTES",
        help="catalyzer-front: response bytes a handler may send ahead of what the client has "
        "taken; more are granted as the client reads.",
    ),
    Setting(
        "buffer-budget",
        64 * 1024 * 1024,
        _non_negative_size,
        section=SPLIT_SECTION,
        metavar="BYTES",
        help="catalyzer-front: response bytes handlers may send ahead of their clients, all "
        "responses together (each within its window). When it is spent, windows are renewed "
        "only as bytes drain to clients, and new responses wait for a share (0: no budget).",
    ),
    Setting(
        "heartbeat-interval",
        1.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="Both: a heartbeat goes to the other side after this long without a message.",
    ),
    Setting(
        "handler-liveness",
        5.0,
        _positive_seconds,
        section=SPLIT_SECTION,
        metavar="SECONDS",
        help="Both: a peer silent for this long is lost. The front re-dispatches what the "
        "handler had not started (and retryable requests with nothing sent yet) and answers "
        "the rest 502; the handler says HELLO again.",
    ),
    Setting(
        "profile",
        "",
        str,
        section=SPLIT_SECTION,
        metavar="DIR",
        help="catalyzer-handler: profile one request in every profile-every with cProfile and "
        "write its stats (pstats) to a file in DIR, created if missing (empty: off). Files are "
        "named TIME-HOST-PID-N.pstats and only the newest profile-keep stay.",
    ),
    Setting(
        "profile-every",
        1000,
        _positive_int,
        section=SPLIT_SECTION,
        metavar="N",
        help="catalyzer-handler with profile: one request in N is profiled (in each worker).",
    ),
    Setting(
        "profile-keep",
        50,
        _positive_int,
        section=SPLIT_SECTION,
        metavar="N",
        help="catalyzer-handler with profile: how many profile files stay in DIR (the oldest "
        "go first, whichever worker wrote them).",
    ),
    # -- logging
    Setting(
        "access-log",
        "-",
        str,
        section="Logging",
        metavar="PATH",
        help="Access log in combined format plus the request's duration in microseconds: a "
        "file path, '-' for standard output, or 'off'.",
    ),
)

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """Resolved settings, one attribute per entry of :data:`SETTINGS` (dashes become underscores)."""

    app: str
    script_name: str
    threads: int
    procs: int
    max_requests: int
    max_requests_jitter: int
    reuse_port: bool
    handoff_after: float
    balance_every: float
    max_worker_rss: int
    timeout: float
    worker_liveness: float
    listen: tuple[str, ...]
    uwsgi: tuple[str, ...]
    fastcgi: tuple[str, ...]
    forwarded_allow_ips: str
    backlog: int
    max_connections: int
    max_request_line: int
    max_headers: int
    max_header_bytes: int
    max_body: int
    max_chunk_line: int
    body_spool_threshold: int
    spool_dir: str
    max_pipeline: int
    header_timeout: float
    body_timeout: float
    body_min_rate: int
    keepalive_timeout: float
    write_timeout: float
    die_timeout: float
    stats: str
    manhole: str
    manhole_keys: str
    progress_path: str
    progress_ttl: float
    progress_entries: int
    reload: bool
    watch: tuple[str, ...]
    handlers: tuple[str, ...]
    connect: tuple[str, ...]
    curve_key: str
    handler_keys: str
    front_key: str
    insecure_handlers: bool
    tag: str
    weight: float
    prefetch: int
    prefetch_stall: float
    queue_length: int
    queue_timeout: float
    no_handler_grace: float
    start_timeout: float
    first_byte_timeout: float
    stall_timeout: float
    retries: int
    window: int
    buffer_budget: int
    heartbeat_interval: float
    handler_liveness: float
    profile: str
    profile_every: int
    profile_keep: int
    access_log: str

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> Config:
        """Build from already-validated values keyed by setting name; missing ones take defaults."""
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise SettingError(
                f"unknown setting {unknown[0]!r}; known settings: {', '.join(BY_NAME)}"
            )
        kwargs: dict[str, Any] = {}
        for setting in SETTINGS:
            value = values.get(setting.name, setting.default)
            if setting.repeatable:
                value = tuple(value)  # type: ignore[arg-type]
            kwargs[setting.attr] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def repeatable_option(setting: Setting) -> Callable[[Any, str], None]:
    """The ``opt_NAME`` method by which twisted's ``usage.Options`` collects a repeatable
    setting's values, in order, in the options' ``repeated`` dict."""

    def opt(self: Any, value: str) -> None:
        self.repeated.setdefault(setting.name, []).append(value)

    opt.__doc__ = setting.help
    return opt


def command_line_values(
    settings: Iterable[Setting],
    opts: Mapping[str, object],
    repeated: Mapping[str, list[str]],
) -> dict[str, object]:
    """The values of ``settings`` given on a command line: ``opts`` as twisted's ``usage.Options``
    holds them, repeatable options' values in ``repeated``; an unset option is left out (the
    config file or the default decides). Raises :class:`SettingError` for a bad value."""
    values: dict[str, object] = {}
    for setting in settings:
        if setting.repeatable:
            raw_list = repeated.get(setting.name)
            if raw_list:
                values[setting.name] = [setting.coerce(v) for v in raw_list]
            continue
        raw = opts.get(setting.name)
        if setting.flag:
            if raw:
                values[setting.name] = True
        elif raw is not None:
            values[setting.name] = setting.coerce(raw)
    return values


# A setting in the environment: CATALYZER_ and its name, upper case, dashes as underscores.
ENV_PREFIX = "CATALYZER_"
# Variables of the prefix that are no setting: how the processes pass their own plumbing
# (prefork.control.ENV_KEY, dispatch.wire.ENV_KEY, ops.trace, the test suite's pure mode).
_NOT_SETTINGS = frozenset(
    {"CATALYZER_WORKER", "CATALYZER_DISPATCH", "CATALYZER_DEBUG", "CATALYZER_TEST_PURE"}
)


def env_name(setting: Setting) -> str:
    """``max-body`` -> ``CATALYZER_MAX_BODY``."""
    return ENV_PREFIX + setting.attr.upper()


def environment_values(
    environ: Mapping[str, str], names: Collection[str] | None = None
) -> dict[str, object]:
    """The settings ``environ`` gives as ``CATALYZER_NAME`` variables, validated; those of
    ``names`` only, if given (a command that has no use for the others ignores them, as it
    ignores them in a config file). A repeatable setting takes its values separated by
    whitespace; a flag takes true or false. A variable of the prefix that names no setting is
    an error, not ignored: a misspelt variable would otherwise leave its setting at the
    default without a word. Raises :class:`SettingError` naming the variable."""
    values: dict[str, object] = {}
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX) :].lower().replace("_", "-")
        setting = BY_NAME.get(name)
        if setting is None:
            close = [env_name(BY_NAME[n]) for n in difflib.get_close_matches(name, BY_NAME, n=1)]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingError(f"environment variable {key}: no such setting{hint}")
        if names is not None and name not in names:
            continue
        try:
            if setting.repeatable:
                values[name] = [setting.coerce(item) for item in raw.split()]
            elif setting.flag:
                values[name] = parse_bool(raw)
            else:
                values[name] = setting.coerce(raw)
        except (SettingError, ValueError) as e:
            raise SettingError(f"environment variable {key}: {e}") from None
    return values


def layered_values(
    settings: Iterable[Setting],
    file_values: Mapping[str, object],
    environ: Mapping[str, str],
    opts: Mapping[str, object],
    repeated: Mapping[str, list[str]],
    names: Collection[str] | None = None,
) -> dict[str, object]:
    """The values a command was given, each source over the one before: the ``--config`` file's
    (``file_values``), the environment's, the command line's (see :func:`command_line_values`);
    of ``names`` only, if given. Raises :class:`SettingError` for a bad value."""
    values = {k: v for k, v in file_values.items() if names is None or k in names}
    values.update(environment_values(environ, names))
    values.update(command_line_values(settings, opts, repeated))
    return values


def _check_config_matches_settings() -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    if names != [s.attr for s in SETTINGS]:
        raise AssertionError("Config fields and SETTINGS differ")


_check_config_matches_settings()


def render_markdown(settings: Iterable[Setting] = SETTINGS) -> str:
    """The settings page, ``docs/settings.md``. A test keeps the file in step with this output."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from src/catalyzer/settings.py by `make docs`; do not edit by hand. -->",
        "",
        "Every setting is a `twistd -n catalyzer` option, `--name VALUE`, a key of the TOML "
        "file given with `--config FILE` (`name = value`), and an environment variable, "
        f"`{ENV_PREFIX}NAME` in upper case with underscores for dashes "
        f"(`{ENV_PREFIX}MAX_BODY=10M`; a repeatable setting takes its values separated by "
        f'spaces, `{ENV_PREFIX}LISTEN="tcp:8080 unix:/run/app.sock"`; a flag takes true or '
        "false). The command line wins over the environment, and the environment over the file. "
        f"A `{ENV_PREFIX}` variable that names no setting is an error. "
        "Sizes take a K, M or G suffix (binary multiples); durations are seconds.",
    ]
    section = None
    for s in settings:
        if s.section != section:
            section = s.section
            lines += ["", f"## {section}", ""]
            if section == SPLIT_SECTION:
                lines += [
                    "Options of `twistd -n catalyzer-front` and `twistd -n catalyzer-handler` "
                    "(see [split.md](split.md)), not of `catalyzer`. The front also takes every "
                    "listening, limit, timeout and logging setting above; the handler the "
                    "application ones.",
                    "",
                ]
            lines += ["| option | default | meaning |", "|---|---|---|"]
        default = ", ".join(s.default) if s.repeatable else s.default
        if default == "":
            default = "(none)"
        option = f"`--{s.name} {s.metavar}`"
        if s.short:
            option += f" (`-{s.short}`)"
        text = s.help.replace("|", "\\|")
        lines.append(f"| {option} | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
