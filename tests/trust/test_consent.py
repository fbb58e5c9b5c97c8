"""Voice consents and custom voices: the phrase check, the stores, speaker verification, and the
endpoints through the official ``openai`` SDK."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import wave
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from starlette.applications import Starlette

from parley.audio.files import read_audio
from parley.audio.frames import Frame
from parley.config import ASRSettings, TTSSettings
from parley.engines.base import ASR, SpeechOptions
from parley.engines.registry import build_asr, build_tts
from parley.errors import ClientError, Code, EngineUnavailableError, NotFoundError
from parley.server.auth import AuthMiddleware, Limiter
from parley.server.voices import voice_routes
from parley.store import Database
from parley.store.keys import KeyStore
from parley.trust import speaker
from parley.trust.cloning import load_pocket_tts
from parley.trust.consent import PHRASES, check_phrase, consent_phrase
from parley.trust.speaker import SpeakerVerifier, load_speaker_verifier, similarity
from parley.trust.voices import ConsentStore, VoiceStore, resolve_voice
from tests.fakes.speaker import OneSpeaker

RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None
needs_resemblyzer = pytest.mark.skipif(
    not RESEMBLYZER, reason="Resemblyzer (parley's 'voices' extra) is not installed"
)

# What a recogniser makes of a clearly read phrase: a few words wrong (the operator's name
# most of all), nothing missing.
MISHEARD = {
    "en": "I am the owner of this voice and I consent to partly using this voice to create a "
    "synthetic voice model",
    "de": "ich bin der eigentumer dieser stimme und ich will ihre ein dass parlay diese stimme "
    "verwendet um ein synthetisches stimm modell zu erstellen",
    "es": "soy el propietario de esta voz y doy mi consentimiento para que parle utilice esta "
    "voz para crear un modelo de voz sintetica",
    "fr": "je suis le proprietaire de cette voix et je consens a ce que parlez utilise cette "
    "voix pour creer un modele de voix synthetique",
}
OTHER = {
    "en": "and so my fellow americans ask not what your country can do for you",
    "de": "ich bin der eigentümer dieser stimme",  # only the start: not read in full
    "es": "el veloz murciélago hindú comía feliz cardillo y kiwi",
    "fr": "je suis le propriétaire de cette voix et je ne consens à rien du tout",
}


@pytest.mark.parametrize("language", sorted(PHRASES))
def test_consent_phrase_passes_when_read_and_fails_otherwise(language: str) -> None:
    check_phrase(consent_phrase(language), f"{language}-XX")
    check_phrase(MISHEARD[language], language)
    check_phrase("okay so " + consent_phrase(language) + " thank you", language)
    with pytest.raises(ClientError) as caught:
        check_phrase(OTHER[language], language)
    assert caught.value.code == Code.CONSENT_PHRASE_MISMATCH
    assert caught.value.param == "recording"
    with pytest.raises(ClientError):
        check_phrase("", language)


def test_consent_phrase_names_the_operator() -> None:
    assert "Acme Voice" in consent_phrase("en-GB", "Acme Voice")
    check_phrase(consent_phrase("en", "Acme Voice"), "en", "Acme Voice")
    assert "parley" in consent_phrase("en")
    with pytest.raises(ClientError) as caught:
        check_phrase("i consent to parley", "en", "Acme Voice")
    assert caught.value.code == Code.CONSENT_PHRASE_MISMATCH


def test_consent_phrase_unknown_language_is_a_clear_400() -> None:
    with pytest.raises(ClientError) as caught:
        check_phrase("whatever", "tlh")
    assert caught.value.param == "language"
    assert "en, es, fr" in caught.value.message


# --- stores ----------------------------------------------------------------------------------


def test_consent_stores_are_per_tenant_and_deleting_a_consent_deletes_its_voices(
    database: Database,
) -> None:
    acme, other = ConsentStore(database, "acme"), ConsentStore(database, "other")
    consent = acme.create(name="Ann", language="en-US", recording=b"RIFF", transcript="...")
    assert consent.id.startswith("cons_")
    with pytest.raises(NotFoundError):
        other.get(consent.id)
    with pytest.raises(NotFoundError):
        other.delete(consent.id)
    assert other.list() == ([], False)
    voices = VoiceStore(database, "acme", max_voices=2)
    with pytest.raises(NotFoundError):
        VoiceStore(database, "other").create(name="x", consent_id=consent.id, sample=b"s")
    emb = np.arange(4, dtype=np.float32)
    voice = voices.create(name="Ann 1", consent_id=consent.id, sample=b"s1", embedding=emb)
    assert voice.id.startswith("voice_")
    got = resolve_voice(database, "acme", voice.id)
    assert got is not None and got.sample == b"s1" and got.embedding is not None
    assert list(got.embedding) == list(emb)
    assert resolve_voice(database, "other", voice.id) is None
    voices.create(name="Ann 2", consent_id=consent.id, sample=b"s2")
    with pytest.raises(ClientError) as caught:
        voices.create(name="Ann 3", consent_id=consent.id, sample=b"s3")
    assert caught.value.code == Code.VOICE_LIMIT_REACHED
    assert acme.rename(consent.id, "Ann B").name == "Ann B"
    page, more = acme.list(limit=1)
    assert [c.id for c in page] == [consent.id] and not more
    acme.delete(consent.id)
    assert resolve_voice(database, "acme", voice.id) is None
    assert voices.list() == []
    with pytest.raises(NotFoundError):
        acme.get(consent.id)


def test_consent_list_pages_newest_first(database: Database) -> None:
    ticks = iter(range(100, 200))
    store = ConsentStore(database, "acme", clock=lambda: float(next(ticks)))
    ids = [store.create(name=f"c{i}", language="en", recording=b"r").id for i in range(5)]
    first, more = store.list(limit=2)
    assert [c.id for c in first] == ids[:2:-1][:2] and more
    rest, more = store.list(after=first[-1].id, limit=10)
    assert [c.id for c in rest] == ids[2::-1] and not more


# --- speaker verification ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier() -> SpeakerVerifier:
    if not RESEMBLYZER:
        pytest.skip("Resemblyzer (parley's 'voices' extra) is not installed")
    return load_speaker_verifier()


def _halves(audio: Frame) -> tuple[Frame, Frame]:
    mid = len(audio.samples) // 2
    return Frame(audio.samples[:mid], audio.sample_rate), Frame(
        audio.samples[mid:], audio.sample_rate
    )


@needs_resemblyzer
def test_speaker_verification_same_and_different_speakers(
    verifier: SpeakerVerifier, speech_dir: Path
) -> None:
    embed = verifier.embed
    for clip in ("en_osr_harvard72_8k", "en_ljspeech_LJ050_0131", "es_leopard"):
        a, b = _halves(read_audio(speech_dir / f"{clip}.wav"))
        assert similarity(embed(a), embed(b)) >= verifier.threshold, clip
    for one, two in [("en_jfk_wav", "en_ljspeech_LJ050_0131"), ("en_jfk_wav", "fr_leopard")]:
        a, b = read_audio(speech_dir / f"{one}.wav"), read_audio(speech_dir / f"{two}.wav")
        assert similarity(embed(a), embed(b)) < verifier.threshold, (one, two)


def test_speaker_verification_unavailable_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> Path:
        raise ImportError("resemblyzer")

    monkeypatch.setattr(speaker, "RESEMBLYZER", replace(speaker.RESEMBLYZER, locate=missing))
    with pytest.raises(EngineUnavailableError) as caught:
        load_speaker_verifier()
    assert caught.value.code == Code.SPEAKER_VERIFICATION_UNAVAILABLE
    assert "parley[voices]" in caught.value.message


# --- HTTP, through the official SDK ------------------------------------------------------------


@pytest.fixture(scope="module")
def recogniser() -> ASR:
    # The default recogniser (Whisper tiny.en from its pinned wheel), not the fast profile's
    # pocketsphinx, which cannot make out a synthetic voice reading the phrase.
    return build_asr(ASRSettings(engine="whisper"))


def _wav(audio: Frame) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(audio.samples.tobytes())
    return out.getvalue()


async def _say(text: str, engine: str = "espeak") -> bytes:
    tts = build_tts(TTSSettings(engine=engine))
    frames = [f async for f in tts.synthesize(text, SpeechOptions(sample_rate=16000))]
    return _wav(Frame(np.concatenate([f.samples for f in frames]), 16000))


class App:
    def __init__(self, db: Database, asr: ASR, verifier: Any, max_voices: int = 20) -> None:
        keys = KeyStore(db)
        self.keys = {tenant: keys.create_key(tenant)[0] for tenant in ("acme", "other")}
        routes = voice_routes(db, asr, verifier=verifier, max_voices=max_voices)
        self.asgi = AuthMiddleware(Starlette(routes=routes), keys, Limiter())

    def sdk(self, tenant: str) -> openai.AsyncOpenAI:
        transport = httpx2.ASGITransport(app=self.asgi)
        return openai.AsyncOpenAI(
            base_url="http://parley.test/v1",
            api_key=self.keys[tenant],
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "parley.db") as database:
        yield database


@pytest.fixture(scope="module")
def phrase_wav() -> bytes:
    return asyncio.run(_say(consent_phrase("en")))


async def test_voices_http_consents_and_voices_with_the_openai_sdk(
    db: Database, recogniser: ASR, phrase_wav: bytes, speech_dir: Path
) -> None:
    app = App(db, recogniser, verifier=OneSpeaker, max_voices=2)
    acme, other = app.sdk("acme"), app.sdk("other")
    consent = await acme.audio.voice_consents.create(
        name="Ann", language="en-US", recording=("phrase.wav", phrase_wav, "audio/wav")
    )
    assert consent.id.startswith("cons_") and consent.object == "audio.voice_consent"
    assert (consent.name, consent.language) == ("Ann", "en-US")
    assert (await acme.audio.voice_consents.retrieve(consent.id)).id == consent.id
    renamed = await acme.audio.voice_consents.update(consent.id, name="Ann B")
    assert renamed.name == "Ann B"
    assert [c.id async for c in acme.audio.voice_consents.list()] == [consent.id]

    jfk = (speech_dir / "en_jfk_wav.wav").read_bytes()
    with pytest.raises(openai.BadRequestError) as refused:
        await acme.audio.voice_consents.create(
            name="JFK", language="en", recording=("jfk.wav", jfk, "audio/wav")
        )
    assert refused.value.code == "consent_phrase_mismatch"

    with pytest.raises(openai.BadRequestError) as unheard:  # tiny.en hears English only
        await acme.audio.voice_consents.create(
            name="Anna", language="de-DE", recording=("phrase.wav", phrase_wav, "audio/wav")
        )
    assert unheard.value.param == "language"

    # Another tenant sees nothing and can use nothing.
    assert [c.id async for c in other.audio.voice_consents.list()] == []
    with pytest.raises(openai.NotFoundError):
        await other.audio.voice_consents.retrieve(consent.id)
    with pytest.raises(openai.NotFoundError):
        await other.audio.voices.create(
            name="stolen", consent=consent.id, audio_sample=("s.wav", phrase_wav, "audio/wav")
        )
    with pytest.raises(openai.NotFoundError):
        await other.audio.voice_consents.delete(consent.id)

    sample = ("sample.wav", await _say("Hello there, this is my voice."), "audio/wav")
    voice = await acme.audio.voices.create(name="Ann", consent=consent.id, audio_sample=sample)
    assert voice.id.startswith("voice_") and voice.type == "audio_sample"
    assert resolve_voice(db, "acme", voice.id) is not None
    assert resolve_voice(db, "other", voice.id) is None
    await acme.audio.voices.create(name="Ann 2", consent=consent.id, audio_sample=sample)
    with pytest.raises(openai.BadRequestError) as limit:
        await acme.audio.voices.create(name="Ann 3", consent=consent.id, audio_sample=sample)
    assert limit.value.code == "voice_limit_reached"
    deleted_voice = await acme.audio.voices.delete(voice.id)
    assert deleted_voice.deleted and deleted_voice.object == "audio.voice.deleted"
    third = await acme.audio.voices.create(name="Ann 3", consent=consent.id, audio_sample=sample)

    deleted = await acme.audio.voice_consents.delete(consent.id)
    assert deleted.deleted and deleted.id == consent.id
    assert resolve_voice(db, "acme", third.id) is None  # its voices went with it
    with pytest.raises(openai.NotFoundError):
        await acme.audio.voice_consents.retrieve(consent.id)


async def test_voices_http_without_a_speaker_verifier(
    db: Database, recogniser: ASR, phrase_wav: bytes
) -> None:
    def unavailable() -> SpeakerVerifier:
        raise EngineUnavailableError(
            "Speaker verification is not available", code=Code.SPEAKER_VERIFICATION_UNAVAILABLE
        )

    acme = App(db, recogniser, verifier=unavailable).sdk("acme")
    recording = ("phrase.wav", phrase_wav, "audio/wav")
    consent = await acme.audio.voice_consents.create(name="A", language="en", recording=recording)
    with pytest.raises(openai.InternalServerError) as caught:
        await acme.audio.voices.create(name="A", consent=consent.id, audio_sample=recording)
    assert caught.value.status_code == 503
    assert caught.value.code == "speaker_verification_unavailable"


@needs_resemblyzer
async def test_voices_http_speaker_mismatch(
    db: Database, recogniser: ASR, speech_dir: Path
) -> None:
    acme = App(db, recogniser, verifier=load_speaker_verifier).sdk("acme")
    recording = ("phrase.wav", await _say(consent_phrase("en"), "piper"), "audio/wav")
    consent = await acme.audio.voice_consents.create(name="Joe", language="en", recording=recording)
    same = (
        "same.wav",
        await _say("The birch canoe slid on the smooth planks.", "piper"),
        "audio/wav",
    )
    voice = await acme.audio.voices.create(name="Joe", consent=consent.id, audio_sample=same)
    assert voice.id.startswith("voice_")
    jfk = ("jfk.wav", (speech_dir / "en_jfk_wav.wav").read_bytes(), "audio/wav")
    with pytest.raises(openai.BadRequestError) as caught:
        await acme.audio.voices.create(name="JFK", consent=consent.id, audio_sample=jfk)
    assert caught.value.code == "speaker_mismatch"


def test_custom_voice_without_a_cloning_engine_is_voice_engine_unavailable() -> None:
    if importlib.util.find_spec("pocket_tts") is not None:
        pytest.skip("pocket-tts is installed here")
    with pytest.raises(EngineUnavailableError) as caught:
        load_pocket_tts()
    assert caught.value.code == Code.VOICE_ENGINE_UNAVAILABLE
    assert caught.value.status == 503 and caught.value.param == "voice"
