"""G.711 mu-law and A-law (the ``audio/pcmu`` and ``audio/pcma`` wire formats), vectorised.

Bit-exact with CPython's ``audioop`` (``lin2ulaw``/``ulaw2lin``/``lin2alaw``/``alaw2lin`` at width
2), which was removed in Python 3.13: telephony peers and the tests compare against it. Every
code is a table lookup; the tables are built once at import from the Sun reference algorithm
that ``audioop`` uses (mu-law on the top 14 bits, A-law on the top 13 bits of each sample).

This module only maps samples to codes and back; it knows nothing of sample rates (G.711 is
8 kHz by definition, which :mod:`parley.audio.formats` enforces).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from parley.audio.frames import PCM16

__all__ = ["G711", "alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

G711 = npt.NDArray[np.uint8]

# Segment end points of the reference algorithm ("search" returns the first i with x <= end[i]).
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (the encode tables' index)."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> G711:
    pcm = _all_int16() >> 2  # audioop keeps the top 14 bits
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, magnitude, side="left").astype(np.int32)
    quant = (magnitude >> (seg + 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant) ^ mask
    return code.astype(np.uint8)


def _build_alaw_encode() -> G711:
    pcm = _all_int16() >> 3  # audioop keeps the top 13 bits
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_SEG_AEND, magnitude, side="left").astype(np.int32)
    quant = (magnitude >> np.maximum(seg, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant) ^ mask
    return code.astype(np.uint8)


def _build_ulaw_decode() -> PCM16:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((code & 0xF) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return np.where(code & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_decode() -> PCM16:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (code & 0x70) >> 4
    t = (code & 0xF) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(code & 0x80, t, -t).astype(np.int16)


_ULAW_ENCODE = _build_ulaw_encode()
_ALAW_ENCODE = _build_alaw_encode()
_ULAW_DECODE = _build_ulaw_decode()
_ALAW_DECODE = _build_alaw_decode()
for _table in (_ULAW_ENCODE, _ALAW_ENCODE, _ULAW_DECODE, _ALAW_DECODE):
    _table.flags.writeable = False


def _encode(table: G711, samples: PCM16) -> G711:
    index = np.asarray(samples, dtype=np.int16).view(np.uint16)
    return table[index]


def _decode(table: PCM16, codes: bytes | G711) -> PCM16:
    index = codes if isinstance(codes, np.ndarray) else np.frombuffer(codes, np.uint8)
    if index.dtype != np.uint8:
        raise TypeError(f"G.711 codes must be bytes or a uint8 array, got {index.dtype}")
    return table[index]


def ulaw_encode(samples: PCM16) -> G711:
    """int16 samples to mu-law codes, one byte per sample."""
    return _encode(_ULAW_ENCODE, samples)


def ulaw_decode(codes: bytes | G711) -> PCM16:
    """mu-law codes to int16 samples."""
    return _decode(_ULAW_DECODE, codes)


def alaw_encode(samples: PCM16) -> G711:
    """int16 samples to A-law codes, one byte per sample."""
    return _encode(_ALAW_ENCODE, samples)


def alaw_decode(codes: bytes | G711) -> PCM16:
    """A-law codes to int16 samples."""
    return _decode(_ALAW_DECODE, codes)
