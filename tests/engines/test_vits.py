"""VITS / MMS-TTS through transformers, on tiny random-weight models the tests build.

Batched audio is compared with unbatched audio of the same clause at the model's rate (16 kHz,
so no resampling), with the output noise off (``noise_scale=0``, ``noise_scale_duration=0``):
the durations then come out the same, hence equal lengths, and the samples agree except near
the end of the shorter rows of a batch, where the vocoder's receptive field reaches into the
padding (the unbatched run sees zeros there, the batched one the vocoder's response to padded
frames).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest

from parley.audio.frames import Frame
from parley.config import TTSSettings
from parley.engines.base import TTS, SpeechOptions
from parley.engines.batching import RequestAborted
from parley.engines.registry import build_tts
from parley.engines.vits import Speakers, VitsTTS, split_text
from parley.errors import ClientError, ConfigError
from tests.engines.clause_tts import check_first_clause_goes_ahead
from tests.engines.clause_tts import engine_busy as _engine_busy
from tests.engines.clause_tts import queued as _queued
from tests.engines.clause_tts import samples as _samples
from tests.engines.clause_tts import speak as _speak
from tests.engines.clause_tts import until as _until
from tests.tinymodels.vits import SAMPLE_RATE, build_tiny_vits

SENTENCE = "The quick brown fox jumps over the lazy dog."
CLAUSES = [
    "hello there",
    "how are you doing today",
    "the weather is fine",
    "a somewhat longer clause than the others in this batch",
    "yes",
    "we will see about that tomorrow morning",
]
QUIET = {"noise_scale": 0.0, "noise_scale_duration": 0.0}
# Samples at the end of a batched row that may differ from the unbatched run (see above).
TAIL = 4096


@pytest.fixture(scope="session")
def tiny_vits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vits(tmp_path_factory.mktemp("vits") / "tiny")


@pytest.fixture(scope="session")
def tiny_vits_multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vits(tmp_path_factory.mktemp("vits") / "multi", num_speakers=4)


@pytest.fixture(scope="module")
def tts(tiny_vits: Path) -> VitsTTS:
    return VitsTTS(model=str(tiny_vits), **QUIET)


def test_vits_satisfies_protocol(tts: VitsTTS) -> None:
    assert isinstance(tts, TTS)
    assert tts.placement.device == "cpu"
    assert tts.placement.dtype == "float32"
    assert tts.sample_rate == SAMPLE_RATE


@pytest.mark.parametrize("rate", [24000, 16000])
async def test_vits_speaks_int16_frames_at_the_requested_rate(tts: VitsTTS, rate: int) -> None:
    frames = await _speak(tts, SENTENCE, SpeechOptions(sample_rate=rate))
    assert frames
    assert all(f.sample_rate == rate and f.samples.dtype == np.int16 for f in frames)
    assert all(0 < len(f) <= 0.2 * rate for f in frames)
    samples = _samples(frames)
    assert np.abs(samples.astype(np.int32)).max() > 1000
    # The model's lengths are whole frames of 256 samples at 16 kHz; resampling keeps the time.
    assert len(samples) / rate == pytest.approx(
        len(_samples(await _speak(tts, SENTENCE, SpeechOptions(sample_rate=16000)))) / 16000,
        rel=0.01,
    )


@pytest.mark.parametrize("text", ["", "   ", "!!! ???", "123"])
async def test_vits_text_with_nothing_to_say_yields_nothing(tts: VitsTTS, text: str) -> None:
    # The tiny vocabulary has letters only: punctuation and digits are dropped by the tokenizer.
    assert await _speak(tts, text, SpeechOptions()) == []


async def test_vits_faster_speed_gives_shorter_audio(tts: VitsTTS) -> None:
    normal = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=1.0))))
    fast = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=2.0))))
    slow = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(speed=0.5))))
    assert fast < 0.65 * normal
    assert slow > 1.5 * normal


async def test_vits_rejects_bad_options(tts: VitsTTS) -> None:
    with pytest.raises(ClientError) as err:
        await _speak(tts, SENTENCE, SpeechOptions(speed=0))
    assert err.value.param == "speed"
    with pytest.raises(ClientError) as err:
        await _speak(tts, SENTENCE, SpeechOptions(voice="nobody"))
    assert err.value.param == "voice"


async def test_vits_splits_long_text_into_several_requests(tts: VitsTTS) -> None:
    text = " ".join([SENTENCE] * 12)  # ~540 characters
    assert len(split_text(text)) >= 3
    frames = await _speak(tts, text, SpeechOptions(sample_rate=16000))
    one = len(_samples(await _speak(tts, SENTENCE, SpeechOptions(sample_rate=16000))))
    assert len(_samples(frames)) == pytest.approx(12 * one, rel=0.05)
    assert tts.scheduler.stats.requests >= 4


async def _batched_vs_alone(batched: VitsTTS, alone: VitsTTS, options: list[SpeechOptions]) -> None:
    together = await asyncio.gather(
        *(_speak(batched, text, o) for text, o in zip(CLAUSES, options, strict=True))
    )
    assert max(batched.scheduler.stats.recent_sizes) > 1
    for text, o, frames in zip(CLAUSES, options, together, strict=True):
        single = _samples(await _speak(alone, text, o))
        joint = _samples(frames)
        assert len(joint) == len(single), text
        head = max(0, len(single) - TAIL)
        diff = np.abs(joint[:head].astype(np.int32) - single[:head].astype(np.int32))
        assert diff.max(initial=0) <= 2, text  # float rounding of different batch shapes
    assert alone.scheduler.stats.recent_sizes and max(alone.scheduler.stats.recent_sizes) == 1


async def test_vits_batches_concurrent_clauses_like_unbatched(tiny_vits: Path) -> None:
    batched = VitsTTS(model=str(tiny_vits), max_batch_size=8, max_wait_ms=50, **QUIET)
    alone = VitsTTS(model=str(tiny_vits), max_batch_size=1, **QUIET)
    options = [SpeechOptions(sample_rate=SAMPLE_RATE)] * len(CLAUSES)
    await _batched_vs_alone(batched, alone, options)


async def test_vits_batch_mixes_speakers_and_speeds(tiny_vits_multi: Path) -> None:
    batched = VitsTTS(model=str(tiny_vits_multi), max_batch_size=8, max_wait_ms=50, **QUIET)
    alone = VitsTTS(model=str(tiny_vits_multi), max_batch_size=1, **QUIET)
    voices = ["alloy", "ash", "ballad", "coral", "speaker_1", None]
    speeds = [1.0, 1.0, 1.5, 1.0, 1.5, 1.0]
    options = [
        SpeechOptions(voice=v, speed=s, sample_rate=SAMPLE_RATE)
        for v, s in zip(voices, speeds, strict=True)
    ]
    await _batched_vs_alone(batched, alone, options)


async def test_vits_first_clause_goes_ahead_of_queued_continuations(tiny_vits: Path) -> None:
    tts = VitsTTS(model=str(tiny_vits), max_batch_size=2, max_wait_ms=0, **QUIET)
    await check_first_clause_goes_ahead(tts)


async def test_vits_closing_a_stream_early_aborts_its_queued_requests(tts: VitsTTS) -> None:
    long_text = " ".join([SENTENCE] * 8)
    options = SpeechOptions(stream="resp_1")
    speech: AsyncGenerator[Frame, None] = tts.synthesize(long_text, options)
    await anext(speech)  # the first piece is spoken; the generator waits at a yield
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


async def test_vits_cancelled_caller_leaves_nothing_queued(tts: VitsTTS) -> None:
    async with _engine_busy(tts):
        task = asyncio.create_task(_speak(tts, SENTENCE, SpeechOptions()))
        await _until(lambda: _queued(tts) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _queued(tts) == 0


def test_vits_multi_speaker_voices(tiny_vits_multi: Path) -> None:
    tts = VitsTTS(model=str(tiny_vits_multi), default_voice="nova")
    assert [v.id for v in tts.voices()] == [f"speaker_{i}" for i in range(4)]
    assert {v.language for v in tts.voices()} == {"eng"}
    assert tts.speakers.resolve("alloy") == 0
    assert tts.speakers.resolve("ash") == 1
    assert tts.speakers.resolve("Speaker_3") == 3


async def test_vits_openai_voices_pick_different_speakers(tiny_vits_multi: Path) -> None:
    tts = VitsTTS(model=str(tiny_vits_multi), **QUIET)
    alloy = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="alloy")))
    ash = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="ash")))
    again = _samples(await _speak(tts, SENTENCE, SpeechOptions(voice="alloy")))
    assert np.array_equal(alloy, again)
    assert len(alloy) != len(ash) or not np.array_equal(alloy, ash)


async def test_vits_speaker_rows_match_the_models_own_speaker_id(tiny_vits_multi: Path) -> None:
    # The engine swaps VitsModel's one speaker embedding for one per row; alone, that row must
    # be what the model gives for that speaker_id.
    import torch
    from transformers import AutoTokenizer, VitsModel

    model = VitsModel.from_pretrained(tiny_vits_multi, local_files_only=True).eval()
    model.noise_scale = model.noise_scale_duration = 0.0
    tokenizer = AutoTokenizer.from_pretrained(tiny_vits_multi, local_files_only=True)
    with torch.inference_mode():
        output = model(**tokenizer("hello there", return_tensors="pt"), speaker_id=2)
    expected = output.waveform[0, : int(output.sequence_lengths[0])].numpy()
    tts = VitsTTS(model=str(tiny_vits_multi), **QUIET)
    frames = await _speak(tts, "hello there", SpeechOptions(voice="speaker_2", sample_rate=16000))
    assert np.abs(_samples(frames) / 32768.0 - expected).max() < 1e-3


def test_vits_single_speaker_takes_any_openai_voice(tts: VitsTTS, tiny_vits: Path) -> None:
    assert [v.id for v in tts.voices()] == [tiny_vits.name]
    assert {tts.speakers.resolve(v) for v in ("alloy", "cedar", tiny_vits.name)} == {0}


def test_vits_speakers_spread_openai_voices() -> None:
    speakers = Speakers.build([f"p{i}" for i in range(109)], single="x", language="en")
    ids = [speakers.resolve(v) for v in ("alloy", "ash", "ballad", "coral", "echo", "cedar")]
    assert len(set(ids)) == len(ids)
    assert speakers.resolve("p5") == 5


def test_vits_unknown_default_voice_is_a_config_error(tiny_vits: Path) -> None:
    with pytest.raises(ConfigError) as err:
        VitsTTS(model=str(tiny_vits), default_voice="nobody")
    assert err.value.param == "tts.voice"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"device": "cuda"}, "sees no CUDA device"),
        ({"device": "tpu"}, "is not one of"),
        ({"dtype": "float16"}, "not supported on cpu"),
        ({"dtype": "int4"}, "is not one of"),
    ],
)
def test_vits_bad_placement_is_a_config_error(
    tiny_vits: Path, options: dict[str, str], words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        VitsTTS(model=str(tiny_vits), **options)


def test_vits_missing_model_names_the_pull_command() -> None:
    with pytest.raises(ConfigError) as err:
        VitsTTS(model="parley-tests/no-such-model")
    assert "parley models pull parley-tests/no-such-model" in err.value.message
    assert err.value.param == "tts.options.model"


def test_vits_bad_model_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        VitsTTS(model=str(tmp_path))  # exists, holds no model
    missing = tmp_path / "nowhere" / "deeper" / "model"
    with pytest.raises(ConfigError, match=str(missing)):
        VitsTTS(model=str(missing))


def test_vits_builds_through_the_registry(tiny_vits: Path) -> None:
    tts = build_tts(TTSSettings(engine="vits", options={"model": str(tiny_vits), "seed": 1}))
    assert tts.name == "vits"
    assert isinstance(tts, VitsTTS)
    with pytest.raises(ConfigError) as err:
        build_tts(TTSSettings(engine="vits", options={"model": str(tiny_vits), "bogus": 1}))
    assert err.value.param == "tts.options"


def test_vits_batches_on_cuda_only_by_default(tiny_vits: Path) -> None:
    """A padded batch is slower than its rows on a CPU (docs/benchmarks.md): off there."""
    assert VitsTTS(model=str(tiny_vits), device="cpu").scheduler.max_batch_size == 1
    assert VitsTTS(model=str(tiny_vits), max_batch_size=4).scheduler.max_batch_size == 4
