"""Upload progress seen in a real browser.

``examples/upload`` is served by ``twistd -n catalyzer --procs 2 --progress-path /progress`` and
driven by Playwright in headless Chromium (Debian's ``/usr/bin/chromium``; Playwright's own browser
download is not used). The upload is throttled through the DevTools protocol so that it takes
several seconds; the page polls ``/progress`` and must show a rising percentage, then "done" with
the application's size and sha256 of what it received. A screenshot taken mid-upload is kept as
``test-artifacts/upload-progress.png``.

Without Chromium the test is skipped, except under CI (``CI`` set), where ``.ci/run`` installs it
and a missing browser is a failure. ``make browser`` installs it on a development machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import REPO, Launcher, ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts, which
# this closed network refuses. Playwright gives it a fresh --user-data-dir (the test's tmp_path).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APP = "examples.upload.app:app"
FILE_SIZE = 30 * 2**20  # random bytes
UPLOAD_THROUGHPUT = 4 * 2**20  # bytes per second, DevTools throttling: about 7.5 s for the file
UPLOAD_DEADLINE = 60.0  # from the click to "done"
BROWSER_TIMEOUT = 30.0  # launch, page load, each browser call
FRESH_POLLS = 8  # polls on new connections mid-upload, spread over both workers by the kernel
SCREENSHOT = REPO / "test-artifacts" / "upload-progress.png"

# The page's own state, as the test reads it.
STATE_JS = """() => ({
    state: document.getElementById("status").dataset.state,
    status: document.getElementById("status").textContent,
    percent: document.getElementById("percent").textContent,
    result: document.getElementById("result").textContent,
    seen: window.seenPercentages,
    reply: window.uploadResult,
    id: window.uploadId,
})"""
# True once the displayed percentage is between 20 and 80, or the upload is over.
MID_UPLOAD_JS = """() => {
    const state = document.getElementById("status").dataset.state;
    const percent = parseInt(document.getElementById("percent").textContent, 10);
    return state !== "uploading" || (percent >= 20 && percent <= 80);
}"""
FINISHED_JS = """() => document.getElementById("status").dataset.state !== "uploading" """


@pytest.fixture
def upload_server(tmp_path: Path) -> Iterator[ServerProcess]:
    launcher = Launcher("prefork", tmp_path)  # the "prefork" mode adds --procs 2
    try:
        yield launcher("--progress-path", "/progress", app=APP)
    finally:
        launcher.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (Debian's chromium package; `make browser` installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set: .ci/run should have installed it")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 800, "height": 480},
            timeout=BROWSER_TIMEOUT * 1000,
        )
        try:
            context.set_default_timeout(BROWSER_TIMEOUT * 1000)
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def page_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(STATE_JS)
    return state


def poll_fresh(server: ServerProcess, upload_id: str) -> dict[str, Any]:
    """One progress poll on a new connection (so on either worker), with the header form."""
    status, headers, body = server.request("GET", "/progress", headers={"X-Progress-ID": upload_id})
    assert status == 200, (status, body)
    assert headers["Cache-Control"] == "no-store"
    progress: dict[str, Any] = json.loads(body)
    return progress


def test_upload_progress_in_browser(
    page: Page, upload_server: ServerProcess, tmp_path: Path
) -> None:
    data = os.urandom(FILE_SIZE)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    expected = {"size": FILE_SIZE, "sha256": hashlib.sha256(data).hexdigest()}
    del data

    page.goto(upload_server.url + "/")
    devtools = page.context.new_cdp_session(page)
    devtools.send("Network.enable")
    devtools.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": UPLOAD_THROUGHPUT,
        },
    )
    page.set_input_files("#file", str(upload))
    started = time.monotonic()
    page.click("#upload")

    # Mid-upload: keep a screenshot, and poll on fresh connections, which the kernel spreads
    # over both workers, whichever of them is receiving the upload.
    page.wait_for_function(MID_UPLOAD_JS, timeout=UPLOAD_DEADLINE * 1000)
    mid = page_state(page)
    assert mid["state"] == "uploading", (
        f"the page never showed a percentage between 20 and 80 while uploading "
        f"(after {time.monotonic() - started:.1f}s): {mid}\n--- server log ---\n"
        f"{upload_server.log()}"
    )
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT)
    fresh = [poll_fresh(upload_server, mid["id"]) for _ in range(FRESH_POLLS)]
    for progress in fresh:
        assert progress["state"] in ("uploading", "done"), fresh
        assert progress["size"] == FILE_SIZE, fresh
        assert progress["received"] > 0, fresh

    left = UPLOAD_DEADLINE - (time.monotonic() - started)
    page.wait_for_function(FINISHED_JS, timeout=max(left, 1.0) * 1000)
    elapsed = time.monotonic() - started
    final = page_state(page)
    context = f"after {elapsed:.1f}s, page state {final}\n--- server log ---\n{upload_server.log()}"

    assert final["state"] == "done", context
    assert final["status"] == "done", context
    assert final["reply"] == expected, context
    assert expected["sha256"] in final["result"], context

    seen = final["seen"]
    assert all(a < b for a, b in itertools.pairwise(seen)), (
        f"percentages not strictly increasing: {context}"
    )
    during = [p for p in seen if 0 < p < 100]
    assert len(during) >= 3, f"fewer than 3 percentages shown during the upload: {context}"
    assert seen[-1] == 100, context
