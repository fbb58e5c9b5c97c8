"""Realtime wire formats: names in both API dialects, wire bytes <-> frames, strict base64."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from parley.audio.formats import (
    G711_ALAW,
    G711_ULAW,
    PCM16_24K,
    Encoding,
    WireFormat,
    b64decode_audio,
    b64encode_audio,
    decode_wire,
    encode_wire,
    parse_wire_format,
)
from parley.audio.frames import Frame
from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from parley.errors import BadAudioError


def _tone(rate: int, seconds: float = 0.1) -> Frame:
    t = np.arange(int(rate * seconds)) / rate
    return Frame((10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), rate)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("audio/pcm", PCM16_24K),
        ("pcm16", PCM16_24K),
        ("audio/pcmu", G711_ULAW),
        ("g711_ulaw", G711_ULAW),
        ("audio/pcma", G711_ALAW),
        ("g711_alaw", G711_ALAW),
    ],
)
def test_parse_wire_format_maps_ga_and_beta_names_alike(name: str, expected: WireFormat) -> None:
    assert parse_wire_format(name) == expected


def test_parse_wire_format_takes_pcm_rate() -> None:
    fmt = parse_wire_format("audio/pcm", 16000)
    assert fmt == WireFormat(Encoding.PCM16, 16000)
    assert (fmt.ga_type, fmt.beta_name, fmt.bytes_per_sample) == ("audio/pcm", "pcm16", 2)


def test_parse_wire_format_accepts_g711_at_8000() -> None:
    fmt = parse_wire_format("audio/pcmu", 8000)
    assert fmt == G711_ULAW
    assert (fmt.ga_type, fmt.beta_name, fmt.bytes_per_sample) == ("audio/pcmu", "g711_ulaw", 1)


def test_parse_wire_format_unknown_name_is_bad_audio() -> None:
    with pytest.raises(BadAudioError, match="unknown audio format 'audio/opus'") as info:
        parse_wire_format("audio/opus", param="session.audio.input.format")
    assert info.value.code == "invalid_audio"
    assert info.value.param == "session.audio.input.format"
    assert "audio/pcm" in info.value.message and "g711_ulaw" in info.value.message


def test_parse_wire_format_g711_at_other_rate_is_bad_audio() -> None:
    with pytest.raises(BadAudioError, match="8000 Hz only") as info:
        parse_wire_format("audio/pcma", 16000)
    assert info.value.param == "rate"


def test_wire_format_rejects_non_positive_rate() -> None:
    with pytest.raises(BadAudioError, match="positive"):
        WireFormat(Encoding.PCM16, 0)


def test_decode_wire_pcm16_reads_little_endian_at_format_rate() -> None:
    frame = decode_wire(b"\x01\x00\x00\x80", parse_wire_format("audio/pcm", 16000))
    assert frame.samples.tolist() == [1, -32768]
    assert frame.sample_rate == 16000


def test_decode_wire_pcm16_odd_bytes_is_bad_audio() -> None:
    with pytest.raises(BadAudioError, match="odd 3 bytes"):
        decode_wire(b"\x00\x01\x02", PCM16_24K)


def test_decode_wire_g711_uses_the_codec_at_8k() -> None:
    codes = bytes(range(256))
    ulaw = decode_wire(codes, G711_ULAW)
    alaw = decode_wire(codes, G711_ALAW)
    assert ulaw.sample_rate == alaw.sample_rate == 8000
    assert np.array_equal(ulaw.samples, ulaw_decode(codes))
    assert np.array_equal(alaw.samples, alaw_decode(codes))


def test_decode_wire_empty_is_an_empty_frame() -> None:
    for fmt in (PCM16_24K, G711_ULAW, G711_ALAW):
        assert len(decode_wire(b"", fmt)) == 0


def test_encode_wire_pcm16_round_trips_exactly() -> None:
    frame = _tone(24000)
    data = encode_wire(frame, PCM16_24K)
    assert len(data) == 2 * len(frame)
    assert np.array_equal(decode_wire(data, PCM16_24K).samples, frame.samples)


def test_encode_wire_g711_at_8k_is_the_codec() -> None:
    frame = _tone(8000)
    assert encode_wire(frame, G711_ULAW) == ulaw_encode(frame.samples).tobytes()
    assert encode_wire(frame, G711_ALAW) == alaw_encode(frame.samples).tobytes()


@pytest.mark.parametrize("fmt", [G711_ULAW, G711_ALAW, WireFormat(Encoding.PCM16, 16000)])
def test_encode_wire_resamples_to_the_format_rate(fmt: WireFormat) -> None:
    frame = _tone(24000, seconds=0.5)
    data = encode_wire(frame, fmt)
    expected = len(frame) * fmt.sample_rate // 24000
    assert abs(len(data) // fmt.bytes_per_sample - expected) <= 1
    decoded = decode_wire(data, fmt)
    assert decoded.sample_rate == fmt.sample_rate


def test_b64_audio_round_trips() -> None:
    data = bytes(range(256)) * 3
    text = b64encode_audio(data)
    assert text == base64.b64encode(data).decode()
    assert b64decode_audio(text) == data
    assert b64decode_audio("") == b""


@pytest.mark.parametrize(
    "text",
    ["abc", "!!!!", "AAAA\nAAAA", "AA AA", "AA-_", "é"],
    ids=["bad-padding", "bad-chars", "newline", "space", "urlsafe-alphabet", "non-ascii"],
)
def test_b64decode_audio_rejects_invalid_input(text: str) -> None:
    with pytest.raises(BadAudioError, match="invalid base64 audio") as info:
        b64decode_audio(text)
    assert info.value.param == "audio"
    assert "\n" not in info.value.message
