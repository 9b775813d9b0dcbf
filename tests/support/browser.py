"""A real headless Chromium driven through chromedriver's W3C WebDriver protocol, no Selenium.

Why: the Events page must be shown to work in a browser (JavaScript, fetch with the token, the
long poll), and WebDriver over plain HTTP needs nothing beyond the standard library. Chromium
and chromedriver come from Debian's packages (scripts/install-browser.sh). Only loopback is
ever visited; background networking, component updates, sync and QUIC are switched off.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from processes import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C element reference key
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
]


def install() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing the Debian packages when missing."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-browser.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.split()
    return out[-2], out[-1]


class Browser:
    def __init__(self, chromium: str, chromedriver: str) -> None:
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="packgate-chromium-"))
        self.driver = subprocess.Popen(
            [chromedriver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [*FLAGS, f"--user-data-dir={self.profile}"],
            },
        }
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.session = f"/session/{session['sessionId']}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None

    def get(self, url: str) -> None:
        self._call("POST", self.session + "/url", {"url": url})

    def find(self, css: str) -> str:
        found = self._call(
            "POST", self.session + "/element", {"using": "css selector", "value": css}
        )
        return str(found[ELEMENT])

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self._call("POST", f"{self.session}/element/{element}/clear", {})
        self._call("POST", f"{self.session}/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"{self.session}/element/{self.find(css)}/click", {})

    def script(self, source: str, *args: Any) -> Any:
        return self._call(
            "POST", self.session + "/execute/sync", {"script": source, "args": list(args)}
        )

    def text(self, css: str) -> str:
        return str(
            self.script(
                "const e = document.querySelector(arguments[0]);return e ? e.innerText : '';", css
            )
        )

    def rows(self) -> list[list[str]]:
        """The records table as text cells, top (newest) first."""
        return list(
            self.script(
                "return [...document.querySelectorAll('#records tbody tr')]"
                ".map(tr => [...tr.children].map(td => td.textContent));"
            )
        )

    def close(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self._call("DELETE", self.session)
        self.driver.terminate()
        self.driver.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
