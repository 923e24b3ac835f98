"""The wheel: ships the twistd plugin without claiming the ``twisted`` package, and installed in a
fresh virtualenv makes ``twistd catalyzer`` available."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]

# What pip prints when it cannot reach the package index at all.
OFFLINE_SIGNS = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ProxyError",
    "Max retries exceeded",
    "No matching distribution found for twisted",
    "No matching distribution found for httptools",
)


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        return subprocess.run(
            argv,
            check=False,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{argv} did not finish within {timeout:g}s; output: {e.output!r}")


def show(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{result.args} -> status {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("dist")
    result = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir)], REPO, 300)
    if result.returncode != 0 and any(s in result.stdout + result.stderr for s in OFFLINE_SIGNS):
        pytest.skip(f"PyPI is unreachable, cannot fetch the build backend:\n{show(result)}")
    assert result.returncode == 0, show(result)
    wheels = list(outdir.glob("catalyzer-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {outdir}: {wheels}"
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "twisted/plugins/catalyzer_plugin.py" in names, sorted(names)
    assert "catalyzer/__init__.py" in names, sorted(names)
    assert "catalyzer/tap.py" in names, sorted(names)
    # The plugin directory is a namespace shared with Twisted itself: the wheel must not own it.
    assert "twisted/__init__.py" not in names, sorted(names)
    assert "twisted/plugins/__init__.py" not in names, sorted(names)
    # Twisted's plugin cache is generated where the wheel is installed, never shipped.
    assert "twisted/plugins/dropin.cache" not in names, sorted(names)
    # Nothing from outside the two packages (tests, a local virtualenv, build leftovers).
    strays = [
        n for n in names if not n.startswith(("catalyzer/", "twisted/plugins/", "catalyzer-"))
    ]
    assert not strays, strays


def test_installed_wheel_provides_the_twistd_plugin(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = run([sys.executable, "-m", "venv", str(venv)], tmp_path, 180)
    assert result.returncode == 0, show(result)
    python, twistd = venv / "bin" / "python", venv / "bin" / "twistd"
    result = run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, 600)
    if result.returncode != 0 and any(s in result.stdout + result.stderr for s in OFFLINE_SIGNS):
        pytest.skip(f"PyPI is unreachable, cannot install the dependencies:\n{show(result)}")
    assert result.returncode == 0, show(result)
    assert twistd.exists(), f"no twistd script in {venv / 'bin'}"

    # Run from tmp_path so nothing of the source tree can be imported instead of the wheel.
    listing = run([str(twistd), "--help"], tmp_path, 60)
    assert listing.returncode == 0, show(listing)
    assert any(line.split()[:1] == ["catalyzer"] for line in listing.stdout.splitlines()), show(
        listing
    )

    help_ = run([str(twistd), "-n", "catalyzer", "--help"], tmp_path, 60)
    assert help_.returncode == 0, show(help_)
    assert "--app=" in help_.stdout, show(help_)
    help_ = run([str(twistd), "-n", "catalyzer-dispatch", "--help"], tmp_path, 60)
    assert help_.returncode == 0, show(help_)
    assert "--methods=" in help_.stdout, show(help_)

    where = run(
        [
            str(python),
            "-c",
            "import catalyzer, twisted.plugins.catalyzer_plugin as p; "
            "print(catalyzer.__file__); print(p.__file__)",
        ],
        tmp_path,
        60,
    )
    assert where.returncode == 0, show(where)
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), show(where)
