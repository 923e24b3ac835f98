"""The reload watcher's own logic, on a Clock (the file monitor thread is not started)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from catalyzer.prefork.reloader import FileWatcher, error_app, files_in_traceback


class FakeReactor(Clock):
    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def test_changes_coalesce_into_one_reload(tmp_path: Path) -> None:
    reactor = FakeReactor()
    seen: list[list[str]] = []
    watcher = FileWatcher(reactor, seen.append)
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("a")
    b.write_text("b")
    watcher.watch([str(a), str(b)])
    watcher._changed_in_thread(str(a))
    watcher._changed_in_thread(str(b))
    reactor.advance(0.05)
    assert seen == []
    reactor.advance(0.05)
    assert seen == [[str(a), str(b)]]


def test_file_saved_after_its_process_started_counts_as_changed(tmp_path: Path) -> None:
    reactor = FakeReactor()
    seen: list[list[str]] = []
    watcher = FileWatcher(reactor, seen.append)
    old, new = tmp_path / "old.py", tmp_path / "new.py"
    old.write_text("x")
    new.write_text("y")
    os.utime(old, (1000, 1000))
    os.utime(new, (3000, 3000))
    watcher.watch([str(old), str(new)], since=2000)
    reactor.advance(1)
    assert seen == [[str(new)]]


def test_patterns_expand_globs_and_directories(tmp_path: Path) -> None:
    (tmp_path / "templates" / "sub").mkdir(parents=True)
    (tmp_path / "templates" / "sub" / "x.html").write_text("x")
    (tmp_path / "conf.toml").write_text("")
    watcher = FileWatcher(FakeReactor(), lambda paths: None)
    watcher.watch_patterns([str(tmp_path / "templates"), str(tmp_path / "*.toml")])
    assert str(tmp_path / "templates" / "sub" / "x.html") in watcher.paths
    assert str(tmp_path / "conf.toml") in watcher.paths


def test_error_app_and_traceback_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    text = f'--app x: importing failed:\n  File "{broken}", line 1\n    def f(:\nSyntaxError'
    assert files_in_traceback(text) == [str(broken)]
    statuses: list[str] = []
    body = b"".join(error_app(text)({}, lambda s, h: statuses.append(s)))
    assert statuses == ["500 Internal Server Error"] and b"SyntaxError" in body
