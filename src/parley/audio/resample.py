"""Streaming and one-shot resampling (soxr, VHQ quality by default for speech at 8-48 kHz).

A :class:`StreamResampler` keeps the filter's state across chunks so that a stream resampled
chunk by chunk is the same as resampled whole: no clicks at chunk edges. Call ``flush()`` once at
the end of a stream to drain the filter's tail.
"""

from __future__ import annotations

import numpy as np
import soxr

from parley.audio.frames import PCM16, Frame

__all__ = ["StreamResampler", "resample"]


class StreamResampler:
    """Resamples a stream of int16 chunks from ``in_rate`` to ``out_rate``."""

    __slots__ = ("_stream", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
        )

    def process(self, samples: PCM16) -> PCM16:
        if self._stream is None:
            return samples
        out: PCM16 = self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.int16))
        return out

    def flush(self) -> PCM16:
        """The filter's remaining output; the resampler is finished afterwards."""
        if self._stream is None:
            return np.zeros(0, np.int16)
        out: PCM16 = self._stream.resample_chunk(np.zeros(0, np.int16), last=True)
        return out

    def frame(self, frame: Frame) -> Frame:
        """Resample one frame of the stream (its rate must be ``in_rate``)."""
        if frame.sample_rate != self.in_rate:
            raise ValueError(f"frame at {frame.sample_rate} Hz fed to a {self.in_rate} Hz stream")
        return Frame(self.process(frame.samples), self.out_rate)


def resample(frame: Frame, rate: int) -> Frame:
    """A whole frame to ``rate`` at once."""
    if frame.sample_rate == rate:
        return frame
    out = soxr.resample(frame.samples, frame.sample_rate, rate, quality="HQ")
    return Frame(np.asarray(out, dtype=np.int16), rate)
