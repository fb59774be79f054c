"""The playground page in a real browser: headless Chromium (Debian's package, installed by
.ci/run) opens `/?demo=fim`, which streams a completion from `/infill`; the test reads the
page through the DevTools protocol (over a pipe: no extra package) and checks a screenshot.

Chromium missing is a failure, not a skip: the test is the only check of the page."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import time
import urllib.parse
import zlib

import pytest
from serving_helpers import running_server

import codegemma

PREFIX = "def fibonacci(n):\n    "
SUFFIX = "\n\nprint(fibonacci(10))\n"
BACKGROUND = (0x1D, 0x23, 0x30)  # the completion box (style.css)


class Browser:
    """Headless Chromium driven through `--remote-debugging-pipe` (JSON messages ending in a
    NUL byte on fds 3 and 4)."""

    def __init__(self, profile: str) -> None:
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            pytest.fail("chromium is not installed (.ci/run installs Debian's `chromium`)")
        to_child, from_child = os.pipe(), os.pipe()

        def pipes() -> None:  # in the child: its fds 3 and 4, kept open across exec
            read, write = os.dup(to_child[0]), os.dup(from_child[1])
            os.dup2(read, 3)
            os.dup2(write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        flags += ["--disable-background-networking", "--disable-component-update"]
        flags += ["--disable-sync", "--hide-scrollbars", "--window-size=1000,900"]
        flags += [f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            [executable, *flags],
            preexec_fn=pipes,  # noqa: PLW1509  (the fds must be 3 and 4 in the child)
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child[0])
        os.close(from_child[1])
        self._out = os.fdopen(to_child[1], "wb", buffering=0)
        self._in = os.fdopen(from_child[0], "rb", buffering=0)
        self._buffer = b""
        self._id = 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )
        self.session = attached["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._in.read(1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, self.session)

    def open(self, url: str) -> None:
        self.page("Page.navigate", {"url": url})

    def value(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def screenshot(self, clip: dict | None = None) -> bytes:
        params = {"format": "png", **({"clip": {**clip, "scale": 1}} if clip else {})}
        return base64.b64decode(self.page("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytes(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def ink(png: bytes) -> int:
    """Pixels of the completion box that are not its background colour: rendered text."""
    width, height, rows = png_pixels(png)
    channels = len(rows[0]) // width
    count = 0
    for row in rows:
        for x in range(width):
            r, g, b = row[x * channels : x * channels + 3]
            if abs(r - BACKGROUND[0]) + abs(g - BACKGROUND[1]) + abs(b - BACKGROUND[2]) > 90:
                count += 1
    return count


def output_box(browser: Browser) -> dict:
    return browser.value(
        "(() => { const r = document.getElementById('fim-output').getBoundingClientRect();"
        " return {x: r.x + 6, y: r.y + 6, width: r.width - 12, height: r.height - 12}; })()"
    )


def wait_done(browser: Browser) -> None:
    deadline = time.monotonic() + 60
    while browser.value("document.body && document.body.dataset.done") != "1":
        assert time.monotonic() < deadline, browser.value("document.body.innerText")
        time.sleep(0.05)


def chunks_of(status: str) -> int:
    assert status.startswith("streamed"), status  # "streamed N chunks, M characters in T ms"
    return int(status.split()[1])


def test_the_playground_streams_completions_and_chats_in_chromium(tmp_path):
    lm = codegemma.load(threads=1)  # the shipped model, as `codegemma serve` runs it
    expected = lm.complete(PREFIX, SUFFIX, mode="spm", max_new_tokens=24).text
    reply = lm.chat([{"role": "user", "content": "Write a loop"}], max_new_tokens=16).text
    assert expected.strip() and reply.strip()
    fim = urllib.parse.urlencode({"demo": "fim", "prefix": PREFIX, "suffix": SUFFIX})
    chat = urllib.parse.urlencode({"demo": "chat", "prompt": "Write a loop", "max_tokens": 16})
    status = "document.getElementById('status').textContent"
    with running_server(lm) as (url, _):
        browser = Browser(str(tmp_path / "profile"))
        try:
            browser.open(f"{url}/")
            while browser.value("document.readyState") != "complete":
                time.sleep(0.05)
            browser.value("document.getElementById('tab-fim').click()")
            empty = browser.screenshot(output_box(browser))
            browser.open(f"{url}/?{fim}&max_tokens=24")
            wait_done(browser)
            shown = browser.value("document.getElementById('fim-output').textContent")
            fim_status = browser.value(status)
            filled = browser.screenshot(output_box(browser))
            (tmp_path / "fim.png").write_bytes(browser.screenshot())
            browser.open(f"{url}/?{chat}")
            wait_done(browser)
            said = browser.value("document.querySelector('.message.assistant').textContent")
            chat_status = browser.value(status)
        finally:
            browser.close()
    assert shown == expected and said == reply
    assert chunks_of(fim_status) > 1 and chunks_of(chat_status) > 1  # they came in pieces
    assert ink(empty) < 20  # the completion box is empty before
    assert ink(filled) > 300  # and shows the streamed text after
