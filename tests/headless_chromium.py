"""Open a local HTML file in headless Chromium and report what a reader would see.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so nothing beyond
the standard library and Debian's ``chromium`` package is needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-pipe",
)  # fmt: skip
WIDTH, HEIGHT = 1280, 900

# What the page reports about itself once loaded: each <figure class="plot"> and
# whether its image decoded, and the page's full height.
PROBE = """JSON.stringify({
  plots: Array.from(document.querySelectorAll('figure.plot')).map(f => {
    const img = f.querySelector('img');
    return {id: f.id, loaded: !!img && img.complete && img.naturalWidth > 0,
            width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0};
  }),
  height: document.documentElement.scrollHeight,
  title: document.title,
  scripts: document.scripts.length,
})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageView:
    """What Chromium saw: the plots, console and log messages, a screenshot."""

    plots: list[dict[str, Any]]
    height: int
    title: str
    scripts: int
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    screenshot: bytes = b""


class _Pipe:
    """DevTools protocol messages over Chromium's pipe."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, deadline: float, session: str | None = None, **params: Any):
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, deadline: float) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self.receive(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)


def view_page(path: Path, timeout: float = 90.0) -> PageView:
    """Load ``path`` in headless Chromium: probe it, collect errors, screenshot it whole."""
    chromium = find_chromium()
    assert chromium, "chromium is not installed"
    deadline = time.monotonic() + timeout
    # High descriptor numbers, so the shell can move them to 3 and 4 without clashes.
    to_chrome, from_chrome = os.pipe(), os.pipe()
    ours = [_high(fd) for fd in (*to_chrome, *from_chrome)]
    for fd in (*to_chrome, *from_chrome):
        os.close(fd)
    chrome_in, our_out, our_in, chrome_out = ours
    profile = tempfile.mkdtemp(prefix="ted-chromium-")
    shell = f'exec "$0" "$@" 3<&{chrome_in} 4>&{chrome_out} {chrome_in}<&- {chrome_out}>&-'
    process = subprocess.Popen(
        ["bash", "-c", shell, chromium, *FLAGS, f"--user-data-dir={profile}",
         f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
        pass_fds=(chrome_in, chrome_out), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    os.close(chrome_in)
    os.close(chrome_out)
    pipe = _Pipe(our_out, our_in)
    try:
        target = pipe.call("Target.createTarget", deadline, url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", deadline, targetId=target, flatten=True)[
            "sessionId"
        ]
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            pipe.call(method, deadline, session)
        pipe.call("Emulation.setDeviceMetricsOverride", deadline, session, width=WIDTH,
                  height=HEIGHT, deviceScaleFactor=1, mobile=False)  # fmt: skip
        pipe.events.clear()
        pipe.call("Page.navigate", deadline, session, url=path.resolve().as_uri())
        pipe.wait_event("Page.loadEventFired", deadline)
        probe = pipe.call("Runtime.evaluate", deadline, session, expression=PROBE,
                          returnByValue=True)  # fmt: skip
        state = json.loads(probe["result"]["value"])
        shot = pipe.call(
            "Page.captureScreenshot", deadline, session, format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": WIDTH, "height": state["height"], "scale": 1},
        )  # fmt: skip
        view = PageView(state["plots"], state["height"], state["title"], state["scripts"])
        view.screenshot = base64.b64decode(shot["data"])
        view.errors = _errors(pipe.events)
        with contextlib.suppress(Exception):
            pipe.call("Browser.close", time.monotonic() + 5)
        return view
    finally:
        for fd in (our_out, our_in):
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value")) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            thrown = details.get("exception", {}).get("description", "")
            out.append(f"exception: {details.get('text')} {thrown}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
    return out


def _high(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)
