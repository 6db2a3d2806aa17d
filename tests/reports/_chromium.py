"""Headless Chromium over the DevTools protocol, for tests that open HTML pages.

Reusable by any test (reports, flows)::

    from _chromium import Chromium, find_chromium
    with Chromium() as browser:             # one browser; pages are cheap
        page = browser.new_page()
        load = page.open(path, color_scheme="dark")
        assert load.clean, load.problems()  # no console errors, exceptions, dialogs, requests
        page.evaluate("document.title")
        page.screenshot("tests/_artifacts/x.png")

It uses Debian's ``chromium`` (``./dev test`` installs it; ``$TRAINAUDIT_CHROMIUM`` overrides
the path) and the ``websockets`` sync client. ``find_chromium()`` returns None when there is no
browser, so callers can skip with a clear reason. The browser runs in its own process group,
which :meth:`Chromium.close` ends (and only that group).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

__all__ = ["Chromium", "Page", "PageLoad", "find_chromium", "SKIP_REASON"]

SKIP_REASON = ("headless Chromium not found (install Debian's `chromium`, which `./dev test` "
               "does, or set TRAINAUDIT_CHROMIUM)")

_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--no-proxy-server", "--mute-audio", "--hide-scrollbars",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
)
_LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    env = os.environ.get("TRAINAUDIT_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    """What happened while a page loaded and settled."""

    url: str
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every request the page made
    dialogs: list[str] = field(default_factory=list)

    @property
    def network_requests(self) -> list[str]:
        """Requests to anything but the page itself and inline data."""
        return [u for u in self.requests if not u.startswith(_LOCAL_SCHEMES)]

    @property
    def clean(self) -> bool:
        return not (self.exceptions or self.console_errors or self.log_errors or self.dialogs
                    or self.network_requests)

    def problems(self) -> dict[str, list[str]]:
        return {"exceptions": self.exceptions, "console_errors": self.console_errors,
                "log_errors": self.log_errors, "dialogs": self.dialogs,
                "network_requests": self.network_requests}


class Page:
    """One tab, driven over its own DevTools websocket."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        self._ws = connect(ws_url, max_size=None, open_timeout=timeout)
        self._timeout = timeout
        self._next = 0
        self._events: list[dict[str, Any]] = []
        self._load: PageLoad | None = None

    # -- protocol ---------------------------------------------------------------------------
    def _send_nowait(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params or {}}))
        return self._next

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call ``method`` and return its result (events arriving meanwhile are recorded)."""
        mid = self._send_nowait(method, params)
        deadline = time.monotonic() + self._timeout
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                raise TimeoutError(f"no reply to {method} within {self._timeout}s")
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})

    def _recv(self, timeout: float) -> dict[str, Any] | None:
        try:
            raw = self._ws.recv(timeout=max(0.0, timeout))
        except TimeoutError:
            return None
        msg = json.loads(raw)
        if "method" in msg:
            self._on_event(msg)
        return msg

    def _on_event(self, msg: dict[str, Any]) -> None:
        self._events.append(msg)
        method, p = msg["method"], msg.get("params", {})
        load = self._load
        if load is None:
            return
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            load.exceptions.append(str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            load.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            load.log_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            load.requests.append(p.get("request", {}).get("url", ""))
        elif method == "Page.javascriptDialogOpening":
            load.dialogs.append(f"{p.get('type')}: {p.get('message')}")
            self._send_nowait("Page.handleJavaScriptDialog", {"accept": False})

    def _wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        seen = len(self._events)
        while time.monotonic() < deadline:
            if any(e["method"] == method for e in self._events[seen:]):
                return True
            self._recv(min(0.2, deadline - time.monotonic()))
        return any(e["method"] == method for e in self._events[seen:])

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(deadline - time.monotonic())

    # -- use --------------------------------------------------------------------------------
    def open(self, target: str | os.PathLike[str], *, width: int = 1280, height: int = 900,
             color_scheme: str | None = None, settle: float = 0.3) -> PageLoad:
        """Load a path or URL, wait for the load event and ``settle`` seconds more, and return
        what happened (console errors, exceptions, network requests, dialogs)."""
        url = str(target) if "://" in str(target) else Path(target).resolve().as_uri()
        self._load = PageLoad(url=url)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        features = [{"name": "prefers-color-scheme", "value": color_scheme}] if color_scheme else []
        self.send("Emulation.setEmulatedMedia", media="", features=features)
        self.send("Page.navigate", url=url)
        if not self._wait_event("Page.loadEventFired", self._timeout):
            raise TimeoutError(f"{url} did not finish loading within {self._timeout}s")
        self._drain(settle)
        return self._load

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON-able) value."""
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression!r} threw: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def emulate_media(self, *, media: str = "", color_scheme: str | None = None) -> None:
        features = [{"name": "prefers-color-scheme", "value": color_scheme}] if color_scheme else []
        self.send("Emulation.setEmulatedMedia", media=media, features=features)

    def screenshot(self, path: str | os.PathLike[str], *, y: float = 0, height: float | None = None,
                   width: float | None = None) -> Path:
        """Save a PNG of the page from ``y`` (CSS px) down ``height`` px (default: the rest of
        the page, at most 6000 px)."""
        size = self.evaluate("[document.documentElement.scrollWidth,"
                             " document.documentElement.scrollHeight]")
        w = width or size[0]
        h = height or min(6000, max(1, size[1] - y))
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": y, "width": w, "height": h, "scale": 1})["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def print_pdf(self) -> bytes:
        return base64.b64decode(self.send("Page.printToPDF", printBackground=False)["data"])

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:
            pass


class Chromium:
    """A headless Chromium process with the DevTools protocol on a free port."""

    def __init__(self, executable: str | None = None, *, timeout: float = 20.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError(SKIP_REASON)
        self.timeout = timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="trainaudit-chromium-")
        profile = Path(self._tmp.name)
        self._log = open(profile / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            [exe, *_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not start (exit {self._proc.returncode}); "
                                   f"see its log at {profile / 'chromium.log'}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self._pages: list[Page] = []

    def new_page(self) -> Page:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank",
                                     method="PUT")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            info = json.load(r)
        page = Page(info["webSocketDebuggerUrl"], self.timeout)
        self._pages.append(page)
        return page

    def close(self) -> None:
        for p in getattr(self, "_pages", []):
            p.close()
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)  # our own process group only
                self._proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait(timeout=5)
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
