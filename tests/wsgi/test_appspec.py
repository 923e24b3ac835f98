"""App specs: parsing ``module:callable`` and loading the app."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from catalyzer.wsgi.appspec import AppSpecError, load_app, parse_app_spec

# -- app specs


def test_parse_app_spec_forms() -> None:
    assert parse_app_spec("pkg.mod:app").attribute == ("app",)
    spec = parse_app_spec("pkg.mod:factory('x', n=2)")
    assert spec.attribute == ("factory",) and spec.call == (("x",), {"n": 2})
    assert parse_app_spec("m:obj.wsgi").attribute == ("obj", "wsgi")


@pytest.mark.parametrize(
    "text", ["nocolon", "m:", ":app", "1m:app", "m:f(x)", "m:f(**k)", "m:a+b", "m:f()()"]
)
def test_parse_app_spec_rejects(text: str) -> None:
    with pytest.raises(AppSpecError):
        parse_app_spec(text)


def test_load_app_errors_are_for_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_mod.py").write_text("def app(:\n")
    (tmp_path / "ok_mod.py").write_text(
        "def make(greeting='hi'):\n    def app(e, s):\n        return [greeting.encode()]\n"
        "    return app\nnot_callable = 3\ndef bad():\n    raise RuntimeError('factory broke')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppSpecError, match="no module named 'nope_mod'"):
        load_app("nope_mod:app")
    with pytest.raises(AppSpecError, match="SyntaxError"):
        load_app("broken_mod:app")
    with pytest.raises(AppSpecError, match="has no attribute 'missing'"):
        load_app("ok_mod:missing")
    with pytest.raises(AppSpecError, match="not callable"):
        load_app("ok_mod:not_callable")
    with pytest.raises(AppSpecError, match="factory broke"):
        load_app("ok_mod:bad()")
    app = load_app("ok_mod:make('yo')")
    assert app({}, lambda *a: None) == [b"yo"]
    sys.modules.pop("ok_mod", None)
