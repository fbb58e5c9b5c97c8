"""Piper voices through piper-tts and ONNX Runtime, on tiny random-weight voices built here.

Batched audio is compared with unbatched audio of the same clause at the voice's rate
(22.05 kHz, so no resampling), with the output noise off (``noise_scale=0``, ``noise_w=0``):
the durations then come out the same, hence equal lengths. Piper scales each row to full range
by its own peak, and near the end of the shorter rows of a batch the vocoder's receptive field
reaches into the padding (the unbatched run sees zeros there, the batched one the vocoder's
response to padded frames), which can move that peak. So the rows are compared up to their
scale: before the last :data:`TAIL` samples, one is the other times a constant, give or take
the rounding to int16.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parley.audio.frames import Frame
from parley.config import TTSSettings
from parley.engines.base import TTS, SpeechOptions
from parley.engines.batching import RequestAborted
from parley.engines.piper import PiperTTS
from parley.engines.registry import build_tts
from parley.errors import ClientError, ConfigError
from tests.engines.clause_tts import check_first_clause_goes_ahead
from tests.engines.clause_tts import engine_busy as _engine_busy
from tests.engines.clause_tts import queued as _queued
from tests.engines.clause_tts import samples as _samples
from tests.engines.clause_tts import speak as _speak
from tests.engines.clause_tts import until as _until
from tests.tinymodels.piper import SAMPLE_RATE, build_tiny_piper

SENTENCE = "The quick brown fox jumps over the lazy dog."
CLAUSES = [
    "Hello there.",
    "How are you doing today?",
    "The weather is fine",
    "a somewhat longer clause than the others in this batch",
    "Yes!",
    "we will see about that tomorrow morning",
]
QUIET = {"noise_scale": 0.0, "noise_w": 0.0}
TAIL = 4096


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voices folder with a one-speaker voice and a four-speaker one."""
    folder = tmp_path_factory.mktemp("piper")
    build_tiny_piper(folder, name="en_US-tiny-medium")
    build_tiny_piper(folder, name="en_US-multi-medium", num_speakers=4)
    return folder


@pytest.fixture(scope="session")
def tiny_piper(voices_dir: Path) -> Path:
    return voices_dir / "en_US-tiny-medium.onnx"


@pytest.fixture(scope="session")
def multi_piper(voices_dir: Path) -> Path:
    return voices_dir / "en_US-multi-medium.onnx"


@pytest.fixture(scope="module")
def tts(tiny_piper: Path) -> PiperTTS:
    return PiperTTS(model=str(tiny_piper), **QUIET)


def _same_up_to_scale(joint: np.ndarray, single: np.ndarray, text: str) -> None:
    assert len(joint) == len(single), text
    head = len(single) - TAIL
    if head <= 0:
        return
    a = joint[:head].astype(np.float64)
    b = single[:head].astype(np.float64)
    scale = float(np.dot(a, b) / np.dot(a, a))
    assert np.abs(b - scale * a).max() <= 3, text


def test_piper_satisfies_protocol(tts: PiperTTS) -> None:
    assert isinstance(tts, TTS)
    assert tts.placement.device == "cpu"
    assert tts.sample_rate == SAMPLE_RATE
    assert tts.batched  # the onnx package is installed: the model is patched for row lengths


@pytest.mark.parametrize("rate", [24000, 16000])
async def test_piper_speaks_int16_frames_at_the_requested_rate(tts: PiperTTS, rate: int) -> None:
    frames = await _speak(tts, SENTENCE, SpeechOptions(sample_rate=rate))
    assert frames
    assert all(f.sample_rate == rate and f.samples.dtype == np.int16 for f in frames)
    assert all(0 < len(f) <= 0.2 * rate for f in frames)
    samples = _samples(frames)
    assert np.abs(samples.astype(np.int32)).max() > 10000
    native = _samples(await _speak(tts, SENTENCE, SpeechOptions(sample_rate=SAMPLE_RATE)))
    assert len(samples) / rate == pytest.approx(len(native) / SAMPLE_RATE, rel=0.01)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_piper_empty_text_yields_nothing(tts: PiperTTS, text: str) -> None:
    assert await _speak(tts, text, SpeechOptions()) == []


async def test_piper_faster_speed_gives_shorter_audio(tts: PiperTTS) -> None:
    normal = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=1.0))))
    fast = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=2.0))))
    slow = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=0.5))))
    assert fast < 0.65 * normal
    assert slow > 1.5 * normal


async def test_piper_rejects_bad_options(tts: PiperTTS) -> None:
    with pytest.raises(ClientError) as err:
        await _speak(tts, SENTENCE, SpeechOptions(sample_rate=0))
    assert err.value.param == "sample_rate"
    with pytest.raises(ClientError) as err:
        await _speak(tts, SENTENCE, SpeechOptions(voice="nobody"))
    assert err.value.param == "voice"


async def test_piper_speaks_each_sentence_as_a_request(tts: PiperTTS) -> None:
    frames = await _speak(tts, "One sentence here. And another one there!", SpeechOptions())
    assert frames
    assert tts.scheduler.stats.requests == 2


async def _batched_vs_alone(
    batched: PiperTTS, alone: PiperTTS, options: list[SpeechOptions]
) -> None:
    together = await asyncio.gather(
        *(_speak(batched, text, o) for text, o in zip(CLAUSES, options, strict=True))
    )
    assert max(batched.scheduler.stats.recent_sizes) > 1
    for text, o, frames in zip(CLAUSES, options, together, strict=True):
        _same_up_to_scale(_samples(frames), _samples(await _speak(alone, text, o)), text)
    assert max(alone.scheduler.stats.recent_sizes) == 1


async def test_piper_batches_concurrent_clauses_like_unbatched(tiny_piper: Path) -> None:
    batched = PiperTTS(model=str(tiny_piper), max_batch_size=8, max_wait_ms=50, **QUIET)
    alone = PiperTTS(model=str(tiny_piper), max_batch_size=1, **QUIET)
    options = [SpeechOptions(sample_rate=SAMPLE_RATE)] * len(CLAUSES)
    await _batched_vs_alone(batched, alone, options)


async def test_piper_batch_mixes_speakers_and_speeds(multi_piper: Path) -> None:
    batched = PiperTTS(model=str(multi_piper), max_batch_size=8, max_wait_ms=50, **QUIET)
    alone = PiperTTS(model=str(multi_piper), max_batch_size=1, **QUIET)
    voices = ["alloy", "alloy", "ash", "speaker_b", "coral", None]
    speeds = [1.0, 1.0, 1.0, 1.0, 1.5, 1.5]
    options = [
        SpeechOptions(voice=v, speed=s, sample_rate=SAMPLE_RATE)
        for v, s in zip(voices, speeds, strict=True)
    ]
    await _batched_vs_alone(batched, alone, options)


async def test_piper_without_onnx_runs_rows_one_by_one(
    tiny_piper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec

    def no_onnx(name: str, *args: Any) -> Any:
        return None if name == "onnx" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_onnx)
    rows = PiperTTS(model=str(tiny_piper), max_batch_size=8, max_wait_ms=50, **QUIET)
    monkeypatch.undo()
    assert not rows.batched
    alone = PiperTTS(model=str(tiny_piper), max_batch_size=1, **QUIET)
    options = [SpeechOptions(sample_rate=SAMPLE_RATE)] * len(CLAUSES)
    await _batched_vs_alone(rows, alone, options)


async def test_piper_first_clause_goes_ahead_of_queued_continuations(tiny_piper: Path) -> None:
    tts = PiperTTS(model=str(tiny_piper), max_batch_size=2, max_wait_ms=0, **QUIET)
    await check_first_clause_goes_ahead(tts)


async def test_piper_closing_a_stream_early_aborts_its_queued_requests(tts: PiperTTS) -> None:
    options = SpeechOptions(stream="resp_1")
    speech: AsyncGenerator[Frame, None] = tts.synthesize(f"{SENTENCE} {SENTENCE}", options)
    await anext(speech)  # the first sentence is spoken; the generator waits at a yield
    async with _engine_busy(tts):
        sibling = asyncio.create_task(
            _speak(tts, SENTENCE, SpeechOptions(stream="resp_1", continuation=True))
        )
        await _until(lambda: _queued(tts) == 1)
        await speech.aclose()  # barge-in
        assert _queued(tts) == 0
    with pytest.raises(RequestAborted):
        await sibling
    assert tts.scheduler.stats.aborted >= 1


async def test_piper_cancelled_caller_leaves_nothing_queued(tts: PiperTTS) -> None:
    async with _engine_busy(tts):
        task = asyncio.create_task(_speak(tts, SENTENCE, SpeechOptions()))
        await _until(lambda: _queued(tts) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _queued(tts) == 0


def test_piper_voices_by_name_from_the_voices_folder(voices_dir: Path) -> None:
    tts = PiperTTS(model="en_US-multi-medium", voices_dir=str(voices_dir), default_voice="nova")
    assert [v.id for v in tts.voices()] == [f"speaker_{c}" for c in "abcd"]
    assert {v.language for v in tts.voices()} == {"en-us"}
    assert tts.speakers.resolve("alloy") == 0
    assert tts.speakers.resolve("ash") == 1
    assert tts.speakers.resolve("SPEAKER_D") == 3
    single = PiperTTS(model="piper:en_US-tiny-medium", voices_dir=str(voices_dir))
    assert [v.id for v in single.voices()] == ["en_US-tiny-medium"]
    assert single.speakers.resolve("shimmer") == 0


async def test_piper_openai_voices_pick_different_speakers(multi_piper: Path) -> None:
    tts = PiperTTS(model=str(multi_piper), **QUIET)
    alloy = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="alloy")))
    ash = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="ash")))
    again = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="speaker_a")))
    assert np.array_equal(alloy, again)
    assert len(alloy) != len(ash) or not np.array_equal(alloy, ash)


def test_piper_unknown_default_voice_is_a_config_error(multi_piper: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PiperTTS(model=str(multi_piper), default_voice="nobody")
    assert err.value.param == "tts.voice"


def test_piper_cuda_without_a_cuda_provider_is_a_config_error(tiny_piper: Path) -> None:
    with pytest.raises(ConfigError, match="onnxruntime sees no CUDA device") as err:
        PiperTTS(model=str(tiny_piper), device="cuda")
    assert err.value.param == "tts.options.device"


@pytest.mark.parametrize("dtype", ["float16", "int8", "half"])
def test_piper_bad_dtype_is_a_config_error(tiny_piper: Path, dtype: str) -> None:
    with pytest.raises(ConfigError) as err:
        PiperTTS(model=str(tiny_piper), dtype=dtype)
    assert err.value.param == "tts.options.dtype"


def test_piper_missing_voice_names_the_pull_command(tmp_path: Path, tiny_piper: Path) -> None:
    with pytest.raises(ConfigError) as err:
        PiperTTS(model="en_US-nobody-medium", voices_dir=str(tmp_path))
    assert "parley models pull piper:en_US-nobody-medium" in err.value.message
    assert str(tmp_path) in err.value.message
    # The model without its config beside it.
    lone = tmp_path / "en_US-lone-low.onnx"
    lone.write_bytes(tiny_piper.read_bytes())
    with pytest.raises(ConfigError, match=r"en_US-lone-low\.onnx\.json not found"):
        PiperTTS(model=str(lone))


def test_piper_broken_voice_is_a_config_error(tmp_path: Path, tiny_piper: Path) -> None:
    broken = tmp_path / "en_US-broken-low.onnx"
    broken.write_bytes(b"not a model")
    Path(f"{broken}.json").write_bytes(Path(f"{tiny_piper}.json").read_bytes())
    with pytest.raises(ConfigError, match="could not load the Piper voice"):
        PiperTTS(model=str(broken))


def test_piper_builds_through_the_registry(tiny_piper: Path) -> None:
    tts = build_tts(TTSSettings(engine="piper", options={"model": str(tiny_piper)}))
    assert tts.name == "piper"
    assert isinstance(tts, PiperTTS)
    with pytest.raises(ConfigError) as err:
        build_tts(TTSSettings(engine="piper", options={"model": str(tiny_piper), "bogus": 1}))
    assert err.value.param == "tts.options"
