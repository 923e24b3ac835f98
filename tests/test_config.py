"""--config FILE: the same settings in TOML; the command line wins; mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalyzer.configfile import load_config_file
from catalyzer.settings import SettingError
from catalyzer.tap import Options


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "catalyzer.toml"
    path.write_text(text)
    return str(path)


def parse(*argv: str) -> Options:
    return parse_with({}, *argv)


def parse_with(environ: dict[str, str], *argv: str) -> Options:
    """Options from ``argv`` in ``environ`` (not the test run's own environment)."""
    options = Options(environ=environ)
    options.parseOptions(list(argv))
    return options


def test_file_values_and_command_line_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'app = "examples.hello:app"\nprocs = 3\nmax-body = "10M"\nheader_timeout = 2.5\n'
        'listen = ["tcp:0:interface=127.0.0.1", "unix:/tmp/cz.sock"]\n',
    )
    config = parse("--config", path).config
    assert config is not None
    assert (config.app, config.procs, config.max_body, config.header_timeout) == (
        "examples.hello:app",
        3,
        10 * 2**20,
        2.5,
    )
    assert config.listen == ("tcp:0:interface=127.0.0.1", "unix:/tmp/cz.sock")
    config = parse("--config", path, "--procs", "2", "--listen", "tcp:0").config
    assert config is not None
    assert (config.procs, config.listen, config.max_body) == (2, ("tcp:0",), 10 * 2**20)


def test_single_string_for_repeatable(tmp_path: Path) -> None:
    assert load_config_file(write(tmp_path, 'listen = "tcp:9000"\n')) == {"listen": ["tcp:9000"]}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("procz = 3\n", ["unknown setting 'procz'", "did you mean 'procs'"]),
        ('max-body = "lots"\n', ["setting 'max-body'", "'lots'", "byte count"]),
        ("threads = -2\n", ["setting 'threads'", "-2", "0 or more"]),
        ("keepalive-timeout = true\n", ["setting 'keepalive-timeout'", "True"]),
        ("listen = [1, 2]\n", ["setting 'listen'", "list of strings"]),
        ("procs = \n", ["not valid TOML"]),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingError) as e:
        load_config_file(path)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_cli_reports_config_errors_as_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "procz = 3\n")
    with pytest.raises(SystemExit) as e:
        parse("--config", path, "--app", "examples.hello:app")
    assert str(e.value).startswith("catalyzer: error: ") and "procz" in str(e.value)
    with pytest.raises(SystemExit) as e:
        parse("--config", str(tmp_path / "missing.toml"), "--app", "examples.hello:app")
    assert "No such file" in str(e.value)


def test_gateway_faces_replace_the_default_listen(tmp_path: Path) -> None:
    options = parse("--app", "x:app", "--uwsgi", "tcp:0", "--fastcgi", "unix:/tmp/cz.fcgi")
    assert options.config is not None
    assert options.config.listen == ()
    assert [d for d, _ in options.endpoints] == ["uwsgi:tcp:0", "fastcgi:unix:/tmp/cz.fcgi"]
    # Asked for, HTTP is listened on too; and the file can name the faces.
    path = write(tmp_path, 'uwsgi = ["tcp:9000"]\n')
    options = parse("--config", path, "--app", "x:app", "--listen", "tcp:0")
    assert [d for d, _ in options.endpoints] == ["tcp:0", "uwsgi:tcp:9000"]


def test_bad_gateway_endpoint_is_named() -> None:
    with pytest.raises(SystemExit) as e:
        parse("--app", "x:app", "--fastcgi", "nonsense:1")
    assert "--fastcgi 'nonsense:1'" in str(e.value)


def test_nothing_to_listen_on(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        parse("--app", "x:app", "--config", write(tmp_path, "listen = []\n"))
    assert "nothing to listen on" in str(e.value)


# -- CATALYZER_NAME environment variables


def test_environment_values_between_file_and_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'app = "examples.hello:app"\nprocs = 3\nmax-body = "10M"\n')
    environ = {
        "CATALYZER_PROCS": "4",
        "CATALYZER_LISTEN": "tcp:0:interface=127.0.0.1  unix:/tmp/cz.sock",
        "CATALYZER_RELOAD": "true",
        "CATALYZER_HEADER_TIMEOUT": "2.5",
        "PATH": "/usr/bin",  # not ours
        "CATALYZER_WORKER": "{}",  # a process's plumbing, not a setting
    }
    config = parse_with(environ, "--config", path).config
    assert config is not None
    assert (config.app, config.max_body) == ("examples.hello:app", 10 * 2**20)  # the file's
    assert (config.procs, config.header_timeout, config.reload) == (4, 2.5, True)
    assert config.listen == ("tcp:0:interface=127.0.0.1", "unix:/tmp/cz.sock")
    config = parse_with(environ, "--config", path, "--procs", "2", "--listen", "tcp:0").config
    assert config is not None
    assert (config.procs, config.listen) == (2, ("tcp:0",))
    config = parse_with({"CATALYZER_RELOAD": "0"}, "--app", "x:app").config
    assert config is not None and config.reload is False


@pytest.mark.parametrize(
    ("environ", "fragments"),
    [
        ({"CATALYZER_PROC": "4"}, ["CATALYZER_PROC: no such setting", "CATALYZER_PROCS?"]),
        ({"CATALYZER_ZZZ": "1"}, ["CATALYZER_ZZZ: no such setting"]),
        ({"CATALYZER_PROCS": "many"}, ["CATALYZER_PROCS: setting 'procs'", "'many'"]),
        ({"CATALYZER_RELOAD": "maybe"}, ["CATALYZER_RELOAD", "true or false"]),
        ({"CATALYZER_LISTEN": "bogus:1"}, ["--listen 'bogus:1'"]),
    ],
)
def test_environment_mistakes_end_the_start_with_one_line(
    environ: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse_with(environ, "--app", "examples.hello:app")
    message = str(e.value)
    assert message.startswith("catalyzer: error: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_split_commands_take_their_own_settings_from_one_shared_environment() -> None:
    from catalyzer.split.tap import FrontOptions, HandlerOptions

    # One environment for a host that runs both: each command takes what is its own.
    environ = {
        "CATALYZER_APP": "examples.hello:app",
        "CATALYZER_CONNECT": "tcp://127.0.0.1:5560 tcp://127.0.0.1:5561",
        "CATALYZER_HANDLERS": "tcp://127.0.0.1:5560",
        "CATALYZER_TAG": "v43",
        "CATALYZER_QUEUE_LENGTH": "7",
    }
    front = FrontOptions(environ=environ)
    front.parseOptions([])
    handler = HandlerOptions(environ=environ)
    handler.parseOptions(["--tag", "v44"])
    assert front.config is not None and handler.config is not None
    assert (front.config.handlers, front.config.queue_length) == (("tcp://127.0.0.1:5560",), 7)
    assert front.config.app == ""  # the front has no application
    assert handler.config.app == "examples.hello:app"
    assert handler.config.connect == ("tcp://127.0.0.1:5560", "tcp://127.0.0.1:5561")
    assert handler.config.tag == "v44"  # the command line wins
