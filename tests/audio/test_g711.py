"""G.711 codecs: bit-exact with CPython's audioop, and sane on their own where it is gone."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from parley.audio.frames import PCM16
from parley.audio.g711 import G711, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)

# (sample, mu-law code, A-law code), taken from Python 3.11's audioop at width 2.
ENCODE_POINTS = [
    (0, 0xFF, 0xD5),
    (1, 0xFF, 0xD5),
    (-1, 0x7E, 0x55),
    (8, 0xFE, 0xD5),
    (-8, 0x7E, 0x55),
    (16, 0xFD, 0xD4),
    (-16, 0x7D, 0x55),
    (100, 0xF2, 0xD3),
    (-100, 0x72, 0x53),
    (1000, 0xCE, 0xFA),
    (-1000, 0x4E, 0x7A),
    (8159, 0x9F, 0x8A),
    (-8159, 0x1F, 0x0A),
    (32767, 0x80, 0xAA),
    (-32768, 0x00, 0x2A),
]
# (code, mu-law sample, A-law sample), from the same source.
DECODE_POINTS = [
    (0x00, -32124, -5504),
    (0x2A, -5372, -32256),
    (0x55, -716, -8),
    (0x7F, 0, -848),
    (0x80, 32124, 5504),
    (0xD5, 716, 8),
    (0xFF, 0, 848),
]


def _audioop() -> ModuleType:
    # audioop warns on import (3.11-3.12) and is gone from 3.13.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module: ModuleType = pytest.importorskip("audioop")
    return module


def _le(samples: PCM16) -> bytes:
    return samples.astype("<i2").tobytes()


def test_ulaw_encode_bit_exact_with_audioop_for_every_int16() -> None:
    audioop = _audioop()
    assert ulaw_encode(ALL_INT16).tobytes() == audioop.lin2ulaw(_le(ALL_INT16), 2)


def test_alaw_encode_bit_exact_with_audioop_for_every_int16() -> None:
    audioop = _audioop()
    assert alaw_encode(ALL_INT16).tobytes() == audioop.lin2alaw(_le(ALL_INT16), 2)


def test_ulaw_decode_bit_exact_with_audioop_for_every_code() -> None:
    audioop = _audioop()
    assert _le(ulaw_decode(ALL_CODES)) == audioop.ulaw2lin(ALL_CODES.tobytes(), 2)


def test_alaw_decode_bit_exact_with_audioop_for_every_code() -> None:
    audioop = _audioop()
    assert _le(alaw_decode(ALL_CODES)) == audioop.alaw2lin(ALL_CODES.tobytes(), 2)


@pytest.mark.parametrize(("sample", "ulaw", "alaw"), ENCODE_POINTS)
def test_g711_encode_matches_reference_points(sample: int, ulaw: int, alaw: int) -> None:
    pcm = np.array([sample], np.int16)
    assert ulaw_encode(pcm)[0] == ulaw
    assert alaw_encode(pcm)[0] == alaw


@pytest.mark.parametrize(("code", "ulaw", "alaw"), DECODE_POINTS)
def test_g711_decode_matches_reference_points(code: int, ulaw: int, alaw: int) -> None:
    assert ulaw_decode(bytes([code]))[0] == ulaw
    assert alaw_decode(bytes([code]))[0] == alaw


def test_ulaw_reencode_gives_same_code_except_negative_zero() -> None:
    # 0x7F and 0xFF both decode to 0, which encodes as 0xFF.
    again = ulaw_encode(ulaw_decode(ALL_CODES))
    assert np.flatnonzero(again != ALL_CODES).tolist() == [0x7F]


def test_alaw_reencode_gives_same_code() -> None:
    assert np.array_equal(alaw_encode(alaw_decode(ALL_CODES)), ALL_CODES)


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_g711_round_trip_keeps_telephone_quality(
    encode: Callable[[PCM16], G711], decode: Callable[[bytes | G711], PCM16]
) -> None:
    t = np.arange(8000) / 8000
    pcm = (16000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = decode(encode(pcm))
    assert out.dtype == np.int16 and out.shape == pcm.shape
    noise = out.astype(np.float64) - pcm
    snr_db = 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2) / np.sum(noise**2))
    assert snr_db > 35  # G.711 gives about 38 dB on a loud tone


def test_g711_decode_accepts_bytes_and_uint8_arrays_alike() -> None:
    codes = bytes(range(256))
    assert np.array_equal(ulaw_decode(codes), ulaw_decode(np.frombuffer(codes, np.uint8)))
    assert np.array_equal(alaw_decode(codes), alaw_decode(np.frombuffer(codes, np.uint8)))


def test_g711_decode_rejects_non_uint8_arrays() -> None:
    with pytest.raises(TypeError, match="uint8"):
        ulaw_decode(np.zeros(4, np.int16))


def test_g711_encode_empty_gives_empty() -> None:
    assert ulaw_encode(np.zeros(0, np.int16)).size == 0
    assert alaw_decode(b"").size == 0
