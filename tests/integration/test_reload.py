"""--reload as a developer uses it: edit a module, see new output; break it, see the error in the
response; fix it, see the fix. Real processes on 127.0.0.1; every wait has a deadline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.integration

SAVE_DEADLINE = 10.0  # "about a second" when idle; generous for a loaded CI machine

VERSION = """def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{text}"]
"""


def save(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    assert path.stat().st_mtime_ns != before, "the filesystem clock is too coarse for this test"


def wait_for_body(
    server: ServerProcess, predicate: Callable[[int, bytes], bool], what: str
) -> bytes:
    """Until a response passes ``predicate(status, body)``. (While generations swap, old and new
    workers both answer for a moment.)"""

    def check() -> bytes | None:
        try:
            status, _, body = server.request("GET", "/")
        except OSError:
            return None
        return body if predicate(status, body) else None

    return server.wait_until(check, SAVE_DEADLINE, what)


@pytest.mark.split_skip("catalyzer-handler has no --reload (docs/split.md: use HUP with --procs)")
def test_edit_break_fix(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    """Runs once per server mode: --reload with --procs 1 and with --procs 2."""
    module = tmp_path / "reloadme.py"
    module.write_text(VERSION.format(text="one"))
    template = tmp_path / "page.html"
    template.write_text("v1")
    server = start_server(
        "--reload",
        "--watch",
        str(tmp_path / "*.html"),
        app="reloadme:app",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert server.request("GET", "/")[2] == b"one"
    save(module, VERSION.format(text="two"))
    wait_for_body(server, lambda st, b: b == b"two", "the edited code to answer")

    save(module, "def app(:\n")
    body = wait_for_body(
        server, lambda st, b: st == 500 and b"SyntaxError" in b, "the error in a 500 response"
    )
    assert b"reloadme.py" in body
    server.wait_for_log(r"SyntaxError")

    save(module, VERSION.format(text="three"))
    wait_for_body(server, lambda st, b: b == b"three", "the fixed code to answer")

    save(template, "v2")  # an extra watched file also reloads
    server.wait_for_log(r"changed: [^;]*page\.html[^;]*; reloading")
