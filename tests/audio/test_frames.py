"""Frame: bytes in and out, durations, and the int16 <-> float32 conversions."""

from __future__ import annotations

import numpy as np

from parley.audio.frames import Frame, float32_to_int16, int16_to_float32


def test_frame_from_bytes_reads_little_endian_int16() -> None:
    frame = Frame.from_bytes(b"\x01\x00\xff\x7f\x00\x80", 24000)
    assert frame.samples.dtype == np.int16
    assert frame.samples.tolist() == [1, 32767, -32768]
    assert frame.sample_rate == 24000


def test_frame_to_bytes_round_trips() -> None:
    data = np.arange(-500, 500, dtype=np.int16).astype("<i2").tobytes()
    assert Frame.from_bytes(data, 16000).to_bytes() == data


def test_frame_durations_and_len() -> None:
    frame = Frame(np.zeros(480, np.int16), 24000)
    assert len(frame) == 480
    assert frame.duration_ms == 20.0
    assert frame.duration_s == 0.02


def test_frame_silence_has_the_asked_length() -> None:
    frame = Frame.silence(20, 8000)
    assert len(frame) == 160 and not frame.samples.any()
    assert len(Frame.silence(0, 8000)) == 0


def test_int16_to_float32_spans_minus_one_to_one() -> None:
    out = int16_to_float32(np.array([-32768, 0, 16384, 32767], np.int16))
    assert out.dtype == np.float32
    assert out.tolist() == [-1.0, 0.0, 0.5, np.float32(32767 / 32768)]


def test_float32_to_int16_clips_instead_of_wrapping() -> None:
    out = float32_to_int16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32))
    assert out.dtype == np.int16
    assert out.tolist() == [-32768, -32768, 0, 16384, 32767, 32767]


def test_int16_float32_round_trip_is_exact() -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(float32_to_int16(int16_to_float32(pcm)), pcm)
