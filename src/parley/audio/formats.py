"""The audio wire formats of the OpenAI Realtime API, and the base64 that carries them.

Realtime clients name formats two ways: the GA API sends ``{"type": "audio/pcm", "rate": 24000}``,
``audio/pcmu`` or ``audio/pcma``; the beta API sends ``pcm16``, ``g711_ulaw`` or ``g711_alaw``.
Both map to one :class:`WireFormat`, so nothing past the parser cares which dialect a client
speaks. This module turns wire bytes into :class:`Frame` and back; it does no I/O and keeps no
stream state. ``encode_wire`` resamples each call on its own, which is right for whole clips;
a stream should pass its chunks through one :class:`StreamResampler` first, so that no chunk edge
clicks, and hand ``encode_wire`` frames already at the format's rate.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

from parley.audio.frames import Frame
from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from parley.audio.resample import resample
from parley.errors import BadAudioError

__all__ = [
    "G711_ALAW",
    "G711_RATE",
    "G711_ULAW",
    "PCM16_24K",
    "PCM16_DEFAULT_RATE",
    "Encoding",
    "WireFormat",
    "b64decode_audio",
    "b64encode_audio",
    "decode_wire",
    "encode_wire",
    "parse_wire_format",
]

PCM16_DEFAULT_RATE = 24_000
G711_RATE = 8_000


class Encoding(StrEnum):
    """How samples are coded on the wire; the values are the beta API's names."""

    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"


_GA_TYPES = {
    Encoding.PCM16: "audio/pcm",
    Encoding.G711_ULAW: "audio/pcmu",
    Encoding.G711_ALAW: "audio/pcma",
}
_BY_NAME = {name: enc for enc, ga in _GA_TYPES.items() for name in (ga, enc.value)}


@dataclass(frozen=True, slots=True)
class WireFormat:
    """An encoding at a sample rate; G.711 is always 8 kHz."""

    encoding: Encoding
    sample_rate: int = PCM16_DEFAULT_RATE

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise BadAudioError(
                f"sample rate must be positive, got {self.sample_rate}", param="rate"
            )
        if self.encoding is not Encoding.PCM16 and self.sample_rate != G711_RATE:
            raise BadAudioError(
                f"{self.ga_type} is 8000 Hz only, got rate {self.sample_rate}", param="rate"
            )

    @property
    def ga_type(self) -> str:
        """The GA API's name: ``audio/pcm``, ``audio/pcmu`` or ``audio/pcma``."""
        return _GA_TYPES[self.encoding]

    @property
    def beta_name(self) -> str:
        """The beta API's name: ``pcm16``, ``g711_ulaw`` or ``g711_alaw``."""
        return self.encoding.value

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.PCM16 else 1


PCM16_24K = WireFormat(Encoding.PCM16, PCM16_DEFAULT_RATE)
G711_ULAW = WireFormat(Encoding.G711_ULAW, G711_RATE)
G711_ALAW = WireFormat(Encoding.G711_ALAW, G711_RATE)


def parse_wire_format(name: str, rate: int | None = None, *, param: str = "format") -> WireFormat:
    """A GA (``audio/pcm`` + rate) or beta (``pcm16``) format name to its :class:`WireFormat`.

    ``rate`` defaults to 24000 for PCM and must be 8000 (or absent) for G.711.
    """
    encoding = _BY_NAME.get(name)
    if encoding is None:
        known = ", ".join(_BY_NAME)
        raise BadAudioError(f"unknown audio format {name!r}; expected one of {known}", param=param)
    if rate is None:
        rate = PCM16_DEFAULT_RATE if encoding is Encoding.PCM16 else G711_RATE
    return WireFormat(encoding, rate)


def decode_wire(data: bytes, fmt: WireFormat) -> Frame:
    """Wire bytes in ``fmt`` to a frame at the format's rate."""
    match fmt.encoding:
        case Encoding.PCM16:
            if len(data) % 2:
                raise BadAudioError(
                    f"pcm16 audio must be whole 16-bit samples, got an odd {len(data)} bytes",
                    param="audio",
                )
            return Frame.from_bytes(data, fmt.sample_rate)
        case Encoding.G711_ULAW:
            return Frame(ulaw_decode(data), fmt.sample_rate)
        case Encoding.G711_ALAW:
            return Frame(alaw_decode(data), fmt.sample_rate)
        case _:
            assert_never(fmt.encoding)


def encode_wire(frame: Frame, fmt: WireFormat) -> bytes:
    """A frame to wire bytes in ``fmt``, resampled to the format's rate if it differs."""
    frame = resample(frame, fmt.sample_rate)
    match fmt.encoding:
        case Encoding.PCM16:
            return frame.to_bytes()
        case Encoding.G711_ULAW:
            return ulaw_encode(frame.samples).tobytes()
        case Encoding.G711_ALAW:
            return alaw_encode(frame.samples).tobytes()
        case _:
            assert_never(fmt.encoding)


def b64decode_audio(data: str, *, param: str = "audio") -> bytes:
    """Strict base64 (no whitespace, no stray characters, correct padding) to bytes."""
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise BadAudioError(f"invalid base64 audio: {exc}", param=param) from None


def b64encode_audio(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
