"""The command line: every user error ends the process quickly with one ``catalyzer:`` line on
stderr and nothing listening; factories work; ``--help`` lists every setting."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from catalyzer.settings import SETTINGS, SPLIT_SECTION
from tests.integration.conftest import APPS, Launcher, run_cli

pytestmark = pytest.mark.integration

FAIL_DEADLINE = 15.0  # a user error must end the process well within this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0):
            return False
    except ConnectionRefusedError:
        return True


@dataclass
class Broken:
    """A module directory on PYTHONPATH with modules that fail to import."""

    path: Path


@pytest.fixture
def broken(tmp_path: Path) -> Broken:
    (tmp_path / "cz_syntax_error.py").write_text("def app(:\n    pass\n")
    (tmp_path / "cz_import_error.py").write_text("import cz_no_such_dependency\napp = None\n")
    (tmp_path / "cz_raising.py").write_text('raise RuntimeError("cz_raising refuses to load")\n')
    return Broken(tmp_path)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that this test holds open (listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port: int = s.getsockname()[1]
        yield port


# (id, --app, extra args, text the message must contain, the user's error shown after it)
APP_ERRORS = [
    ("missing-module", "cz_no_such_module:app", "no module named 'cz_no_such_module'", None),
    ("missing-attribute", f"{APPS}:no_such_app", "has no attribute 'no_such_app'", None),
    ("syntax-error", "cz_syntax_error:app", "importing failed", "SyntaxError: invalid syntax"),
    (
        "import-error-inside",
        "cz_import_error:app",
        "importing failed",
        "ModuleNotFoundError: No module named 'cz_no_such_dependency'",
    ),
    (
        "module-raises",
        "cz_raising:app",
        "importing failed",
        "RuntimeError: cz_raising refuses to load",
    ),
    (
        "factory-raises",
        f"{APPS}:failing_factory()",
        "the factory raised",
        "ValueError: failing_factory refuses to build an app",
    ),
    ("not-callable", f"{APPS}:not_callable", "int object is not callable", None),
    ("no-colon", "nocolon", "expected 'module:callable'", None),
    ("unparsable", f"{APPS}:make_app(", "cannot parse", None),
    ("non-literal-argument", f"{APPS}:make_app(x)", "must be literals", None),
]


def check_failure(
    result: subprocess.CompletedProcess[str], must_contain: str, user_error: str | None = None
) -> None:
    out = f"status {result.returncode}\n--- stderr ---\n{result.stderr}--- stdout ---\n{result.stdout}"
    assert result.returncode != 0, out
    lines = result.stderr.splitlines()
    assert lines, f"nothing on stderr\n{out}"
    first = lines[0]
    assert first.startswith("catalyzer:"), out
    assert must_contain in first, out
    assert "Traceback" not in first, out
    assert "listening on" not in result.stdout + result.stderr, out
    # Never a traceback out of Twisted's or the Python machinery's own code.
    assert "site-packages/twisted" not in result.stderr, out
    if user_error is None:
        assert len(lines) == 1, f"expected one line\n{out}"
    else:
        # The user's error (with its traceback, if it has frames) follows the message.
        assert lines[-1] == user_error, out


@pytest.mark.parametrize(
    ("app", "must_contain", "user_error"),
    [pytest.param(*case[1:], id=case[0]) for case in APP_ERRORS],
)
def test_bad_app(broken: Broken, app: str, must_contain: str, user_error: str | None) -> None:
    port = free_port()
    result = run_cli(
        "--app",
        app,
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        env={"PYTHONPATH": str(broken.path)},
        deadline=FAIL_DEADLINE,
    )
    assert repr(app) in result.stderr.partition("\n")[0], result.stderr
    check_failure(result, must_contain, user_error)
    assert refused(port), f"something is listening on {port} after a failed start"


@pytest.mark.parametrize("app", ["cz_raising:app", f"{APPS}:failing_factory()"])
def test_bad_app_traceback_shows_only_user_code(broken: Broken, app: str) -> None:
    result = run_cli("--app", app, env={"PYTHONPATH": str(broken.path)}, deadline=FAIL_DEADLINE)
    assert result.returncode != 0
    frames = re.findall(r'^  File "([^"]+)"', result.stderr, re.M)
    assert frames, result.stderr
    assert all(f.startswith((str(broken.path), str(Path(__file__).parent))) for f in frames), (
        result.stderr
    )


def test_missing_app() -> None:
    result = run_cli("--listen", "tcp:0:interface=127.0.0.1", deadline=FAIL_DEADLINE)
    check_failure(result, "--app MODULE:CALLABLE is required")


@pytest.mark.parametrize(
    ("endpoint", "must_contain"),
    [
        pytest.param("nonsense:1", "--listen 'nonsense:1'", id="unknown-type"),
        pytest.param("tcp:notaport", "--listen 'tcp:notaport'", id="bad-port"),
        pytest.param(
            "haproxy:ssl:0:privateKey=k.pem", "terminate TLS in the proxy", id="proxy-over-tls"
        ),
        pytest.param("haproxy:tcp:notaport", "--listen 'haproxy:tcp:notaport'", id="proxy-bad"),
    ],
)
def test_bad_listen(endpoint: str, must_contain: str) -> None:
    port = free_port()
    result = run_cli(
        "--app",
        f"{APPS}:app",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--listen",
        endpoint,
        deadline=FAIL_DEADLINE,
    )
    check_failure(result, must_contain)
    assert refused(port), f"something is listening on {port} after a failed start"


@pytest.fixture(params=["port-in-use", "port-out-of-range"])
def unbindable(request: pytest.FixtureRequest, busy_port: int) -> tuple[str, str]:
    """An endpoint that parses but cannot be bound, and the reason the server should give."""
    if request.param == "port-in-use":
        return f"tcp:{busy_port}:interface=127.0.0.1", "Address already in use"
    return "tcp:70000:interface=127.0.0.1", "port must be 0-65535"


def test_bind_failure_exits_and_leaves_nothing_listening(unbindable: tuple[str, str]) -> None:
    endpoint, reason = unbindable
    port = free_port()
    result = run_cli(
        "--app",
        f"{APPS}:app",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--listen",
        endpoint,
        deadline=FAIL_DEADLINE,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"catalyzer: cannot listen on {endpoint}: " in output, output
    assert reason in output, output
    assert "Traceback" not in output, output
    assert refused(port), f"the other endpoint, {port}, is still listening"


# Far below what 1,000 thread stacks reserve (8 MiB each by default, 2 MiB at the least), far
# above what a server with a few threads needs.
THREADLESS_ADDRESS_SPACE = 1_500_000_000


@pytest.mark.parametrize(
    ("command", "procs"),
    [
        ("catalyzer", "1"),
        ("catalyzer", "2"),
        ("catalyzer-handler", "1"),
        ("catalyzer-handler", "2"),
    ],
)
def test_threads_the_system_refuses_end_the_start_with_the_reason(command: str, procs: str) -> None:
    """``--threads`` more than the machine allows (a thread limit, or, here, an address-space
    limit) ends the start with the reason: status 1, or the master's 3 for a worker that cannot
    boot; never a traceback, never a process that hangs on with half its pool."""
    where = (
        ["--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
        if command == "catalyzer"
        else ["--connect", f"tcp://127.0.0.1:{free_port()}"]
    )
    result = run_cli(
        "--app",
        f"{APPS}:app",
        *where,
        "--threads",
        "1000",
        "--procs",
        procs,
        command=command,
        address_space=THREADLESS_ADDRESS_SPACE,
        deadline=FAIL_DEADLINE,
    )
    output = result.stdout + result.stderr
    assert result.returncode == (1 if procs == "1" else 3), output
    reason = re.search(
        rf"(?:^|: ){command}: cannot start: --threads 1000: the system refused thread (\d+) "
        r"\(can't start new thread\); use fewer threads",
        result.stderr,
        re.MULTILINE,
    )
    assert reason is not None, output
    assert 1 <= int(reason.group(1)) < 1000, output
    if procs != "1":
        master = rf"^{command}: worker \d failed to boot \(exit status 3\)"
        assert re.search(master, result.stderr, re.MULTILINE), output
    assert "Traceback" not in output, output


def test_bind_failure_message_on_stderr(unbindable: tuple[str, str]) -> None:
    endpoint, reason = unbindable
    result = run_cli("--app", f"{APPS}:app", "--listen", endpoint, deadline=FAIL_DEADLINE)
    # The process may log its start to stdout; the error itself belongs on stderr.
    result.stdout = ""
    check_failure(result, f"cannot listen on {endpoint}: ")
    assert reason in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["missing-directory", "is-a-directory"])
def test_unwritable_access_log(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "no-such-dir" / "access.log" if kind == "missing-directory" else tmp_path
    port = free_port()
    result = run_cli(
        "--app",
        f"{APPS}:app",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--access-log",
        str(path),
        deadline=FAIL_DEADLINE,
    )
    check_failure(result, f"--access-log {str(path)!r}")
    assert refused(port)


@pytest.mark.parametrize(
    ("args", "must_contain"),
    [
        pytest.param(["--max-body", "lots"], "'max-body'", id="max-body-lots"),
        pytest.param(["--threads", "-1"], "'threads'", id="threads-negative"),
        pytest.param(["--die-timeout", "nan"], "'die-timeout'", id="die-timeout-nan"),
        pytest.param(["--script-name", "app/"], "'script-name'", id="script-name-slash"),
        pytest.param(
            ["--forwarded-allow-ips", "localhost"], "'forwarded-allow-ips'", id="allow-ips-name"
        ),
    ],
)
def test_bad_setting_value(args: list[str], must_contain: str) -> None:
    port = free_port()
    result = run_cli(
        "--app",
        f"{APPS}:app",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        *args,
        deadline=FAIL_DEADLINE,
    )
    check_failure(result, must_contain)
    assert args[1] in result.stderr.splitlines()[0]
    assert refused(port)


@pytest.mark.parametrize(
    ("app", "body"),
    [
        (f"{APPS}:make_app()", b"made by a factory\n"),
        (f"{APPS}:make_app('hello, factory')", b"hello, factory\n"),
        (f"{APPS}:make_app(greeting='by keyword')", b"by keyword\n"),
    ],
)
def test_factory_app(start_server: Launcher, app: str, body: bytes) -> None:
    server = start_server(app=app)
    status, _, got = server.request("GET", "/anything")
    assert (status, got) == (200, body)


def test_help_lists_every_setting() -> None:
    result = run_cli("--help", deadline=FAIL_DEADLINE)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # Split mode's settings are catalyzer-front's and catalyzer-handler's (tests/split).
    missing = [
        s.name
        for s in SETTINGS
        if s.section != SPLIT_SECTION and (f"--{s.name} " if s.flag else f"--{s.name}=") not in text
    ]
    assert "--handlers=" not in text
    assert not missing, f"--help does not list {missing}\n{text}"
    shorts = [s for s in SETTINGS if s.short]
    assert all(f"-{s.short}, --{s.name}=" in text for s in shorts), text


def test_settings_from_the_environment_reach_the_real_command(start_server: Launcher) -> None:
    """The twistd plugin reads the process's own environment: a bad value ends the start with
    one line naming the variable, a good one is used."""
    result = run_cli(
        "--app", f"{APPS}:app", env={"CATALYZER_MAX_BODY": "lots"}, deadline=FAIL_DEADLINE
    )
    check_failure(result, "environment variable CATALYZER_MAX_BODY: setting 'max-body'")
    server = start_server(env={"CATALYZER_MAX_BODY": "10"})
    status, _, _ = server.request("POST", "/echo", body=b"x" * 11)
    assert status == 413
    status, _, _ = server.request("POST", "/echo", body=b"x" * 10)
    assert status == 200
