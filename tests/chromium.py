"""A headless Chromium for the report's tests (and benchmarks/bench_cohort_scale.py's load time):
the W3C WebDriver protocol over HTTP (chromedriver), enough to load a page, run scripts and take a
screenshot. Start Chromium with --headless --no-sandbox --disable-gpu
--disable-background-networking (no network, no GPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest


class WebDriver:
    """The W3C WebDriver protocol over HTTP, enough to load a page and run scripts."""

    def __init__(
        self,
        driver: str,
        browser: str,
        size: tuple[int, int] = (1400, 1000),
        *,
        page_load: str = "normal",
        timeout: float = 60.0,
    ):
        """``page_load``: WebDriver's page load strategy ("none": :meth:`get` returns at once,
        for timing a page's own readiness); ``timeout``: seconds for one protocol call."""
        import urllib.request

        self._req = urllib.request
        self._timeout = timeout
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [driver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            try:
                self._call("GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": page_load,
                    "goog:chromeOptions": {
                        "binary": browser,
                        "args": [
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-background-networking",
                            "--disable-dev-shm-usage",
                            f"--window-size={size[0]},{size[1]}",
                            "--hide-scrollbars",
                        ],
                    },
                }
            }
        }
        self.sid = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = self._req.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with self._req.urlopen(req, timeout=self._timeout) as resp:
            return json.loads(resp.read() or b"{}").get("value")

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.sid}/url", {"url": url})

    def js(self, script: str):
        return self._call(
            "POST", f"/session/{self.sid}/execute/sync", {"script": script, "args": []}
        )

    def set_window(self, width: int, height: int) -> None:
        self._call("POST", f"/session/{self.sid}/window/rect", {"width": width, "height": height})

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self._call("GET", f"/session/{self.sid}/screenshot"))

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.sid}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)


def browser() -> tuple[str, str] | None:
    import shutil

    driver = shutil.which("chromedriver")
    browser = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    return (driver, browser) if driver and browser else None


def require_browser() -> tuple[str, str]:
    found = browser()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip(
            "chromium / chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    return found


def load(wd: WebDriver, page: Path) -> None:
    wd.get(page.resolve().as_uri())
    for _ in range(50):
        if wd.js("return document.readyState") == "complete":
            break
        time.sleep(0.1)


def wait_for_images(wd: WebDriver, selector: str = "#slides img", timeout: float = 20) -> list:
    """Scroll each image matched by ``selector`` into view (they load lazily) and wait until all
    have loaded; returns ``[complete, naturalWidth, shown width]`` per image."""
    wd.js(f"document.querySelectorAll('{selector}').forEach(i => i.scrollIntoView())")
    wd.js("window.scrollTo(0, 0)")
    js = (
        f"return Array.from(document.querySelectorAll('{selector}'))"
        ".map(i => [i.complete && i.naturalWidth > 0, i.naturalWidth, i.getBoundingClientRect().width])"
    )
    end = time.monotonic() + timeout
    while True:
        imgs = wd.js(js)
        if all(ok for ok, _, _ in imgs) or time.monotonic() > end:
            return imgs
        wd.js(f"document.querySelectorAll('{selector}').forEach(i => i.scrollIntoView())")
        time.sleep(0.1)
