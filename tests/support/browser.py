"""Headless Chromium driven over the DevTools protocol (CDP), with aiohttp as the WebSocket.

Chromium is started with `--remote-debugging-port=0` and a fresh profile; it writes the port it
chose, and the browser target's path, to `DevToolsActivePort` in that profile. One WebSocket to
the browser target carries everything: a page target is created and attached in flat mode, and
its commands go out with that session's id. Exceptions thrown in the page and console errors are
collected, so a test can demand a page that runs cleanly; failed requests are collected apart,
since a page facing a server that is down is expected to have some.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parents[2]
TEST_SETUP = REPO / "scripts" / "test-setup"

FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """Chromium's path, installing it with the project's own setup script when it is missing;
    else None and the script's one line on why it could not (no apt-get, not root, no network)."""
    found = find_chromium()
    if found:
        return found, ""
    said = run_test_setup()
    return find_chromium(), said


def run_test_setup() -> str:
    """Run the project's setup script (it installs what is missing); what it said."""
    try:
        done = subprocess.run(
            ["bash", str(TEST_SETUP)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return (done.stdout + done.stderr).strip()[-1500:]


class Page:
    """One tab, attached over the browser's DevTools connection."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._browser.send(method, params, session_id=self.session_id)

    async def navigate(self, url: str, within: float = 15) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'", within=within)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise), as JSON data."""
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, within: float = 15, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy, for at most `within` seconds; its value then."""
        deadline = time.monotonic() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still falsy after {within}s: {expression}\nlast: {value!r}")
            await asyncio.sleep(interval)

    async def type_into(self, selector: str, text: str) -> None:
        """Focus `selector`, select what it holds, and type `text` over it as keyboard input."""
        focused = await self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()});"
            " if (!e) return false; e.focus(); e.select(); return true; })()"
        )
        if not focused:
            raise BrowserError(f"no element {selector}")
        await self.send("Input.insertText", {"text": text})

    async def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        await self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **key})
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **key})

    async def screenshot(self, *paths: Path) -> bytes:
        reply = await self.send("Page.captureScreenshot", {"format": "png"})
        png = base64.b64decode(reply["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        return png

    @property
    def errors(self) -> list[str]:
        """Exceptions thrown and console errors: the page's own faults."""
        return self._browser.errors.get(self.session_id, [])

    @property
    def network_errors(self) -> list[str]:
        """Requests and WebSocket connections that failed."""
        return self._browser.network_errors.get(self.session_id, [])


class Browser:
    """A headless Chromium process and its DevTools connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: dict[str, list[str]] = {}
        self.network_errors: dict[str, list[str]] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp reader")

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            msg["sessionId"] = session_id
        reply = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = reply
        await self._ws.send_str(orjson.dumps(msg).decode())
        return await asyncio.wait_for(reply, 30)

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            msg = orjson.loads(frame.data)
            if "id" in msg:
                waiter = self._waiting.pop(msg["id"], None)
                if waiter is None or waiter.done():
                    continue
                if "error" in msg:
                    waiter.set_exception(BrowserError(f"{msg['error']}"))
                else:
                    waiter.set_result(msg.get("result", {}))
            else:
                self._event(msg)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(BrowserError("the DevTools connection closed"))

    def _event(self, msg: dict[str, Any]) -> None:
        session, method, params = msg.get("sessionId"), msg.get("method"), msg.get("params", {})
        if session is None:
            return
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.setdefault(session, []).append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.setdefault(session, []).append(f"console.error: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            found = self.network_errors if entry["source"] == "network" else self.errors
            found.setdefault(session, []).append(f"{entry['source']}: {entry['text']}")

    async def new_page(self, width: int = 1360, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page

    async def close(self) -> None:
        with contextlib.suppress(BrowserError, asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _devtools_url(profile: Path) -> str | None:
    """The browser target's WebSocket URL, once Chromium has written it."""
    port_file = profile / "DevToolsActivePort"
    lines = port_file.read_text().split("\n") if port_file.exists() else []
    if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
        return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
    return None


async def _wait_for_devtools(profile: Path, proc: asyncio.subprocess.Process, log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        url = _devtools_url(profile)
        if url:
            return url
        if proc.returncode is not None:
            raise BrowserError(f"chromium exited {proc.returncode}:\n{_tail(log)}")
        await asyncio.sleep(0.05)
    raise BrowserError(f"chromium wrote no DevToolsActivePort:\n{_tail(log)}")


@contextlib.asynccontextmanager
async def chromium(binary: str, workdir: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with a new, empty profile under `workdir`; its output goes to
    `workdir/chromium.log`."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True)
    log = workdir / "chromium.log"
    with log.open("wb") as out:
        # Its own process group: the renderer and helper processes go with it at the end.
        proc = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    session = aiohttp.ClientSession()
    browser: Browser | None = None
    try:
        url = await _wait_for_devtools(profile, proc, log)
        ws = await session.ws_connect(url, max_msg_size=0)
        browser = Browser(ws)
        yield browser
    finally:
        if browser is not None:
            await browser.close()
        await session.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        # Whatever of the group is left (a hung browser, a straggling helper) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
