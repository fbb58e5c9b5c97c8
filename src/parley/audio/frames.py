"""Mono PCM frames and sample conversions.

A :class:`Frame` is the unit that flows through parley: mono int16 samples with their rate.
int16 is the wire format of every codec parley speaks and what the embedded engines consume, so
frames stay int16 inside and convert to float32 only where a model wants it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PCM16", "Float32", "Frame", "float32_to_int16", "int16_to_float32"]

PCM16 = npt.NDArray[np.int16]
Float32 = npt.NDArray[np.float32]

_INT16_SCALE = 32768.0


@dataclass(frozen=True, slots=True)
class Frame:
    """Mono 16-bit PCM samples at ``sample_rate`` Hz."""

    samples: PCM16
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.samples) / self.sample_rate

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def from_bytes(cls, data: bytes, sample_rate: int) -> Frame:
        """Little-endian int16 bytes (``audio/pcm``) to a frame."""
        return cls(np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False), sample_rate)

    def to_bytes(self) -> bytes:
        return self.samples.astype("<i2", copy=False).tobytes()

    @classmethod
    def silence(cls, duration_ms: float, sample_rate: int) -> Frame:
        return cls(np.zeros(round(duration_ms * sample_rate / 1000), np.int16), sample_rate)


def int16_to_float32(samples: PCM16) -> Float32:
    """int16 to float32 in [-1, 1)."""
    return (samples.astype(np.float32) / _INT16_SCALE).astype(np.float32, copy=False)


def float32_to_int16(samples: npt.NDArray[np.floating]) -> PCM16:
    """float to int16, clipping what lies outside [-1, 1)."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)
