"""Audio files: every output format round-trips, real speech reads, and bad files fail clearly."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parley.audio.files import (
    OUTPUT_FORMATS,
    decode_audio,
    encode_audio,
    read_audio,
    write_audio,
)
from parley.audio.frames import PCM16, Frame
from parley.errors import BadAudioError

# The repo and shared/ sit side by side: <root>/main/tests/audio/ and <root>/shared/speech/.
SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"
JFK = SPEECH / "en_jfk_wav.wav"

LOSSLESS = ["wav", "flac"]
LOSSY = ["ogg", "opus", "mp3"]


def _tone(rate: int = 24000, seconds: float = 0.5, freq: float = 440.0) -> Frame:
    t = np.arange(int(rate * seconds)) / rate
    return Frame((12000 * np.sin(2 * np.pi * freq * t)).astype(np.int16), rate)


def _peak_hz(samples: PCM16, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture
def jfk() -> Path:
    if not JFK.is_file():
        pytest.skip(f"shared speech clips not found at {SPEECH}")
    return JFK


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_write_audio_lossless_round_trips_exactly(tmp_path: Path, fmt: str) -> None:
    frame = _tone()
    path = tmp_path / f"tone.{fmt}"
    write_audio(path, frame)
    back = read_audio(path)
    assert back.sample_rate == frame.sample_rate
    assert np.array_equal(back.samples, frame.samples)


@pytest.mark.parametrize("fmt", LOSSY)
def test_write_audio_lossy_round_trips_the_tone(tmp_path: Path, fmt: str) -> None:
    frame = _tone()
    path = tmp_path / f"tone.{fmt}"
    write_audio(path, frame)
    assert sf.info(str(path)).format == ("MP3" if fmt == "mp3" else "OGG")
    back = read_audio(path)
    assert back.sample_rate == frame.sample_rate
    assert abs(len(back) - len(frame)) <= 0.05 * len(frame)
    assert abs(_peak_hz(back.samples, back.sample_rate) - 440) <= 5


def test_write_audio_format_argument_overrides_suffix(tmp_path: Path) -> None:
    path = tmp_path / "tone.bin"
    write_audio(path, _tone(), format="flac")
    assert sf.info(str(path)).format == "FLAC"


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_encode_audio_decodes_back_in_memory(fmt: str) -> None:
    frame = _tone(16000)
    back = decode_audio(encode_audio(frame, fmt))
    assert back.sample_rate == 16000
    assert abs(len(back) - len(frame)) <= 0.05 * len(frame)


@pytest.mark.parametrize(
    ("fmt", "rate", "expected"),
    [("mp3", 20000, 22050), ("opus", 20000, 24000), ("opus", 96000, 48000), ("wav", 20000, 20000)],
)
def test_encode_audio_resamples_where_codec_needs_it(fmt: str, rate: int, expected: int) -> None:
    back = decode_audio(encode_audio(_tone(rate), fmt))
    assert back.sample_rate == expected


def test_encode_audio_format_is_case_and_dot_insensitive() -> None:
    assert decode_audio(encode_audio(_tone(), ".WAV")).sample_rate == 24000


@pytest.mark.parametrize("fmt", ["aac", "pcm", ""])
def test_encode_audio_unknown_format_lists_supported(fmt: str) -> None:
    with pytest.raises(BadAudioError, match="unsupported output audio format") as info:
        encode_audio(_tone(), fmt)
    assert "wav, flac, ogg, opus, mp3" in info.value.message


def test_write_audio_without_suffix_or_format_is_bad_audio(tmp_path: Path) -> None:
    with pytest.raises(BadAudioError, match=r"\(none given\)"):
        write_audio(tmp_path / "noext", _tone())


def test_read_audio_real_speech_clip(jfk: Path) -> None:
    frame = read_audio(jfk)
    expected, rate = sf.read(str(jfk), dtype="int16")
    assert frame.sample_rate == rate == 16000
    assert frame.duration_s == pytest.approx(11.0)
    assert np.array_equal(frame.samples, expected)


def test_read_audio_resamples_when_asked(jfk: Path) -> None:
    frame = read_audio(jfk, sample_rate=24000)
    assert frame.sample_rate == 24000
    assert abs(len(frame) - 11 * 24000) <= 1


def test_read_audio_mixes_channels_down_to_mono(tmp_path: Path) -> None:
    left = np.full(1000, 1000, np.int16)
    right = np.full(1000, -3000, np.int16)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    frame = read_audio(path)
    assert frame.samples.dtype == np.int16
    assert frame.samples.tolist() == [-1000] * 1000


def test_read_audio_clips_float_sources_and_zeroes_nan(tmp_path: Path) -> None:
    path = tmp_path / "float.wav"
    data = np.array([0.5, 1.5, -1.5, np.nan, -1.0], np.float32)
    sf.write(str(path), data, 8000, subtype="FLOAT")
    assert read_audio(path).samples.tolist() == [16384, 32767, -32768, 0, -32768]


def test_read_audio_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadAudioError, match=r"audio file not found: .*nope\.wav"):
        read_audio(tmp_path / "nope.wav")


def test_read_audio_directory(tmp_path: Path) -> None:
    with pytest.raises(BadAudioError, match="is a directory"):
        read_audio(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_read_audio_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    write_audio(path, _tone())
    path.chmod(0)
    try:
        with pytest.raises(BadAudioError, match="no permission to read audio file"):
            read_audio(path)
    finally:
        path.chmod(0o600)


def test_read_audio_permission_error_is_bad_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Works as root too, where chmod cannot lock a file.
    path = tmp_path / "locked.wav"
    write_audio(path, _tone())

    def deny(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(BadAudioError, match=r"no permission to read audio file .*locked\.wav"):
        read_audio(path)


def test_read_audio_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(BadAudioError, match=r"empty\.wav is empty \(0 bytes\)"):
        read_audio(path)


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not audio\n" * 20, b"RIFF" + bytes(200)],
    ids=["text", "zeroed-riff"],
)
def test_read_audio_not_audio(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.mp3"
    path.write_bytes(content)
    with pytest.raises(BadAudioError, match=r"fake\.mp3: unsupported or corrupt audio") as info:
        read_audio(path)
    assert "expected wav, flac, ogg, opus or mp3" in info.value.message
    assert "<_io" not in info.value.message  # no soundfile object reprs


def test_read_audio_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    path.write_bytes(encode_audio(_tone(), "wav")[:20])
    with pytest.raises(BadAudioError, match=r"cut\.wav: unsupported or corrupt audio"):
        read_audio(path)


def test_read_audio_zero_samples(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    with pytest.raises(BadAudioError, match=r"silent\.wav holds no audio samples"):
        read_audio(path)


def test_decode_audio_bad_bytes_name_the_source() -> None:
    with pytest.raises(BadAudioError, match=r"upload\.bin: unsupported or corrupt audio"):
        decode_audio(b"\x00\x01garbage" * 50, name="upload.bin")
    with pytest.raises(BadAudioError, match="audio data is empty"):
        decode_audio(b"")


@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_read_audio_refuses_absurd_sample_rates(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "odd.wav"
    path.write_bytes(encode_audio(_tone(8000), "wav"))
    data = bytearray(path.read_bytes())
    at = data.index(b"fmt ") + 12  # the fmt chunk's sample rate
    data[at : at + 4] = rate.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(
        BadAudioError, match=rf"odd\.wav: a sample rate of {rate} Hz is out of range"
    ):
        read_audio(path)


def test_read_audio_holds_one_block_as_float(tmp_path: Path) -> None:
    seconds, rate = 120, 16000
    path = tmp_path / "stereo.flac"
    with sf.SoundFile(str(path), "w", rate, 2, format="FLAC", subtype="PCM_16") as snd:
        for _ in range(seconds):
            snd.write(np.full((rate, 2), 100, np.int16))
    tracemalloc.start()
    try:
        frame = read_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    int16_mono = seconds * rate * 2
    assert len(frame) == seconds * rate and (frame.samples == 100).all()
    # The result and its blocks before they are joined, plus one block: never float64 of it
    # all (31 MB of stereo float64 here, against 3.8 MB of the mono int16 it ends as).
    assert peak < 2 * int16_mono + 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
