"""Silero VAD on real audio: silence, a real speech clip, buffering, pooling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parley.audio.frames import Frame
from parley.engines.base import VAD, VADStream
from parley.engines.silero import SileroVAD
from parley.errors import BadAudioError

SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


@pytest.fixture(scope="module")
def jfk() -> Frame:
    samples, rate = sf.read(SPEECH / "en_jfk_wav.wav", dtype="int16")
    return Frame(samples, rate)


def _chunks(frame: Frame, size: int) -> Iterator[Frame]:
    for i in range(0, len(frame), size):
        yield Frame(frame.samples[i : i + size], frame.sample_rate)


async def _score(stream: VADStream, frame: Frame, size: int) -> list[float]:
    out: list[float] = []
    for chunk in _chunks(frame, size):
        out += await stream.probabilities(chunk)
    return out


def test_silero_satisfies_protocols(vad: SileroVAD) -> None:
    assert isinstance(vad, VAD)
    stream = vad.open_stream()
    assert isinstance(stream, VADStream)
    assert stream.window_samples == 512
    assert vad.sample_rate == 16000


async def test_silero_silence_scores_low(vad: SileroVAD) -> None:
    stream = vad.open_stream()
    probs = await stream.probabilities(Frame.silence(1000, 16000))
    assert len(probs) == 16000 // 512
    assert max(probs) < 0.1


async def test_silero_speech_scores_high(vad: SileroVAD, jfk: Frame) -> None:
    probs = await _score(vad.open_stream(), jfk, 320)
    assert len(probs) == len(jfk) // 512
    assert np.mean(np.array(probs) > 0.5) > 0.5


async def test_silero_leftover_buffering_matches_whole_windows(vad: SileroVAD, jfk: Frame) -> None:
    clip = Frame(jfk.samples[: 16000 * 3], 16000)
    windows = await _score(vad.open_stream(), clip, 512)
    odd = await _score(vad.open_stream(), clip, 333)
    assert odd == pytest.approx(windows, abs=1e-6)


async def test_silero_large_frame_matches_small_frames(vad: SileroVAD, jfk: Frame) -> None:
    # A whole clip in one frame is scored in a worker thread; the result must not change.
    whole = await vad.open_stream().probabilities(jfk)
    small = await _score(vad.open_stream(), jfk, 512)
    assert whole == pytest.approx(small, abs=1e-6)


async def test_silero_streams_keep_separate_state(vad: SileroVAD, jfk: Frame) -> None:
    alone = await _score(vad.open_stream(), jfk, 512)
    a, b = vad.open_stream(), vad.open_stream()
    interleaved: list[float] = []
    for chunk in _chunks(jfk, 512):
        interleaved += await a.probabilities(chunk)
        await b.probabilities(Frame.silence(32, 16000))
    assert interleaved == pytest.approx(alone, abs=1e-6)


async def test_silero_reset_forgets_leftover_and_state(vad: SileroVAD, jfk: Frame) -> None:
    stream = vad.open_stream()
    first = await _score(stream, jfk, 700)
    stream.reset()
    again = await _score(stream, jfk, 700)
    assert again == pytest.approx(first, abs=1e-6)


async def test_silero_wrong_rate_raises_bad_audio(vad: SileroVAD) -> None:
    with pytest.raises(BadAudioError):
        await vad.open_stream().probabilities(Frame.silence(100, 8000))


async def test_silero_closed_stream_returns_model_to_pool() -> None:
    vad = SileroVAD(warm=1)
    assert vad.idle == 1
    stream = vad.open_stream()
    assert vad.idle == 1  # opening takes no model: the first audio does
    await stream.probabilities(Frame(np.zeros(512, np.int16), 16000))
    assert vad.idle == 0
    stream.close()
    assert vad.idle == 1
    stream.close()  # idempotent
    assert vad.idle == 1


async def test_silero_collected_stream_returns_model_to_pool() -> None:
    vad = SileroVAD(warm=1)
    stream = vad.open_stream()
    await stream.probabilities(Frame(np.zeros(512, np.int16), 16000))
    assert vad.idle == 0
    del stream
    assert vad.idle == 1


def test_silero_opening_streams_loads_no_model() -> None:
    # A storm of connections that send no audio must cost no model loads (~40 ms each on
    # the event loop before) and no memory.
    vad = SileroVAD(warm=1, max_idle=4)
    streams = [vad.open_stream() for _ in range(200)]
    assert vad.idle == 1
    for stream in streams:
        stream.close()
    assert vad.idle == 1
