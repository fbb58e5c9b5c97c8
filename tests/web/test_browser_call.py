"""Calls from the page in a real browser, over WebRTC to a real ``parley serve``.

The fake microphone plays real speech from the shared clips. What is asserted is what a person
sees and hears: their words in the transcript (a few of them: pocketsphinx is weak), a reply
that appears and plays, each turn's latency bar with its total in ms, a reply cut short when
they talk over it, and manual turns with settings applied mid-call. Screenshots are kept in
each test's tmp folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import shared_words
from tests.server.conftest import Server
from tests.web.conftest import WAIT_MS, capture_file, open_page, wait_state

LEAD_S = 2.0  # silence before the first clip: the call connects while it plays
# Words of two letters or fewer say nothing about whether the clip was heard.
SHORT = re.compile(r"^[a-z']{1,2}$")


def _reference_words_heard(page: Any, reference: str) -> set[str]:
    heard = " ".join(page.locator(".turn.user .text").all_inner_texts())
    return {w for w in shared_words(heard, reference) if not SHORT.match(w)}


def _wait_js(page: Any, expression: str, timeout_ms: int = WAIT_MS) -> Any:
    """Wait for ``expression`` to be truthy on the page; on a timeout, say what the page saw."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(expression, timeout=timeout_ms).json_value()
    except PlaywrightTimeout:
        seen = page.evaluate(
            "[document.body.dataset.state, document.getElementById('status').textContent,"
            " document.getElementById('error').textContent,"
            " window.parleyEvents.map(e => e.type), window.parleyTurns,"
            " document.getElementById('transcript').innerText]"
        )
        raise AssertionError(
            f"waited {timeout_ms} ms for {expression}\nstate {seen[0]!r}, status {seen[1]!r},"
            f" error {seen[2]!r}\nevents {seen[3]}\nturns {seen[4]}\ntranscript {seen[5]!r}"
        ) from None


def _turns(page: Any) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = page.evaluate("window.parleyTurns")
    return turns


def _event_types(page: Any) -> list[str]:
    return [str(e["type"]) for e in page.evaluate("window.parleyEvents")]


def test_a_spoken_question_gets_a_spoken_reply_and_a_latency_bar(
    playwright: Any, web_server: Server, clips: dict[str, Any], tmp_path: Path
) -> None:
    clip = clips["en_cards_005"]
    capture, _ = capture_file(tmp_path / "mic.wav", [LEAD_S, clip.path])
    browser, page, watch = open_page(playwright, web_server, capture=capture, width=390, height=844)
    try:
        # The demo key (keys on, loopback client): the page gets one for the call itself.
        page.click("#talk")
        wait_state(page, "live")
        _wait_js(page, "window.parleyTurns.some(t => t.v2v_ms !== null && t.stages_ms.endpointing)")
        turn = _turns(page)[0]
        # The page heard the reply start playing, after the caller's speech ended, and after
        # the server's own share of the wait.
        assert turn["status"] == "completed"
        assert 0 < turn["server_turn_gap_ms"] <= turn["v2v_ms"] + 50, turn
        assert turn["network_ms"] is not None and turn["network_ms"] >= 0
        assert "output_audio_buffer.started" in _event_types(page)
        playing = page.evaluate(
            "(() => { const a = document.getElementById('reply-audio');"
            " return [a.paused, a.srcObject !== null, a.currentTime]; })()"
        )
        assert playing[0] is False and playing[1] is True and playing[2] > 0, playing
        # What the person sees: their words, the reply, and the bar with its total.
        page.wait_for_selector(".turn.user:not(.partial)", timeout=WAIT_MS)
        heard = _reference_words_heard(page, clip.transcript)
        assert len(heard) >= 2, (heard, page.inner_text("#transcript"))
        reply = page.locator(".turn.assistant").first
        assert len(reply.locator(".text").inner_text().split()) >= 3
        assert reply.locator(".latency .bar .seg").count() == 5
        total = reply.locator(".latency .total").inner_text()
        assert re.fullmatch(r"\d+ ms", total) and int(total.split()[0]) == turn["v2v_ms"], total
        assert "ms" in (reply.locator(".latency .bar").get_attribute("aria-label") or "")
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
        page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)
        page.click("#talk")
        wait_state(page, "ended")
        assert page.inner_text("#talk") == "Talk"
        watch.check()
    finally:
        browser.close()


def test_talking_over_a_reply_cuts_it_where_it_was_heard(
    playwright: Any, web_server: Server, clips: dict[str, Any], tmp_path: Path
) -> None:
    # The first clip's reply (the FAQ's "no answer", about 8 s spoken) starts within a second or
    # two of the clip's end; the second clip (one unbroken sentence) starts 3.5 s after it, over
    # the reply. The embedded engines finish generating a reply long before it has played, so
    # its response.done says "completed": the cut shows as the buffer cleared and the item
    # truncated where playout stood.
    first, second = clips["en_sb_birch_canoe"], clips["en_librivox_0880"]
    capture, _ = capture_file(
        tmp_path / "mic.wav", [LEAD_S, first.path, 3.5, second.path], tail_s=8.0
    )
    browser, page, watch = open_page(playwright, web_server, capture=capture)
    try:
        page.click("#talk")
        wait_state(page, "live")
        _wait_js(page, "window.parleyTurns.some(t => t.interrupted)")
        cut = next(t for t in _turns(page) if t["interrupted"])
        assert cut["v2v_ms"] is not None, cut  # it did start playing before it was cut
        # The reply shows what was heard, a marker, and the rest struck through.
        entry = page.locator(f".turn.assistant[data-response-id='{cut['response_id']}']")
        entry.locator(".cut").wait_for(timeout=WAIT_MS)
        assert entry.get_attribute("class") and "interrupted" in str(entry.get_attribute("class"))
        assert re.fullmatch(r"interrupted at \d+\.\d s", entry.locator(".cut").inner_text())
        assert entry.locator("del.unheard").inner_text().strip(), "nothing shown as unheard"
        events = _event_types(page)
        assert "output_audio_buffer.cleared" in events
        assert "conversation.item.truncated" in events
        # The caller's words over the reply were heard as a turn of their own, and answered.
        _wait_js(
            page,
            f"window.parleyTurns.some(t => t.response_id !== '{cut['response_id']}'"
            " && t.status === 'completed')",
        )
        assert page.locator(".turn.user").count() >= 2
        page.screenshot(path=str(tmp_path / "barge-in.png"), full_page=True)
        page.click("#talk")
        wait_state(page, "ended")
        watch.check()
    finally:
        browser.close()


def test_manual_turns_and_settings_applied_during_the_call(
    playwright: Any, web_server: Server, clips: dict[str, Any], tmp_path: Path
) -> None:
    clip = clips["en_cheetah_platforms"]
    capture, _ = capture_file(tmp_path / "mic.wav", [LEAD_S, clip.path], tail_s=20.0)
    browser, page, watch = open_page(playwright, web_server, capture=capture)
    try:
        page.fill("#instructions", "Answer in one short sentence.")
        page.check("input[name=turn][value=manual]")
        page.click("#talk")
        wait_state(page, "live")
        # The settings went with the call's creation: the session starts with them.
        session = _wait_js(page, "window.parleySession")
        assert session["instructions"] == "Answer in one short sentence."
        assert session["audio"]["input"]["turn_detection"] is None
        assert page.is_enabled("#send-turn")
        # Once the caller has spoken and a second of silence has passed, they send the turn.
        _wait_js(
            page,
            "window.parleyMic.lastVoicedAt !== null"
            " && performance.now() - window.parleyMic.lastVoicedAt > 1000",
        )
        assert "input_audio_buffer.speech_started" not in _event_types(page)
        page.click("#send-turn")
        _wait_js(page, "window.parleyTurns.some(t => t.v2v_ms !== null && t.status)")
        page.wait_for_selector(".turn.assistant .latency .total", timeout=WAIT_MS)
        heard = _reference_words_heard(page, clip.transcript)
        assert heard, page.inner_text("#transcript")
        # Back to server turn detection, mid-call: applied with session.update.
        page.check("input[name=turn][value=server_vad]")
        page.click("#apply")
        _wait_js(
            page,
            "window.parleySession.audio.input.turn_detection"
            " && window.parleySession.audio.input.turn_detection.type === 'server_vad'",
        )
        page.wait_for_function(
            "document.getElementById('settings-status').textContent === 'Applied.'"
        )
        assert page.is_hidden("#send-turn")
        page.click("#talk")
        wait_state(page, "ended")
        watch.check()
    finally:
        browser.close()
