"""Audio files in and out: wav, flac, ogg (vorbis, opus) and mp3, through libsndfile.

Reading gives one mono :class:`Frame` at the file's own rate (or at ``sample_rate`` when asked):
channels are averaged and float sources are clipped into int16, never wrapped. Every way a file
can fail to give audio (missing, a directory, unreadable, not audio, corrupt, empty, a sample
rate outside :data:`SAMPLE_RATES`) is a :class:`BadAudioError` whose message names the file and
the cause in one line, because these messages reach API clients and the CLI as they are.

Files are read block by block (:func:`mono_blocks`): only one block is ever held as float, so a
clip costs int16 of its length and no more. :mod:`parley.audio.containers` reads uploads with the
same blocks, one at a time, without keeping them. This module returns whole clips; size limits
belong to whoever accepts the upload.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from parley.audio.frames import PCM16, Frame, float32_to_int16
from parley.audio.resample import resample
from parley.errors import BadAudioError

__all__ = [
    "OUTPUT_FORMATS",
    "SAMPLE_RATES",
    "check_sample_rate",
    "decode_audio",
    "encode_audio",
    "mono_blocks",
    "read_audio",
    "write_audio",
]

SAMPLE_RATES = range(1000, 384_001)
"""Sample rates parley reads. Below, resampling to 16 kHz would multiply a block's size by more
than 16 (a header claiming 1 Hz turns kilobytes into gigabytes); above, nothing records speech."""

# Frames per block, and the samples (all channels) a block may hold: ~64k frames at ~2 MB of
# float32, fewer frames when a file has many channels (libsndfile allows 1024).
_BLOCK_FRAMES = 1 << 16
_BLOCK_SAMPLES = 1 << 19


# Output format -> (libsndfile container, subtype, the sample rates the codec accepts or None).
_WRITERS: dict[str, tuple[str, str, tuple[int, ...] | None]] = {
    "wav": ("WAV", "PCM_16", None),
    "flac": ("FLAC", "PCM_16", None),
    "ogg": ("OGG", "VORBIS", None),
    "opus": ("OGG", "OPUS", (8000, 12000, 16000, 24000, 48000)),
    "mp3": (
        "MP3",
        "MPEG_LAYER_III",
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    ),
}
OUTPUT_FORMATS: tuple[str, ...] = tuple(_WRITERS)
"""The formats :func:`write_audio` and :func:`encode_audio` produce."""


def read_audio(path: str | os.PathLike[str], *, sample_rate: int | None = None) -> Frame:
    """A whole audio file as one mono frame, resampled to ``sample_rate`` if given."""
    p = Path(path)
    try:
        f = p.open("rb")
    except FileNotFoundError:
        raise BadAudioError(f"audio file not found: {p}") from None
    except IsADirectoryError:
        raise BadAudioError(f"{p} is a directory, not an audio file") from None
    except PermissionError:
        raise BadAudioError(f"no permission to read audio file {p}") from None
    except OSError as exc:
        raise BadAudioError(f"cannot open audio file {p}: {exc.strerror or exc}") from None
    with f:
        frame = _decode(f, str(p))
    return frame if sample_rate is None else resample(frame, sample_rate)


def decode_audio(data: bytes, *, sample_rate: int | None = None, name: str = "audio data") -> Frame:
    """An audio file held in memory as one mono frame; ``name`` is used in error messages."""
    frame = _decode(io.BytesIO(data), name)
    return frame if sample_rate is None else resample(frame, sample_rate)


def write_audio(path: str | os.PathLike[str], frame: Frame, format: str | None = None) -> None:
    """Write ``frame`` to ``path`` as ``format``, or as the format its suffix names.

    Encoding problems are :class:`BadAudioError`; a path that cannot be written raises
    ``OSError`` as usual.
    """
    p = Path(path)
    data = encode_audio(frame, format if format is not None else p.suffix)
    p.write_bytes(data)


def encode_audio(frame: Frame, format: str) -> bytes:
    """``frame`` encoded as a whole file in ``format`` (see :data:`OUTPUT_FORMATS`).

    Codecs with a fixed set of rates (mp3, opus) get the frame resampled to the nearest rate
    they accept at or above its own.
    """
    key = format.lower().removeprefix(".")
    spec = _WRITERS.get(key)
    if spec is None:
        supported = ", ".join(OUTPUT_FORMATS)
        shown = repr(format) if format else "(none given)"
        raise BadAudioError(f"unsupported output audio format {shown}; supported: {supported}")
    container, subtype, rates = spec
    if rates is not None and frame.sample_rate not in rates:
        above = [r for r in rates if r >= frame.sample_rate]
        frame = resample(frame, above[0] if above else rates[-1])
    buf = io.BytesIO()
    try:
        sf.write(buf, frame.samples, frame.sample_rate, format=container, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        raise BadAudioError(f"cannot encode audio as {key}: {_reason(exc)}") from None
    return buf.getvalue()


def check_sample_rate(rate: int, name: str, *, param: str | None = None) -> int:
    """``rate`` if it is in :data:`SAMPLE_RATES`, else a :class:`BadAudioError` naming ``name``
    (and ``param``, the request field that carried the file, if any)."""
    if rate not in SAMPLE_RATES:
        raise BadAudioError(
            f"{name}: a sample rate of {rate} Hz is out of range"
            f" ({SAMPLE_RATES.start}-{SAMPLE_RATES.stop - 1} Hz)",
            param=param,
        )
    return rate


def mono_blocks(snd: sf.SoundFile) -> Iterator[PCM16]:
    """The rest of the open ``snd``, block by block, as mono int16 (channels averaged; NaN,
    inf and out-of-range floats mapped into range, never wrapped). libsndfile's errors
    (``sf.SoundFileError``, ``RuntimeError``) pass through to the caller."""
    frames = max(256, min(_BLOCK_FRAMES, _BLOCK_SAMPLES // max(snd.channels, 1)))
    while len(block := _read_mono(snd, frames)):
        yield block


def _read_mono(snd: sf.SoundFile, frames: int) -> PCM16:
    # libsndfile's mp3 decoder can leave the FPU's "invalid" flag set with nothing invalid in
    # its output; numpy would report the stale flag as a RuntimeWarning on its next operation
    # (about 1 decode in 150). The samples are sanitised, so the flags are ignored here and
    # consumed before leaving. Per block, not around the generator: a generator's
    # ``errstate`` would leak into whatever its consumer runs between blocks.
    with np.errstate(all="ignore"):
        try:
            block = snd.read(frames, dtype="float32", always_2d=True)
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
            return float32_to_int16(np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0))
        finally:
            np.add(np.zeros(1), 0.0)


def _decode(source: BinaryIO, name: str) -> Frame:
    try:
        if not source.read(1):
            raise BadAudioError(f"{name} is empty (0 bytes)")
        source.seek(0)
        with sf.SoundFile(source) as snd:
            rate = check_sample_rate(int(snd.samplerate), name)
            blocks = list(mono_blocks(snd))
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        raise BadAudioError(
            f"{name}: unsupported or corrupt audio ({_reason(exc)});"
            " expected wav, flac, ogg, opus or mp3"
        ) from None
    except OSError as exc:
        raise BadAudioError(f"cannot read audio file {name}: {exc.strerror or exc}") from None
    if not blocks:
        raise BadAudioError(f"{name} holds no audio samples")
    return Frame(np.concatenate(blocks), rate)


def _reason(exc: Exception) -> str:
    """libsndfile's own words, without soundfile's 'Error opening <object>:' prefix."""
    reason = getattr(exc, "error_string", None)
    text = reason if isinstance(reason, str) and reason else str(exc)
    return text.strip().rstrip(".") or type(exc).__name__
