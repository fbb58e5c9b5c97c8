"""Resampling: lengths, streaming equals one-shot, and tones keep their pitch."""

from __future__ import annotations

import numpy as np
import pytest

from parley.audio.frames import PCM16, Frame
from parley.audio.resample import StreamResampler, resample

RATE_PAIRS = [
    (8000, 16000),
    (8000, 24000),
    (16000, 8000),
    (16000, 24000),
    (16000, 48000),
    (24000, 8000),
    (24000, 16000),
    (24000, 48000),
    (48000, 8000),
    (48000, 24000),
    (22050, 24000),
    (24000, 22050),
]


def _tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 12000) -> PCM16:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _peak_hz(samples: PCM16, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def _stream(samples: PCM16, in_rate: int, out_rate: int, chunk_sizes: list[int]) -> PCM16:
    resampler = StreamResampler(in_rate, out_rate)
    parts, start, i = [], 0, 0
    while start < len(samples):
        size = chunk_sizes[i % len(chunk_sizes)]
        parts.append(resampler.process(samples[start : start + size]))
        start, i = start + size, i + 1
    parts.append(resampler.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_resample_one_shot_length_matches_rate_ratio(in_rate: int, out_rate: int) -> None:
    samples = _tone(440, in_rate, seconds=0.73)
    out = resample(Frame(samples, in_rate), out_rate)
    assert out.sample_rate == out_rate
    assert out.samples.dtype == np.int16
    assert abs(len(out) - len(samples) * out_rate / in_rate) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_stream_resampler_chunked_matches_one_shot(in_rate: int, out_rate: int) -> None:
    samples = _tone(440, in_rate, seconds=0.73)
    # 20 ms chunks, and ragged ones that cut filter windows anywhere.
    for chunks in ([in_rate // 50], [1, 17, 333, 1000, 7]):
        streamed = _stream(samples, in_rate, out_rate, chunks)
        assert abs(len(streamed) - len(samples) * out_rate / in_rate) <= 3
        one_shot = resample(Frame(samples, in_rate), out_rate).samples
        n = min(len(streamed), len(one_shot))
        diff = np.abs(streamed[:n].astype(np.int32) - one_shot[:n])
        assert diff.max() <= 4  # a few LSB of rounding, no clicks at chunk edges


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_resample_keeps_a_tone_at_its_frequency(in_rate: int, out_rate: int) -> None:
    freq = 1000.0  # below every Nyquist in the table
    out = resample(Frame(_tone(freq, in_rate), in_rate), out_rate)
    assert abs(_peak_hz(out.samples, out_rate) - freq) <= 2


def test_resample_same_rate_returns_the_frame() -> None:
    frame = Frame(_tone(440, 16000, 0.1), 16000)
    assert resample(frame, 16000) is frame


def test_stream_resampler_same_rate_passes_through() -> None:
    samples = _tone(440, 16000, 0.1)
    resampler = StreamResampler(16000, 16000)
    assert np.array_equal(resampler.process(samples), samples)
    assert resampler.flush().size == 0


def test_stream_resampler_frame_rejects_wrong_rate() -> None:
    resampler = StreamResampler(16000, 24000)
    with pytest.raises(ValueError, match="8000 Hz"):
        resampler.frame(Frame(np.zeros(80, np.int16), 8000))


def test_stream_resampler_frame_tags_output_rate() -> None:
    out = StreamResampler(8000, 24000).frame(Frame(_tone(440, 8000, 0.1), 8000))
    assert out.sample_rate == 24000


@pytest.mark.parametrize(("in_rate", "out_rate"), [(0, 16000), (16000, -1)])
def test_stream_resampler_rejects_non_positive_rates(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(in_rate, out_rate)
