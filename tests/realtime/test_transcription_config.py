"""What a session tells the pipeline about transcription: its language, and whether partial
transcripts are wanted (Whisper decodes them only then); languages the recogniser cannot do
are refused at ``session.update``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.config import load_settings
from parley.pipeline.history import History
from parley.realtime.commands import Configure
from parley.realtime.session import RealtimeSession


def _open(**kw: Any) -> tuple[RealtimeSession, Configure]:
    session = RealtimeSession(load_settings(env={}), History(), **kw)
    [configure] = [c for c in session.open().commands if isinstance(c, Configure)]
    return session, configure


def _update(session: RealtimeSession, body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    out = session.receive(json.dumps({"type": "session.update", "session": body}))
    configure = next((c for c in out.commands if isinstance(c, Configure)), None)
    return out.events, configure


def _transcription(value: dict[str, Any] | None, kind: str = "realtime") -> dict[str, Any]:
    return {"type": kind, "audio": {"input": {"transcription": value}}}


def test_a_new_session_wants_no_partials_until_it_asks_for_transcription() -> None:
    session, first = _open()
    assert first.partials is False and first.language == "en"
    _, asked = _update(session, _transcription({"model": "whisper-1", "language": "en"}))
    assert asked.partials is True
    _, other = _update(session, {"type": "realtime", "instructions": "Be brief."})
    assert other.partials is True  # still asked
    _, off = _update(session, _transcription(None))
    assert off.partials is False and off.language is None


def test_a_transcription_session_always_wants_partials() -> None:
    session, first = _open(kind="transcription")
    assert first.partials is True
    _, again = _update(session, _transcription({"language": "en"}, "transcription"))
    assert again.partials is True


def test_the_session_language_reaches_the_pipeline() -> None:
    session, _ = _open()
    _, configure = _update(session, _transcription({"language": "de"}))
    assert configure.language == "de"


@pytest.mark.parametrize("language", ["en", "EN", "en-US", "en_GB"])
def test_an_english_only_recogniser_takes_english(language: str) -> None:
    session, _ = _open(languages={"en"}, asr_model="whisper")
    events, configure = _update(session, _transcription({"language": language}))
    assert events[0]["type"] == "session.updated" and configure.language == language


@pytest.mark.parametrize("language", ["de", "fr-FR", "zh"])
def test_an_english_only_recogniser_refuses_other_languages_clearly(language: str) -> None:
    session, before = _open(languages={"en"}, asr_model="whisper")
    events, configure = _update(session, _transcription({"language": language}))
    [error] = events
    assert error["type"] == "error" and configure is None
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == "session.audio.input.transcription.language"
    assert "whisper" in error["error"]["message"] and "en only" in error["error"]["message"]
    # Nothing changed: the session still transcribes English.
    assert session.configure().language == before.language
