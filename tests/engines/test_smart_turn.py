"""Smart Turn v3 on real speech: finished sentences against the same sentences cut mid-thought,
the features it reads, the vendored model's hash check, and the audio it refuses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parley.audio.frames import Frame, int16_to_float32
from parley.audio.resample import resample
from parley.bench.clips import Clip
from parley.engines.smart_turn import (
    MODEL_PATH,
    MODEL_SHA256,
    EndOfTurn,
    SmartTurn,
    features,
    load_model,
)
from parley.errors import BadAudioError, ConfigError, EngineUnavailableError

# Where each clip is cut mid-sentence: the end of a word (pocketsphinx forced alignment) that
# leaves the thought plainly unfinished.
CUTS = {
    "en_sb_birch_canoe": 2.00,  # "the birch canoe slid on the | smooth planks"
    "en_jfk_wav": 7.04,  # "... ask not what your country can do for | you ..."
    "en_cheetah_platforms": 2.52,  # "today only platforms one and | three are used"
}
# The listener asks once the VAD has heard this much silence, so the model hears it too.
ASK_AFTER_MS = 200


@pytest.fixture(scope="module")
def engine() -> Iterator[SmartTurn]:
    turn = SmartTurn()
    yield turn
    turn.close()


def _read(clip: Clip) -> Frame:
    samples, rate = sf.read(clip.path, dtype="int16")
    return Frame(samples, rate)


def _then_silence(frame: Frame, ms: float) -> Frame:
    silence = Frame.silence(ms, frame.sample_rate).samples
    return Frame(np.concatenate((frame.samples, silence)), frame.sample_rate)


def test_smart_turn_satisfies_the_protocol(engine: SmartTurn) -> None:
    assert isinstance(engine, EndOfTurn)
    assert (engine.name, engine.sample_rate) == ("smart-turn", 16000)


@pytest.mark.parametrize("clip_id", sorted(CUTS))
async def test_smart_turn_complete_sentence_scores_high(
    engine: SmartTurn, clips: dict[str, Clip], clip_id: str
) -> None:
    audio = _read(clips[clip_id])
    assert await engine.end_of_turn(audio) > 0.5


@pytest.mark.parametrize("clip_id", sorted(CUTS))
async def test_smart_turn_sentence_cut_mid_thought_scores_low(
    engine: SmartTurn, clips: dict[str, Clip], clip_id: str
) -> None:
    audio = _read(clips[clip_id])
    cut = Frame(audio.samples[: round(CUTS[clip_id] * audio.sample_rate)], audio.sample_rate)
    assert await engine.end_of_turn(_then_silence(cut, ASK_AFTER_MS)) < 0.5


async def test_smart_turn_resamples_other_rates(engine: SmartTurn, clips: dict[str, Clip]) -> None:
    audio = _read(clips["en_sb_birch_canoe"])
    cut = Frame(audio.samples[: round(CUTS["en_sb_birch_canoe"] * 16000)], 16000)
    assert await engine.end_of_turn(resample(audio, 24000)) > 0.5
    assert await engine.end_of_turn(resample(_then_silence(cut, ASK_AFTER_MS), 8000)) < 0.5


@pytest.mark.parametrize("rate", [0, 4000, 96000])
async def test_smart_turn_refuses_a_wrong_sample_rate(engine: SmartTurn, rate: int) -> None:
    with pytest.raises(BadAudioError, match=f"got {rate} Hz"):
        await engine.end_of_turn(Frame(np.zeros(1600, np.int16), rate))


async def test_smart_turn_refuses_empty_audio(engine: SmartTurn) -> None:
    with pytest.raises(BadAudioError, match="no audio"):
        await engine.end_of_turn(Frame(np.zeros(0, np.int16), 16000))


def test_smart_turn_features_pad_at_the_start(clips: dict[str, Clip]) -> None:
    audio = _read(clips["en_sb_culprit"])  # 2.07 s: 5.9 s of padding before it
    f = features(int16_to_float32(audio.samples))
    assert f.shape == (80, 800) and f.dtype == np.float32
    pad_frames = round((8.0 - audio.duration_s) * 100) - 2  # less the frame straddling the edge
    # Every padding frame is the same frame (normalised zeros); the speech lies at the end.
    np.testing.assert_allclose(f[:, :pad_frames], np.repeat(f[:, :1], pad_frames, axis=1))
    assert f[:, -150:].std() > 5 * f[:, :pad_frames].std()


def test_smart_turn_features_keep_the_last_8_s(clips: dict[str, Clip]) -> None:
    audio = int16_to_float32(_read(clips["en_jfk_wav"]).samples)  # 11 s
    np.testing.assert_array_equal(features(audio), features(audio[-128000:]))


def test_smart_turn_features_match_whisper_extractor(clips: dict[str, Clip]) -> None:
    transformers = pytest.importorskip("transformers")
    audio = int16_to_float32(_read(clips["en_sb_birch_canoe"]).samples)
    padded = np.pad(audio, (128000 - len(audio), 0))  # how the model was fed in training
    extractor = transformers.WhisperFeatureExtractor(chunk_length=8)
    expected = extractor(
        padded, sampling_rate=16000, return_tensors="np", do_normalize=True
    ).input_features[0]
    np.testing.assert_allclose(features(audio), expected, atol=1e-4)


def test_smart_turn_corrupted_model_fails_its_hash(tmp_path: Path) -> None:
    damaged = tmp_path / "smart-turn.onnx"
    data = bytearray(MODEL_PATH.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(EngineUnavailableError, match="fails its SHA-256 check") as info:
        load_model(damaged, sha256=MODEL_SHA256)
    assert MODEL_SHA256 in info.value.message and str(damaged) in info.value.message


def test_smart_turn_vendored_model_passes_its_hash() -> None:
    session = load_model(MODEL_PATH, sha256=MODEL_SHA256)
    assert [i.name for i in session.get_inputs()] == ["input_features"]


def test_smart_turn_given_model_path_is_trusted(tmp_path: Path) -> None:
    copy = tmp_path / "my-turn-model.onnx"
    shutil.copyfile(MODEL_PATH, copy)
    SmartTurn(model=copy).close()


def test_smart_turn_given_model_that_is_not_one_is_unavailable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx graph")
    with pytest.raises(EngineUnavailableError, match="could not be loaded"):
        SmartTurn(model=junk)
    with pytest.raises(EngineUnavailableError, match="cannot be read"):
        load_model(tmp_path / "missing.onnx", sha256=MODEL_SHA256)


def test_smart_turn_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        SmartTurn(workers=0)
