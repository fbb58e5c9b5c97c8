"""espeak-ng through ctypes: streaming chunks, rates, voices, aborts and serialisation."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import numpy as np
import pytest

from parley.audio.frames import Frame
from parley.engines.base import TTS, SpeechOptions
from parley.engines.espeak import EspeakTTS
from parley.errors import ClientError, ConfigError

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
WORDS = len(SENTENCE.split())
LONG = "This sentence is repeated to make a text that takes seconds to synthesise. " * 400


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


async def _speak(tts: EspeakTTS, text: str, options: SpeechOptions) -> list[Frame]:
    return [f async for f in tts.synthesize(text, options)]


def _seconds(frames: list[Frame]) -> float:
    return sum(f.duration_s for f in frames)


def test_espeak_satisfies_protocol(tts: EspeakTTS) -> None:
    assert isinstance(tts, TTS)


def test_espeak_lists_voices(tts: EspeakTTS) -> None:
    voices = {v.id: v for v in tts.voices()}
    assert len(voices) > 50
    assert voices["en-us"].name == "English (America)"
    assert voices["en-us"].language == "en-us"
    assert {"fr-fr", "de", "es"} <= voices.keys()


async def test_espeak_yields_several_chunks_of_plausible_length(tts: EspeakTTS) -> None:
    frames = await _speak(tts, SENTENCE, SpeechOptions())
    assert len(frames) >= 5
    assert all(f.sample_rate == 24000 for f in frames)
    assert 0.2 * WORDS <= _seconds(frames) <= 1.0 * WORDS
    assert max(abs(int(s)) for f in frames for s in f.samples) > 1000


@pytest.mark.parametrize("rate", [16000, 24000, 22050])
async def test_espeak_honours_output_rate(tts: EspeakTTS, rate: int) -> None:
    frames = await _speak(tts, SENTENCE, SpeechOptions(sample_rate=rate))
    reference = _seconds(await _speak(tts, SENTENCE, SpeechOptions(sample_rate=22050)))
    assert frames
    assert all(f.sample_rate == rate for f in frames)
    assert _seconds(frames) == pytest.approx(reference, rel=0.01)


async def test_espeak_faster_speed_gives_shorter_audio(tts: EspeakTTS) -> None:
    normal = _seconds(await _speak(tts, SENTENCE, SpeechOptions(speed=1.0)))
    fast = _seconds(await _speak(tts, SENTENCE, SpeechOptions(speed=2.0)))
    assert fast < 0.7 * normal


@pytest.mark.parametrize(
    "options",
    [
        SpeechOptions(voice="fr"),
        SpeechOptions(voice="French (France)"),
        SpeechOptions(voice="roa/fr"),
        SpeechOptions(language="fr-FR"),
    ],
)
async def test_espeak_french_voice_speaks(tts: EspeakTTS, options: SpeechOptions) -> None:
    frames = await _speak(tts, "Bonjour, comment allez-vous aujourd'hui ?", options)
    assert _seconds(frames) > 0.5


async def test_espeak_unknown_voice_is_client_error(tts: EspeakTTS) -> None:
    with pytest.raises(ClientError, match="en-us") as caught:
        await _speak(tts, SENTENCE, SpeechOptions(voice="no-such-voice"))
    assert caught.value.param == "voice"


async def test_espeak_unknown_language_is_client_error(tts: EspeakTTS) -> None:
    with pytest.raises(ClientError) as caught:
        await _speak(tts, SENTENCE, SpeechOptions(language="xx-yy"))
    assert caught.value.param == "language"


def test_espeak_unknown_default_voice_is_config_error() -> None:
    with pytest.raises(ConfigError):
        EspeakTTS(default_voice="no-such-voice")


async def test_espeak_blank_text_yields_nothing(tts: EspeakTTS) -> None:
    assert await _speak(tts, "  \n ", SpeechOptions()) == []


async def test_espeak_aclose_aborts_and_next_synthesis_works(tts: EspeakTTS) -> None:
    # LONG takes well over a second to synthesise whole; an abort frees espeak at once.
    stream = tts.synthesize(LONG, SpeechOptions())
    first = await anext(stream)
    assert len(first)
    await stream.aclose()
    started = time.perf_counter()
    frames = await asyncio.wait_for(_speak(tts, "Still working.", SpeechOptions()), 5)
    assert frames
    assert time.perf_counter() - started < 1.0


async def test_espeak_cancelled_consumer_aborts_synthesis(tts: EspeakTTS) -> None:
    got_audio = asyncio.Event()

    async def consume() -> None:
        # Cancelled while the generator is suspended at its yield: only closing it (here
        # through aclosing) reaches the generator, as the engine contract asks of consumers.
        async with aclosing(tts.synthesize(LONG, SpeechOptions())) as frames:
            async for _ in frames:
                got_audio.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_audio.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.perf_counter()
    assert await _speak(tts, "Still working.", SpeechOptions())
    assert time.perf_counter() - started < 1.0


async def test_espeak_concurrent_synthesis_both_complete(tts: EspeakTTS) -> None:
    alone = _seconds(await _speak(tts, SENTENCE, SpeechOptions()))
    a, b = await asyncio.gather(
        _speak(tts, SENTENCE, SpeechOptions()),
        _speak(tts, "Bonjour tout le monde.", SpeechOptions(voice="fr", sample_rate=16000)),
    )
    assert _seconds(a) == pytest.approx(alone, rel=0.01)
    assert _seconds(b) > 0.5
    assert all(f.sample_rate == 16000 for f in b)


@pytest.mark.parametrize("voice", ["alloy", "ash", "coral", "en-us+f3", "fr+m3"])
async def test_espeak_openai_voice_names_and_variants(voice: str) -> None:
    frames = [f async for f in EspeakTTS().synthesize("Hello there.", SpeechOptions(voice=voice))]
    assert sum(len(f) for f in frames) > 0


async def test_espeak_distinct_openai_voices_sound_different() -> None:
    tts = EspeakTTS()

    async def render(voice: str) -> np.ndarray:
        opts = SpeechOptions(voice=voice, sample_rate=16000)
        return np.concatenate([f.samples async for f in tts.synthesize("Hello there.", opts)])

    a, b = await render("alloy"), await render("echo")
    assert len(a) != len(b) or not np.array_equal(a, b)


async def test_espeak_unknown_variant_is_a_client_error() -> None:
    with pytest.raises(ClientError) as err:
        async for _ in EspeakTTS().synthesize("Hi.", SpeechOptions(voice="en-us+nonsense")):
            pass
    assert err.value.param == "voice"
