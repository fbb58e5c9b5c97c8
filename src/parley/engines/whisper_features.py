"""Whisper's input: log-mel features of a window of audio, and how long that window is.

Whisper was trained on 30 s windows (3000 mel frames), and its reference pads every input with
silence to 30 s. CTranslate2's encoder also takes fewer frames; the encoder's cost grows with
them, so a short utterance decoded in a short window costs a fraction of a 30 s one. With no
padding at all tiny.en loops or invents words at the end of the audio, so the window is the
audio plus a margin of silence, rounded up to one of a few bucket sizes (so that the windows of
a batch share few shapes: a batch is padded to its largest bucket). See ``WindowRule``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley.audio.frames import Float32
from parley.errors import ConfigError

__all__ = ["FRAMES_PER_SECOND", "MAX_FRAMES", "WindowRule", "log_mel"]

FRAMES_PER_SECOND = 100  # 16 kHz audio, hop 160
MAX_FRAMES = 3000  # 30 s: Whisper's positional embeddings end there


@dataclass(frozen=True, slots=True)
class WindowRule:
    """The encoder window for ``samples`` of audio: the smallest of ``buckets_s`` (seconds)
    that holds the audio plus ``margin_s`` of silence; 30 s when none does."""

    buckets_s: tuple[float, ...] = (30.0,)
    margin_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.buckets_s or any(not 1.0 <= b <= 30.0 for b in self.buckets_s):
            raise ConfigError(
                "window buckets must be between 1 and 30 seconds", param="asr.options"
            )
        if not 0.0 <= self.margin_s <= 30.0:
            raise ConfigError("window margin must be 0-30 seconds", param="asr.options")

    @classmethod
    def of(cls, buckets_s: Sequence[float], margin_s: float) -> WindowRule:
        return cls(tuple(sorted(float(b) for b in buckets_s)), float(margin_s))

    def frames(self, samples: int, sample_rate: int = 16000) -> int:
        """Mel frames of the window for ``samples`` of audio (even: the encoder halves it)."""
        need = samples / sample_rate + self.margin_s
        for bucket in self.buckets_s:
            if bucket >= need:
                return _even(bucket)
        return MAX_FRAMES


def _even(seconds: float) -> int:
    frames = min(MAX_FRAMES, math.ceil(seconds * FRAMES_PER_SECOND))
    return frames + frames % 2


def log_mel(extractor: Any, samples: Float32, frames: int | None = None) -> Float32:
    """Whisper's log-mel features of ``samples`` padded with silence to ``frames`` frames
    (default 3000: 30 s, Whisper's reference); audio beyond the window is cut off.

    faster-whisper's ``FeatureExtractor`` computation, with two changes that keep its values
    (to float32 rounding) and cut its cost:

    * Only the audio's own frames are computed: padding the audio to 30 s (Whisper's reference)
      only adds frames of silence, whose value is the last frame's once enough zeros follow
      the audio for that frame to see nothing else.
    * Powers below 1e-30 are flushed to zero. The zeros after the audio leave FFT powers near
      1e-36 whose products with the mel weights (>= 1e-5) are denormal floats, which made the
      small mel matmul ~100x slower (measured: ~9 ms instead of ~0.1 ms for 2 s of audio);
      what they add to a band is ~1e-30, far below the 1e-10 floor of the logarithm.

    The first ``frames`` frames of the 30 s reference are the same as a shorter window's: a
    window shorter than 30 s is the reference's features cut short.
    """
    if frames is None:
        frames = int(extractor.nb_max_frames)
    hop = extractor.hop_length
    n_fft = extractor.n_fft
    waveform = np.pad(samples.astype(np.float32, copy=False), (0, n_fft + 2 * hop))
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    stft = extractor.stft(waveform, n_fft, hop, window=window, return_complex=True)
    power = np.abs(stft.astype(np.complex64)[..., :-1]) ** 2
    power[power < 1e-30] = 0.0
    log_spec = np.log10(np.clip(extractor.mel_filters @ power, 1e-10, None))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    features = ((log_spec + 4.0) / 4.0)[:, :frames]
    if features.shape[1] < frames:
        silence = features[:, -1:]
        pad = np.broadcast_to(silence, (features.shape[0], frames - features.shape[1]))
        features = np.concatenate([features, pad], axis=1)
    return np.ascontiguousarray(features, dtype=np.float32)
