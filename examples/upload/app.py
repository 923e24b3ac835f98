"""Upload progress, end to end: a page that uploads a file and shows how much the server has.

Run it with the progress endpoint switched on::

    twistd -n catalyzer --app examples.upload.app:app --progress-path /progress --procs 2

and open http://127.0.0.1:8080/. See README.md next to this file.

The application itself knows nothing about progress. The page tags its upload with an id
(``POST /upload?X-Progress-ID=<id>``) and asks ``GET /progress?X-Progress-ID=<id>`` a few times a
second; catalyzer answers those polls itself while it is still receiving the body, before this
application is called at all. Only once the whole body has arrived does ``upload`` below run.

Routes:

- ``GET /``: the page (HTML and JavaScript, below).
- ``POST /upload``: reads the whole request body and answers ``{"size": ..., "sha256": ...}``.
- ``GET /progress``: only reaches the application when the server was started without
  ``--progress-path /progress``; it answers 404 with a hint, which the page shows.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

CHUNK = 1 << 20  # read the body a mebibyte at a time: memory stays flat for any upload size


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    if path == "/" and method in ("GET", "HEAD"):
        return respond(start_response, "200 OK", PAGE.encode(), "text/html; charset=utf-8")
    if path == "/upload" and method == "POST":
        return upload(environ, start_response)
    if path == "/progress":
        hint = {"error": "no progress endpoint: start the server with --progress-path /progress"}
        return respond_json(start_response, "404 Not Found", hint)
    return respond(start_response, "404 Not Found", b"not found\n", "text/plain")


def upload(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Hash the request body. By the time this runs, the server has received all of it."""
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    digest = hashlib.sha256()
    size = 0
    while remaining > 0:
        chunk = stream.read(min(CHUNK, remaining))
        if not chunk:
            break  # the body was shorter than announced (other servers may do this)
        digest.update(chunk)
        size += len(chunk)
        remaining -= len(chunk)
    return respond_json(start_response, "200 OK", {"size": size, "sha256": digest.hexdigest()})


def respond(
    start_response: StartResponse, status: str, body: bytes, content_type: str
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def respond_json(start_response: StartResponse, status: str, data: object) -> list[bytes]:
    body = json.dumps(data).encode() + b"\n"
    return respond(start_response, status, body, "application/json")


# The page. Its script:
#   1. makes a random upload id,
#   2. POSTs the chosen file as the raw request body to /upload?X-Progress-ID=<id> with fetch(),
#   3. meanwhile asks /progress?X-Progress-ID=<id> every 250 ms and moves the bar,
#   4. shows "done" and the application's reply (size and sha256 of what it received).
# Every percentage it shows is also appended to window.seenPercentages (the browser test reads it).
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>catalyzer: upload progress</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem;
         color: #222; }
  h1 { font-size: 1.4rem; }
  .row { display: flex; align-items: center; gap: 0.75rem; margin: 1rem 0; }
  progress { flex: 1; height: 1.4rem; }
  #percent { width: 3.5rem; text-align: right; font-variant-numeric: tabular-nums;
             font-weight: bold; }
  #status { min-height: 1.4em; }
  #status[data-state="done"] { color: #1a7f37; font-weight: bold; }
  #status[data-state="error"] { color: #b42318; font-weight: bold; }
  #result { font-family: ui-monospace, monospace; font-size: 0.85rem; word-break: break-all; }
</style>
</head>
<body>
<h1>Upload progress</h1>
<p>Choose a file and upload it. The bar shows how many bytes the <em>server</em> has received,
as reported by catalyzer's <code>/progress</code> endpoint.</p>

<div class="row">
  <input type="file" id="file">
  <button type="button" id="upload">Upload</button>
</div>
<div class="row">
  <progress id="bar" max="100" value="0"></progress>
  <span id="percent">0%</span>
</div>
<p id="status" data-state="idle">No upload yet.</p>
<p id="result"></p>

<script>
"use strict";

const POLL_INTERVAL_MS = 250;

const fileInput = document.getElementById("file");
const button = document.getElementById("upload");
const bar = document.getElementById("bar");
const percentText = document.getElementById("percent");
const statusLine = document.getElementById("status");
const resultLine = document.getElementById("result");

window.seenPercentages = [];  // every percentage displayed during the last upload, in order
window.uploadResult = null;   // the application's reply to the last upload
window.uploadId = null;       // the X-Progress-ID of the last upload

function newUploadId() {
  // crypto.getRandomValues works on plain http:// too (crypto.randomUUID needs https).
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function formatBytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " bytes";
}

function setStatus(state, text) {
  statusLine.dataset.state = state;
  statusLine.textContent = text;
}

function showPercent(percent) {
  bar.value = percent;
  percentText.textContent = percent + "%";
  const seen = window.seenPercentages;
  if (seen[seen.length - 1] !== percent) seen.push(percent);
}

// One answer from /progress: {"state": ..., "received": N, "size": M or null}.
function showProgress(progress) {
  switch (progress.state) {
    case "starting":  // the server has not seen this upload (yet)
      setStatus("uploading", "Waiting for the server to see the upload\u2026");
      break;
    case "uploading":
      if (progress.size) {
        showPercent(Math.floor((100 * progress.received) / progress.size));
        setStatus("uploading", "Server received " + formatBytes(progress.received) +
                  " of " + formatBytes(progress.size));
      } else {  // chunked upload: no size known in advance
        setStatus("uploading", "Server received " + formatBytes(progress.received));
      }
      break;
    case "done":  // all of the body is in; the application is working on it
      showPercent(100);
      setStatus("uploading", "Server received everything; waiting for the application\u2026");
      break;
    case "error":
      setStatus("error", progress.status === null
        ? "error: the upload was interrupted"
        : "error: the server refused the upload (HTTP " + progress.status + ")");
      break;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Ask for progress until isFinished() says the upload request has completed.
async function pollProgress(id, isFinished) {
  while (!isFinished()) {
    try {
      const response = await fetch("/progress?X-Progress-ID=" + id, { cache: "no-store" });
      const progress = await response.json();
      if (isFinished()) return;  // the upload's own reply came first: it has the last word
      if (!response.ok) {
        setStatus("uploading", "Uploading (no progress reports: " + progress.error + ")");
        return;
      }
      showProgress(progress);
    } catch (error) {
      // A failed poll is not a failed upload: try again at the next tick.
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

async function upload() {
  const file = fileInput.files[0];
  if (!file) {
    setStatus("idle", "Choose a file first.");
    return;
  }
  const id = newUploadId();
  window.uploadId = id;
  let finished = false;
  button.disabled = true;
  window.seenPercentages = [];
  window.uploadResult = null;
  resultLine.textContent = "";
  showPercent(0);
  setStatus("uploading", "Uploading " + file.name + " (" + formatBytes(file.size) + ")\u2026");

  const polling = pollProgress(id, () => finished);
  try {
    // The raw file is the request body; fetch() sends its size as Content-Length.
    const response = await fetch("/upload?X-Progress-ID=" + id, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
    const text = await response.text();
    finished = true;
    if (!response.ok) throw new Error("HTTP " + response.status + ": " + text.trim());
    const reply = JSON.parse(text);
    window.uploadResult = reply;
    showPercent(100);
    setStatus("done", "done");
    resultLine.textContent = "The application received " + formatBytes(reply.size) +
      " (" + reply.size + " bytes), sha256 " + reply.sha256;
  } catch (error) {
    finished = true;
    setStatus("error", "error: " + error.message);
  } finally {
    button.disabled = false;
  }
  await polling;
}

button.addEventListener("click", upload);
</script>
</body>
</html>
"""
