"""The dispatcher's one option table: the constructor, the command line and the docs agree."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from catalyzer.dispatch import PreforkDispatcher, settings
from catalyzer.dispatch import tap as dispatch_tap

ROOT = Path(__file__).resolve().parent.parent.parent


def test_dispatch_page_tables_are_current() -> None:
    page = (ROOT / "docs" / "dispatch.md").read_text()
    assert page.count("<!-- generated from src/catalyzer/dispatch/settings.py:") == 2
    assert page == settings.update_page(page), "docs/dispatch.md is stale: run `make docs`"


def test_constructor_keywords_and_defaults_are_the_tables() -> None:
    params = inspect.signature(PreforkDispatcher.__init__).parameters
    keywords = {name: p for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert list(keywords) != [] and set(keywords) == set(settings.BY_KEYWORD)
    for name, param in keywords.items():
        setting = settings.BY_KEYWORD[name]
        if setting.required:
            assert param.default is param.empty, name
        else:
            assert param.default == setting.default, name


def test_defaults_pass_their_own_rules() -> None:
    settings.validate({s.keyword: s.default for s in settings.SETTINGS})


@pytest.mark.parametrize(
    ("keyword", "value", "error", "fragment"),
    [
        ("max_forks", -1, ValueError, "max_forks cannot be negative (got -1)"),
        ("pre_fork", -2, ValueError, "pre_fork cannot be negative"),
        ("max_requests", -1, ValueError, "max_requests cannot be negative"),
        ("timeout", -0.5, ValueError, "timeout cannot be negative"),
        ("stop_timeout", -1.0, ValueError, "stop_timeout cannot be negative"),
        ("classes", "reports", TypeError, "classes is a list of module names"),
    ],
)
def test_constructor_refuses_what_the_table_refuses(
    keyword: str, value: object, error: type[Exception], fragment: str
) -> None:
    kw: dict[str, Any] = {keyword: value}
    with pytest.raises(error) as info:
        PreforkDispatcher(reactor=Clock(), **kw)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_every_option_is_on_the_command_line() -> None:
    usage = dispatch_tap.Options().getUsage()
    for option, _ in settings.OPTIONS:
        assert f"--{option.name}=" in usage
        if option.short:
            assert f"-{option.short}, --{option.name}=" in usage
    for setting in settings.SETTINGS:
        if setting.option is not None:
            assert setting.option.help in " ".join(usage.split())


def test_command_line_values_defaults_fallback_and_keywords() -> None:
    values = settings.from_command_line({"procs": "3", "timeout": "0"})
    assert values["procs"] == 3 and values["pre-fork"] == 3  # --pre-fork falls back to --procs
    assert values["timeout"] is None  # 0: no limit
    assert values["listen"] == settings.DEFAULT_LISTEN
    kw = settings.keywords({**values, "methods": ["tests.dispatch.tasks"]})
    assert kw["max_forks"] == 3 and kw["classes"] == ["tests.dispatch.tasks"]
    assert "listen" not in kw
    settings.validate(kw)
    assert settings.from_command_line({"procs": "3", "pre-fork": "1"})["pre-fork"] == 1


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"procs": "-1"}, "--procs cannot be negative"),
        ({"timeout": "soon"}, "--timeout 'soon': expected float"),
        ({"max-requests": "1.5"}, "--max-requests '1.5': expected int"),
        ({"spawn-delay": "-2"}, "--spawn-delay cannot be negative"),
    ],
)
def test_command_line_errors_name_option_value_and_rule(
    given: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        settings.from_command_line(given)
