"""The one settings table: coercion, validation and the generated docs page."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalyzer.settings import BY_NAME, SETTINGS, Config, SettingError, parse_size, render_markdown

ROOT = Path(__file__).resolve().parent.parent


# -- settings


def test_settings_page_is_current() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == render_markdown(), "docs/settings.md is stale: run `make docs`"


def test_every_setting_has_help_section_and_valid_default() -> None:
    for s in SETTINGS:
        assert s.help and s.section
        if not s.repeatable and s.default != "":
            assert s.coerce(str(s.default)) == s.default


@pytest.mark.parametrize(
    ("text", "value"),
    [("65536", 65536), ("64K", 65536), ("64KiB", 65536), ("1m", 2**20), ("2G", 2 * 2**30)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("name", "raw", "fragment"),
    [
        ("max-body", "lots", "byte count"),
        ("max-body", "0", "1 byte or more"),
        ("threads", "-1", "0 or more"),
        ("header-timeout", "nan", "above 0"),
        ("header-timeout", "0", "above 0"),
        ("script-name", "app/", "start with '/'"),
        ("app", "nocolon", "module:callable"),
        ("max-headers", True, "expected"),
        ("forwarded-allow-ips", "127.0.0.1,localhost", "'localhost' is not an address, a network"),
        ("forwarded-allow-ips", "10.0.0.0/40", "is not an address, a network"),
    ],
)
def test_bad_values_name_setting_value_and_rule(name: str, raw: object, fragment: str) -> None:
    with pytest.raises(SettingError) as e:
        BY_NAME[name].coerce(raw)
    assert name in str(e.value) and repr(raw) in str(e.value) and fragment in str(e.value)


def test_config_defaults_and_unknown_key() -> None:
    config = Config.from_values({"app": "a:b"})
    assert config.listen == ("tcp:8080:interface=127.0.0.1",)
    with pytest.raises(SettingError, match="unknown setting 'no-such'"):
        Config.from_values({"app": "a:b", "no-such": 1})


def test_forwarded_allow_ips_normalised() -> None:
    assert BY_NAME["forwarded-allow-ips"].coerce(" 10.0.0.0/8 , ::1,") == "10.0.0.0/8,::1"


def test_the_environment_variables_of_the_processes_own_are_not_read_as_settings() -> None:
    from catalyzer.dispatch import wire
    from catalyzer.prefork import control
    from catalyzer.settings import environment_values

    # ops.trace reads CATALYZER_DEBUG; the test suite's pure mode CATALYZER_TEST_PURE.
    plumbing = {
        control.ENV_KEY: "{}",
        wire.ENV_KEY: "{}",
        "CATALYZER_DEBUG": "1",
        "CATALYZER_TEST_PURE": "1",
    }
    assert environment_values(plumbing) == {}
    assert not any(
        name.replace("-", "_").upper() in {"WORKER", "DISPATCH", "DEBUG"} for name in BY_NAME
    )
