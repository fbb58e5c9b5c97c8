"""The page itself, no call: it loads clean, fits a phone, every control has a name, the keyboard
reaches everything, the settings and key forms behave, and nothing is fetched from elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.server.conftest import Server
from tests.web.conftest import WAIT_MS, capture_file, open_page, wait_state

# Roles a person operates; each must have an accessible name.
CONTROL_ROLES = {"button", "textbox", "combobox", "checkbox", "radio", "link", "listbox"}


def _config(**changes: Any) -> dict[str, Any]:
    config = {
        "auth": False,
        "demo_key": False,
        "metering": False,
        "voices": [
            {"id": "en-us", "name": "English (America)", "language": "en-us"},
            {"id": "de", "name": "German", "language": "de"},
        ],
        "default_voice": "en-us",
        "instructions": "Answer briefly.",
        "turn_detection": "server_vad",
    }
    return config | changes


def test_page_loads_clean_from_the_server_alone(playwright: Any, web_server: Server) -> None:
    browser, page, watch = open_page(playwright, web_server)
    try:
        wait_state(page, "idle")
        assert page.title().startswith("parley")
        # The server's settings arrived: its voices, instructions, and (keys on, demo key
        # allowed on loopback) both ways to get a key.
        assert page.locator("#voice option").count() > 1
        assert page.input_value("#instructions")
        assert page.is_visible("#key-panel")
        assert page.is_visible("#demo-key")
        assert page.is_visible("#api-key")
        assert page.is_hidden("#cost")  # no metering on this server
        assert page.is_hidden("#send-turn")  # server VAD: no manual send
        page.wait_for_load_state("networkidle")
        assert any(u.endswith("/web/favicon.svg") for u in watch.requests)
        watch.check()
    finally:
        browser.close()


def test_page_fits_a_phone_without_horizontal_scroll(playwright: Any, web_server: Server) -> None:
    browser, page, watch = open_page(playwright, web_server, width=390, height=844)
    try:
        viewport = page.evaluate("document.querySelector('meta[name=viewport]').content")
        assert "width=device-width" in viewport
        page.check("input[name=turn][value=manual]")  # every control shown
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1] == 390, widths
        wide = page.evaluate(
            """[...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 390.5 && e.offsetParent !== null)
                .map(e => e.id || e.className || e.tagName)"""
        )
        assert not wide, f"elements wider than the screen: {wide}"
        watch.check()
    finally:
        browser.close()


def test_every_control_has_an_accessible_name(playwright: Any, web_server: Server) -> None:
    browser, page, watch = open_page(playwright, web_server)
    try:
        page.check("input[name=turn][value=manual]")  # shows Send turn
        cdp = page.context.new_cdp_session(page)
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
        controls = [
            (n["role"]["value"], (n.get("name") or {}).get("value", ""))
            for n in nodes
            if not n.get("ignored") and n.get("role", {}).get("value") in CONTROL_ROLES
        ]
        assert len(controls) >= 10, controls
        unnamed = [role for role, name in controls if not name.strip()]
        assert not unnamed, f"controls without a name: {unnamed} in {controls}"
        names = {name for _, name in controls}
        assert {"Talk", "Mute", "Send turn", "Voice", "Instructions", "API key"} <= names
        # The transcript is announced as it grows.
        assert page.get_attribute("#transcript", "aria-live") == "polite"
        watch.check()
    finally:
        browser.close()


def test_keyboard_reaches_every_control_with_a_visible_focus(
    playwright: Any, web_server: Server
) -> None:
    browser, page, watch = open_page(playwright, web_server)
    try:
        seen: list[str] = []
        for _ in range(30):
            page.keyboard.press("Tab")
            focused = page.evaluate(
                """(() => {
                    const e = document.activeElement;
                    const style = getComputedStyle(e);
                    return [e.id || e.name || e.tagName, style.outlineStyle, style.outlineWidth];
                })()"""
            )
            seen.append(focused[0])
            if focused[0] != "BODY":
                assert focused[1] != "none" and focused[2] != "0px", focused
        for control in (
            "demo-key",
            "api-key",
            "talk",
            "voice",
            "instructions",
            "turn",
            "transcription",
            "apply",
        ):
            assert control in seen, (control, seen)
        # The keyboard operates the settings too: choosing manual turns shows Send turn.
        page.focus("input[name=turn][value=server_vad]")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.is_checked("input[name=turn][value=manual]")
        assert page.is_visible("#send-turn")
        watch.check()
    finally:
        browser.close()


def test_settings_form_saves_for_the_next_call(playwright: Any, web_server: Server) -> None:
    browser, page, watch = open_page(playwright, web_server)
    try:
        page.select_option("#voice", index=1)
        page.fill("#instructions", "Speak like a pirate.")
        page.check("input[name=turn][value=manual]")
        page.uncheck("#transcription")
        assert page.is_visible("#send-turn") and page.is_disabled("#send-turn")
        page.click("#apply")
        page.wait_for_function(
            "document.getElementById('settings-status').textContent.includes('next call')"
        )
        page.check("input[name=turn][value=semantic_vad]")
        assert page.is_hidden("#send-turn")
        watch.check()
    finally:
        browser.close()


def test_pasted_key_stays_in_memory_and_a_bad_one_is_explained(
    playwright: Any, web_server: Server, tmp_path: Path
) -> None:
    capture, _ = capture_file(tmp_path / "silence.wav", [1.0])
    browser, page, watch = open_page(playwright, web_server, capture=capture)
    try:
        secret = "sk-not-a-real-key-0000"
        page.fill("#api-key", secret)
        page.click("#use-key")
        assert page.input_value("#api-key") == ""
        assert "0000" in page.inner_text("#key-status")
        stored = page.evaluate(
            "[JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.cookie,"
            " document.documentElement.outerHTML]"
        )
        assert not any(secret in s for s in stored)
        page.click("#talk")
        wait_state(page, "error")
        assert "API key" in page.inner_text("#error")
        assert page.inner_text("#talk") == "Talk"
        # The server's 401 for the bad key is the only error the browser logs.
        watch.check(allow_console=("401",))
        page.click("#forget-key")
        assert page.is_hidden("#forget-key")
    finally:
        browser.close()


def test_server_without_keys_or_metering_shapes_the_page(
    playwright: Any, web_server: Server
) -> None:
    browser, page, watch = open_page(playwright, web_server, config=_config())
    try:
        assert page.is_hidden("#key-panel")
        assert page.is_hidden("#cost")
        assert page.input_value("#instructions") == "Answer briefly."
        assert page.input_value("#voice") == "en-us"
        watch.check()
    finally:
        browser.close()
    browser, page, watch = open_page(
        playwright, web_server, config=_config(auth=True, demo_key=False, metering=True)
    )
    try:
        assert page.is_visible("#key-panel") and page.is_hidden("#demo-key")
        # The Quick start's server: the page says how to get a key.
        assert "parley keys create" in page.inner_text("#key-howto")
        assert page.is_visible("#cost")
        assert "$0.0000" in page.inner_text("#cost")
        assert page.locator("body[data-state=idle]").count() == 1
        watch.check()
    finally:
        browser.close()


def test_demo_key_button_gets_a_key(playwright: Any, web_server: Server) -> None:
    browser, page, watch = open_page(playwright, web_server)
    try:
        page.click("#demo-key")
        page.wait_for_function(
            "document.getElementById('key-status').textContent.includes('demo')", timeout=WAIT_MS
        )
        assert page.is_hidden("#error")
        watch.check()
    finally:
        browser.close()


def test_a_browser_without_webrtc_is_told_why(playwright: Any, web_server: Server) -> None:
    no_media = "Object.defineProperty(Navigator.prototype, 'mediaDevices', {get: () => undefined})"
    browser, page, watch = open_page(playwright, web_server, init_script=no_media)
    try:
        page.click("#demo-key")  # a key is there: what fails is the browser
        page.wait_for_function("document.getElementById('key-status').textContent.includes('demo')")
        page.click("#talk")
        wait_state(page, "error")
        assert "cannot make WebRTC calls" in page.inner_text("#error")
        assert page.inner_text("#talk") == "Talk"
        watch.check()
    finally:
        browser.close()


# Keeps every microphone stream the page opens, so a test can see that each was let go.
RECORD_STREAMS = """
window.openedStreams = [];
const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await getUserMedia(constraints);
  window.openedStreams.push(stream);
  return stream;
};
"""


def test_hanging_up_while_connecting_lets_the_microphone_go(
    playwright: Any, web_server: Server, tmp_path: Path
) -> None:
    capture, _ = capture_file(tmp_path / "silence.wav", [1.0])
    browser, page, watch = open_page(
        playwright, web_server, capture=capture, init_script=RECORD_STREAMS
    )
    try:
        for _ in range(2):
            page.click("#talk")
            page.click("#talk")  # at once: the call is still being set up
            wait_state(page, "ended")
            page.wait_for_function(
                "window.openedStreams.length > 0 && window.openedStreams.every("
                "s => s.getTracks().every(t => t.readyState === 'ended'))",
                timeout=WAIT_MS,
            )
        assert page.inner_text("#talk") == "Talk"
        watch.check()
    finally:
        browser.close()
