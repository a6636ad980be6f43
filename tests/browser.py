"""A real headless Chromium, driven over the DevTools protocol (a websocket, with aiohttp): enough to open
a page from disk, run JavaScript in it and wait for its answers. Used by the gallery's test and bench.

Debian's `chromium` package is the browser (`.ci/run` installs it); `find_chromium()` is None without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,900",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab, attached in flat mode: commands carry its session id."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, params, self._session)

    async def open(self, url: str, within: float = 30) -> None:
        """Navigate and wait for the load event."""
        loaded = self._browser.expect("Page.loadEventFired", self._session)
        answer = await self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {answer['errorText']}")
        await asyncio.wait_for(loaded, within)

    async def js(self, expression: str, within: float = 30) -> Any:
        """The value of a JavaScript expression (a promise is awaited); a JavaScript error is raised."""
        answer = await asyncio.wait_for(
            self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True),
            within,
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise RuntimeError(
                f"JavaScript error: {details.get('exception', {}).get('description', details)}"
            )
        return answer["result"].get("value")

    async def until(self, expression: str, within: float = 30) -> Any:
        """Wait (in the page, on each animation frame) until `expression` is truthy; its value."""
        return await self.js(
            f"""new Promise((resolve, reject) => {{
                const end = performance.now() + {within * 1000};
                const look = () => {{
                    const value = ({expression});
                    if (value) resolve(value);
                    else if (performance.now() > end) reject(new Error("timed out waiting for: " + {json.dumps(expression)}));
                    else requestAnimationFrame(look);
                }};
                look();
            }})""",
            within + 5,
        )


class Browser:
    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self.console: list[str] = []  # the pages' console errors and uncaught exceptions
        self.requests: list[str] = []  # the URLs the pages asked for
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._replies.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            method, session = data.get("method"), data.get("sessionId")
            if method == "Network.requestWillBeSent":
                self.requests.append(str(data["params"]["request"]["url"]))
            elif method == "Runtime.exceptionThrown":
                self.console.append(str(data["params"]["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and data["params"].get("type") == "error":
                self.console.append(str(data["params"].get("args")))
            for waiter in list(self._waiters):
                name, wanted, future = waiter
                if name == method and wanted in (None, session) and not future.done():
                    future.set_result(data.get("params", {}))
                    self._waiters.remove(waiter)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed its DevTools socket"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self._socket.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    def expect(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event `method` (of `session`): create it before causing the event."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session, future))
        return future

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Network.enable")
        await page.send("Page.bringToFront")  # a background tab gets no frames: no observers, no rAF
        return page

    async def close(self) -> None:
        self._reader.cancel()
        await self._socket.close()


def _wait_for_port(folder: Path, process: subprocess.Popen[bytes], log: Path, within: float) -> str:
    """The browser's DevTools websocket path, once Chromium has written DevToolsActivePort."""
    active = folder / "DevToolsActivePort"
    end = time.monotonic() + within
    while True:
        try:
            lines = active.read_text().split()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > end:
            raise TimeoutError(f"chromium did not open its DevTools port: {log.read_text()[-2000:]}")
        time.sleep(0.02)  # polling a file Chromium writes once; it has no other signal to wait on


@asynccontextmanager
async def chromium(executable: str, within: float = 60) -> AsyncIterator[Browser]:
    """A headless Chromium of its own (fresh profile, no network use of its own) for the block."""
    # ignore_cleanup_errors: a helper process killed a moment ago may still have closed a file late
    with tempfile.TemporaryDirectory(prefix="maas-chromium-", ignore_cleanup_errors=True) as folder:
        profile = Path(folder) / "profile"
        log = Path(folder) / "chromium.log"
        process = _launch(executable, folder, profile, log)
        try:
            url = await asyncio.get_running_loop().run_in_executor(
                None, _wait_for_port, profile, process, log, within
            )
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                ) as socket,
            ):
                browser = Browser(socket)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            _stop(process)


def _launch(executable: str, home: str, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "HOME": home},
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End Chromium and every process it started (its own session): they write into the profile."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # helpers that outlived the browser
