"""The web page in a real browser: Debian's chromium, driven headless through Playwright.

One ``parley serve`` (fast profile, keys on, the demo key enabled for loopback) serves every test
here; each test gets a fresh browser, whose fake microphone plays a WAV file made from the shared
speech clips. Nothing leaves the machine: the server offers only a loopback ICE candidate, the
browser has no STUN server, and every request the page makes is checked to stay on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from parley.audio.files import read_audio
from tests.server.conftest import Server, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
RATE = 48000  # the fake capture device's file: 48 kHz mono, as a real microphone gives
# How long a test waits on the page: generous, for a 2-core machine under load.
WAIT_MS = 30_000
DEMO_TENANT = "web"

# Chromium without a network: no first-run traffic, no component updates, a fake microphone
# reading our file once (no loop), loopback candidates allowed and shown as addresses.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def _need_chromium() -> None:
    """Skip where chromium is missing, except in CI (which installs it: missing is a failure)."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``parley serve`` with keys, the page's demo key on loopback, the embedded FAQ LLM, and
    WebRTC on the loopback address only."""
    _need_chromium()
    s = start_server(
        tmp_path_factory.mktemp("web-serve"),
        "--set",
        'webrtc.host_addresses=["127.0.0.1"]',
        "--set",
        f"web.demo_tenant={DEMO_TENANT}",
        env={"PARLEY_LLM_BASE_URL": ""},
        auth=True,
    )
    yield s
    stop_server(s)


def origin(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def capture_file(
    path: Path, parts: list[Path | float], *, tail_s: float = 6.0
) -> tuple[Path, list[float]]:
    """A fake microphone file: clips (resampled to 48 kHz mono) and silences (seconds), in
    order, then ``tail_s`` of silence. Returns the file and where each clip ends (s)."""
    chunks: list[np.ndarray] = []
    ends: list[float] = []
    at = 0
    for part in parts:
        if isinstance(part, Path):
            samples = read_audio(part, sample_rate=RATE).samples
        else:
            samples = np.zeros(round(part * RATE), dtype=np.int16)
        chunks.append(samples)
        at += len(samples)
        if isinstance(part, Path):
            ends.append(at / RATE)
    chunks.append(np.zeros(round(tail_s * RATE), dtype=np.int16))
    sf.write(path, np.concatenate(chunks), RATE, subtype="PCM_16")
    return path, ends


@dataclass
class Watch:
    """What a page did that a test must check: console errors, page errors, and any request
    to somewhere other than the server (aborted before it leaves)."""

    allowed_origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def check(self, *, allow_console: tuple[str, ...] = ()) -> None:
        assert not self.outside, f"requests left the server: {self.outside}"
        assert not self.page_errors, f"uncaught errors on the page: {self.page_errors}"
        errors = [e for e in self.console_errors if not any(a in e for a in allow_console)]
        assert not errors, f"console errors: {errors}"


def open_page(
    playwright: Any,
    server: Server,
    *,
    capture: Path | None = None,
    width: int = 1000,
    height: int = 900,
    config: dict[str, Any] | None = None,
    init_script: str | None = None,
) -> tuple[Any, Any, Watch]:
    """A fresh headless chromium on the page; ``config`` replaces the server's page settings,
    ``init_script`` runs before the page's own."""
    args = list(BROWSER_ARGS)
    if capture is not None:
        args.append(f"--use-file-for-fake-audio-capture={capture}%noloop")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
    page = browser.new_page(viewport={"width": width, "height": height})
    watch = Watch(origin(server))
    page.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watch.page_errors.append(str(e)))

    def route(r: Any) -> None:
        url = r.request.url
        watch.requests.append(url)
        parts = urlsplit(url)
        if (
            parts.scheme in ("data", "blob")
            or f"{parts.scheme}://{parts.netloc}" == watch.allowed_origin
        ):
            if config is not None and parts.path == "/v1/parley/web/config":
                r.fulfill(status=200, content_type="application/json", body=json.dumps(config))
            else:
                r.continue_()
        else:
            watch.outside.append(url)
            r.abort()

    page.route("**/*", route)
    if init_script is not None:
        page.add_init_script(init_script)
    page.goto(watch.allowed_origin + "/")
    # The page has asked the server what it offers once the voices are listed.
    page.wait_for_function("document.querySelectorAll('#voice option').length > 0", timeout=WAIT_MS)
    return browser, page, watch


def wait_state(page: Any, state: str, timeout_ms: int = WAIT_MS) -> None:
    page.wait_for_selector(f"body[data-state={state}]", timeout=timeout_ms)
