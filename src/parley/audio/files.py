"""Audio files in and out: wav, flac, ogg (vorbis, opus) and mp3, through libsndfile.

Reading gives one mono :class:`Frame` at the file's own rate (or at ``sample_rate`` when asked):
channels are averaged and float sources are clipped into int16, never wrapped. Every way a file
can fail to give audio (missing, a directory, unreadable, not audio, corrupt, empty) is a
:class:`BadAudioError` whose message names the file and the cause in one line, because these
messages reach API clients and the CLI as they are.

This module does not stream: it decodes and encodes whole clips in memory. Size limits belong to
whoever accepts the upload.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from parley.audio.frames import Frame, float32_to_int16
from parley.audio.resample import resample
from parley.errors import BadAudioError

__all__ = ["OUTPUT_FORMATS", "decode_audio", "encode_audio", "read_audio", "write_audio"]


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


def _decode(source: BinaryIO, name: str) -> Frame:
    # libsndfile's mp3 decoder can leave the FPU's "invalid" flag set with nothing invalid in
    # its output; numpy would report the stale flag as a RuntimeWarning on its next operation
    # (about 1 decode in 150). The samples are sanitised, so the flags are ignored here and
    # consumed before leaving.
    with np.errstate(all="ignore"):
        try:
            return _decode_samples(source, name)
        finally:
            np.add(np.zeros(1), 0.0)


def _decode_samples(source: BinaryIO, name: str) -> Frame:
    try:
        if not source.read(1):
            raise BadAudioError(f"{name} is empty (0 bytes)")
        source.seek(0)
        with sf.SoundFile(source) as snd:
            rate = int(snd.samplerate)
            data = snd.read(dtype="float64", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise BadAudioError(
            f"{name}: unsupported or corrupt audio ({_reason(exc)});"
            " expected wav, flac, ogg, opus or mp3"
        ) from None
    except OSError as exc:
        raise BadAudioError(f"cannot read audio file {name}: {exc.strerror or exc}") from None
    if data.shape[0] == 0:
        raise BadAudioError(f"{name} holds no audio samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    # Float sources can hold NaN or inf; map them into range rather than cast garbage.
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return Frame(float32_to_int16(mono), rate)


def _reason(exc: Exception) -> str:
    """libsndfile's own words, without soundfile's 'Error opening <object>:' prefix."""
    reason = getattr(exc, "error_string", None)
    text = reason if isinstance(reason, str) and reason else str(exc)
    return text.strip().rstrip(".") or type(exc).__name__
