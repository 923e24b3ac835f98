"""--profile: which requests are profiled, how the files are named and pruned, and what a file
holds. Plain objects and a temporary directory; the app is called directly."""

from __future__ import annotations

import os
import pstats
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalyzer.ops.profiling import ProfiledApp, files_to_remove, profile_name


def busy_work_marker() -> int:
    return sum(range(100))


def list_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    busy_work_marker()
    start_response("200 OK", [])
    return [b"ok"]


class Body:
    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"a"
        busy_work_marker()
        yield b"b"

    def close(self) -> None:
        self.closed = True


def functions(path: Path) -> set[str]:
    stats = pstats.Stats(str(path))
    return {name for (_file, _line, name) in stats.stats}  # type: ignore[attr-defined]


def make(tmp_path: Path, app: Any, every: int = 3, keep: int = 10) -> ProfiledApp:
    clock = iter(float(t) for t in range(1_700_000_000, 1_800_000_000))
    errors: list[str] = []
    profiled = ProfiledApp(app, str(tmp_path), every, keep, errors.append, lambda: next(clock))
    profiled.errors = errors  # type: ignore[attr-defined]
    return profiled


def call(app: ProfiledApp) -> list[bytes]:
    result = app({}, lambda status, headers: None)
    try:
        return list(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def test_one_request_in_every_n_is_profiled(tmp_path: Path) -> None:
    app = make(tmp_path, list_app, every=3)
    for _ in range(7):
        assert call(app) == [b"ok"]
    (first, second) = sorted(tmp_path.iterdir())
    assert app.written == 2
    assert "busy_work_marker" in functions(first)
    assert first.name.endswith(f"-{os.getpid()}-1.pstats")
    assert second.name.endswith(f"-{os.getpid()}-2.pstats")


def test_a_list_body_is_returned_as_it_is(tmp_path: Path) -> None:
    app = make(tmp_path, list_app, every=1)
    result = app({}, lambda status, headers: None)
    assert type(result) is list


def test_an_iterated_body_is_profiled_to_its_close(tmp_path: Path) -> None:
    body = Body()
    app = make(tmp_path, lambda environ, start_response: body, every=1)
    result = app({}, lambda status, headers: None)
    assert list(tmp_path.iterdir()) == []  # not written before the body is done
    assert list(result) == [b"a", b"b"]
    result.close()
    assert body.closed
    (path,) = tmp_path.iterdir()
    assert {"busy_work_marker", "close"} <= functions(path)


def test_an_app_that_raises_still_leaves_its_profile(tmp_path: Path) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        busy_work_marker()
        raise RuntimeError("boom")

    app = make(tmp_path, broken, every=1)
    with pytest.raises(RuntimeError):
        app({}, lambda status, headers: None)
    (path,) = tmp_path.iterdir()
    assert "busy_work_marker" in functions(path)


def test_only_the_newest_files_stay_and_others_are_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    app = make(tmp_path, list_app, every=1, keep=3)
    for _ in range(5):
        call(app)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and "notes.txt" in names
    assert [n.rsplit("-", 1)[1] for n in names if n != "notes.txt"] == [
        "3.pstats",
        "4.pstats",
        "5.pstats",
    ]


def test_names_sort_by_time_and_do_not_collide_across_workers() -> None:
    a = profile_name(1_700_000_000_123, "web/1", 812, 1)
    b = profile_name(1_700_000_000_123, "web/1", 813, 1)
    assert a == "1700000000123-web_1-812-1.pstats" and a != b
    later = profile_name(1_700_000_000_124, "a", 1, 9)
    assert files_to_remove([later, a, b, "x.pstats"], keep=1) == [a, b]
    assert files_to_remove([a], keep=5) == []


def test_a_directory_that_cannot_be_written_is_one_error_not_an_exception(tmp_path: Path) -> None:
    app = make(tmp_path / "gone", list_app, every=1)
    assert call(app) == [b"ok"]
    (error,) = app.errors  # type: ignore[attr-defined]
    assert error.startswith("--profile: cannot write ") and "gone" in error
