from __future__ import annotations

import contextlib
import io
import struct
import threading
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

from parley.audio import containers
from parley.audio.containers import (
    CONTAINER_FORMATS,
    SPEECH_FORMATS,
    decode_upload,
    encode_container,
    open_encoder,
    open_upload,
    sniff,
)
from parley.audio.files import encode_audio
from parley.audio.frames import Frame
from parley.errors import BadAudioError, PayloadTooLargeError


def chirp(seconds: float = 1.0, rate: int = 16000) -> Frame:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t)
    return Frame((wave * 32767).astype(np.int16), rate)


def stream_through(fmt: str, frame: Frame, chunk: int = 2400) -> tuple[list[bytes], bytes]:
    """``frame`` through a streaming encoder: the chunks written, and the close() tail."""
    encoder = open_encoder(fmt, frame.sample_rate)
    chunks = [
        encoder.write(Frame(frame.samples[i : i + chunk], frame.sample_rate))
        for i in range(0, len(frame), chunk)
    ]
    return chunks, encoder.close()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x00", "mp3"),
        (b"\xff\xf1\x50\x80", "aac"),
        (b"\x00\x00\x00\x1cftypM4A ", "mp4"),
        (b"\x1a\x45\xdf\xa3\x9f", "webm"),
        (b"#EXTM3U\n", None),
        (b"", None),
    ],
)
def test_sniff_names_containers_by_magic(head: bytes, kind: str | None) -> None:
    assert sniff(head) == kind


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus"])
def test_decode_upload_reads_libsndfile_formats(fmt: str) -> None:
    source = chirp()
    frame = decode_upload(encode_audio(source, fmt))
    assert abs(frame.duration_s - source.duration_s) < 0.1
    assert np.abs(frame.samples.astype(np.int32)).max() > 5000


@pytest.mark.parametrize("fmt", CONTAINER_FORMATS)
def test_decode_upload_reads_pyav_containers(fmt: str) -> None:
    source = chirp()
    data = encode_container(source, fmt)
    frame = decode_upload(data, name=f"clip.{fmt}")
    assert abs(frame.duration_s - source.duration_s) < 0.15
    assert np.abs(frame.samples.astype(np.int32)).max() > 5000


@pytest.mark.parametrize(
    ("fmt", "demuxer", "codec"),
    [
        ("aac", "aac", "aac"),
        ("m4a", "mov,mp4,m4a,3gp,3g2,mj2", "aac"),
        ("webm", "matroska,webm", "opus"),
    ],
)
def test_encode_container_writes_what_it_names(fmt: str, demuxer: str, codec: str) -> None:
    with av.open(io.BytesIO(encode_container(chirp(), fmt))) as container:
        assert container.format.name == demuxer
        assert container.streams.audio[0].codec_context.name == codec


def test_decode_upload_downmixes_stereo_and_clips_float() -> None:
    rate = 16000
    left = np.full(rate // 4, 1.5, np.float32)  # out of range: must clip, not wrap
    right = np.full(rate // 4, 1.5, np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), rate, format="WAV", subtype="FLOAT")
    frame = decode_upload(buf.getvalue())
    assert frame.sample_rate == rate
    assert (frame.samples == 32767).all()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"this is plainly not audio at all", "expected wav"),
        (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\nfile:///etc/passwd\n", "expected wav"),
        (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", "corrupt"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 64, "corrupt webm"),
        (b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 64, "corrupt mp4"),
    ],
)
def test_decode_upload_refuses_what_is_not_audio(data: bytes, words: str) -> None:
    with pytest.raises(BadAudioError, match=words) as info:
        decode_upload(data, name="upload.bin")
    assert "upload.bin" in info.value.message
    assert "\n" not in info.value.message


def test_decode_upload_refuses_truncated_containers() -> None:
    data = encode_container(chirp(), "webm")
    with pytest.raises(BadAudioError):
        decode_upload(data[:40])


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "webm", "m4a"])
def test_decode_upload_stops_at_the_duration_limit(fmt: str) -> None:
    source = chirp(3.0)
    data = encode_container(source, fmt) if fmt in CONTAINER_FORMATS else encode_audio(source, fmt)
    with pytest.raises(PayloadTooLargeError, match=r"the limit (is|of) 1 s") as info:
        decode_upload(data, name="clip", max_duration_s=1.0)
    assert info.value.status == 413 and info.value.param == "file"
    assert info.value.code == "audio_too_long"
    assert info.value.message.startswith("clip is ")
    assert decode_upload(data, max_duration_s=5.0).duration_s > 2.5


def silent_flac(seconds: float, rate: int = 16000) -> bytes:
    """A FLAC of silence, written block by block (a long one never sits in memory whole)."""
    buf = io.BytesIO()
    block = np.zeros(rate * 10, np.int16)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as snd:
        for start in range(0, int(seconds * rate), len(block)):
            snd.write(block[: int(seconds * rate) - start])
    return buf.getvalue()


def without_declared_length(flac: bytes) -> bytes:
    """``flac`` with STREAMINFO's total samples (its low 36 bits at bytes 21-25) set to 0,
    "unknown": a file that hides its length until decoded."""
    out = bytearray(flac)
    out[21] &= 0xF0
    out[22:26] = bytes(4)
    return bytes(out)


def test_open_upload_refuses_a_declared_length_at_once() -> None:
    flac = silent_flac(24 * 60)
    assert len(flac) < 200_000  # 24 minutes of silence: a tiny upload
    with pytest.raises(PayloadTooLargeError, match="is 24 min long; the limit is 10 min"):
        open_upload(flac, name="bomb.flac", max_duration_s=600)


def test_open_upload_stops_a_hidden_length_while_decoding() -> None:
    flac = without_declared_length(silent_flac(30))
    with sf.SoundFile(io.BytesIO(flac)) as snd:
        assert snd.frames <= 0 or snd.frames > 30 * 16000  # the header no longer says
    upload = open_upload(flac, name="bomb.flac", max_duration_s=5)
    with pytest.raises(PayloadTooLargeError, match="longer than the limit of 5 s"):
        for _ in upload:
            pass
    assert upload.samples <= 5 * 16000 + 65536  # stopped within a block of the limit
    assert list(upload) == []  # and closed


def test_open_upload_decodes_a_long_recording_in_bounded_memory() -> None:
    seconds = 20 * 60
    flac = silent_flac(seconds)
    tracemalloc.start()
    try:
        with contextlib.closing(open_upload(flac, name="long.flac")) as upload:
            blocks = sum(1 for _ in upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upload.samples == seconds * 16000 and blocks > 100
    int16_whole = seconds * 16000 * 2  # 38 MB; float64 would be 154 MB
    assert peak < int16_whole / 10, f"peak {peak / 2**20:.1f} MiB"


def test_upload_close_waits_for_a_block_being_decoded() -> None:
    upload = open_upload(silent_flac(60), name="a.flac")
    seen: list[int] = []

    def read() -> None:
        seen.extend(len(frame) for frame in upload)

    reader = threading.Thread(target=read)
    reader.start()
    upload.close()  # from another thread, mid-stream: no crash, iteration just ends
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert sum(seen) <= 60 * 16000


def test_decode_upload_without_pyav_still_reads_wav(monkeypatch: pytest.MonkeyPatch) -> None:
    webm = encode_container(chirp(), "webm")
    monkeypatch.setattr(containers, "av_available", lambda: False)
    assert decode_upload(encode_audio(chirp(), "wav")).duration_s == pytest.approx(1.0)
    with pytest.raises(BadAudioError, match="PyAV"):
        decode_upload(webm)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "wav", "pcm"])
def test_open_encoder_streams_before_the_end(fmt: str) -> None:
    source = chirp(2.0, 24000)
    chunks, tail = stream_through(fmt, source)
    sent = [c for c in chunks if c]
    assert len(sent) >= len(chunks) // 2, "most chunks should produce bytes at once"
    data = b"".join(chunks) + tail
    if fmt == "pcm":
        assert len(data) == 2 * len(source)
        return
    frame = decode_upload(data)
    assert abs(frame.duration_s - source.duration_s) < 0.15


def test_open_encoder_buffers_flac_for_a_true_header() -> None:
    source = chirp(1.0, 24000)
    chunks, tail = stream_through("flac", source)
    assert not any(chunks)
    info = sf.info(io.BytesIO(tail))
    assert info.frames == len(source) and info.samplerate == 24000


def test_open_encoder_wav_declares_unknown_sizes() -> None:
    source = chirp(0.5, 24000)
    chunks, tail = stream_through("wav", source)
    data = b"".join(chunks) + tail
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and np.array_equal(samples, source.samples)


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_open_encoder_with_no_audio_still_gives_a_file(fmt: str) -> None:
    encoder = open_encoder(fmt, 24000)
    data = encoder.close()
    assert encoder.close() == b""
    if fmt == "pcm":
        assert data == b""
    else:
        assert sniff(data) is not None


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_open_encoder_abort_discards_the_stream(fmt: str) -> None:
    encoder = open_encoder(fmt, 24000)
    encoder.write(chirp(0.3, 24000))
    encoder.abort()
    assert encoder.close() == b""


def test_open_encoder_refuses_unknown_formats_and_rates() -> None:
    with pytest.raises(BadAudioError, match="supported: mp3, opus, aac, flac, wav, pcm"):
        open_encoder("ogg-vorbis", 24000)
    encoder = open_encoder("pcm", 24000)
    with pytest.raises(ValueError, match="16000 Hz"):
        encoder.write(chirp(0.1, 16000))


def test_open_encoder_without_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "av_available", lambda: False)
    with pytest.raises(BadAudioError, match="needs PyAV") as info:
        open_encoder("aac", 24000)
    assert info.value.param == "response_format"
    assert "mp3, opus, flac, wav, pcm" in info.value.message
    # mp3 and opus fall back to libsndfile, whole at the end.
    for fmt in ("mp3", "opus"):
        chunks, tail = stream_through(fmt, chirp(1.0, 24000))
        assert not any(chunks)
        assert abs(decode_upload(tail).duration_s - 1.0) < 0.1
