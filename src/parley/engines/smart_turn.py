"""Smart Turn v3: a semantic end-of-turn model ("has the caller finished?") from the turn's audio.

A silence window alone cannot tell "I'd like to book a flight to... [thinks] ...Paris" from a
finished sentence; Smart Turn (Daily/Pipecat, BSD-2-Clause) reads intonation and phrasing in the
last 8 s of 16 kHz audio and returns the probability that the turn is complete. The int8 ONNX
export of v3.2 ships with parley in ``engines/data/`` (taken from the ``pipecat-ai`` 1.14.0 wheel;
its licence beside it), because no small package carries it. Its SHA-256 is checked at load so a
truncated or altered file fails loudly instead of scoring nonsense; a model path the operator
gives is trusted as is (they chose it; there is no hash to hold it to).

The graph takes ``input_features`` float32 [batch, 80, 800] (Whisper log-mel features of 8 s) and
returns ``logits`` float32 [batch, 1], which is already a probability (no sigmoid). The features
follow Whisper's extractor with ``chunk_length=8``, with two details the model depends on: the
audio is zero-padded at the START (end padding reads as a trailing pause and breaks the model)
and normalised to zero mean, unit variance over the padded window.

One ONNX Runtime session (~150 ms to create) is shared by every caller; a call costs ~80 ms on
one core (measured on a 2-core AMD EPYC), so calls run on the engine's own small thread pool,
never on the event loop, and at most ``workers`` run at once.

This module scores a turn's audio; it must not decide turns (thresholds and timing belong to the
pipeline).
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from parley.audio.frames import Float32, Frame, int16_to_float32
from parley.audio.resample import resample
from parley.errors import BadAudioError, ConfigError, EngineUnavailableError

__all__ = [
    "MODEL_PATH",
    "MODEL_SHA256",
    "EndOfTurn",
    "SmartTurn",
    "features",
    "load_model",
]

MODEL_PATH = Path(__file__).resolve().parent / "data" / "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"

SAMPLE_RATE = 16000
_SECONDS = 8
_SAMPLES = SAMPLE_RATE * _SECONDS  # the model sees exactly this much audio
_N_FFT = 400
_HOP = 160
_N_MELS = 80
_FRAMES = _SAMPLES // _HOP  # 800
# Rates parley's wire formats carry (G.711 8 kHz to WebRTC 48 kHz); others are refused rather
# than resampled from something that is probably not a sample rate at all.
_MIN_RATE, _MAX_RATE = 8000, 48000


@runtime_checkable
class EndOfTurn(Protocol):
    """A model that judges whether the speaker has finished their turn."""

    name: str
    sample_rate: int

    async def end_of_turn(self, audio: Frame) -> float:
        """Probability in [0, 1] that the turn is complete, given its audio so far."""
        ...


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale: linear below 1 kHz (3 per 200 Hz), logarithmic above (27 mels per 6.4x).
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log_part, 3.0 * hz / 200.0)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.where(
        mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), 200.0 * mel / 3.0
    )


def _mel_filters() -> npt.NDArray[np.float64]:
    """[n_mels, n_fft/2 + 1] triangles spaced on the Slaney scale over 0-8 kHz, each scaled to
    unit area (Slaney normalisation), as Whisper's extractor builds them."""
    edges = np.array([0.0, SAMPLE_RATE / 2])
    lo, hi = _hz_to_mel(edges)
    centres = _mel_to_hz(np.linspace(lo, hi, _N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE // 2, _N_FFT // 2 + 1)
    slopes = centres[None, :] - bins[:, None]
    widths = np.diff(centres)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    area = 2.0 / (centres[2:] - centres[:-2])
    filters: npt.NDArray[np.float64] = (triangles * area).T
    return filters


_MEL = _mel_filters()
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann


def features(audio: Float32) -> Float32:
    """Smart Turn's input for float32 mono 16 kHz ``audio``: [80, 800] log-mel features of its
    last 8 s, zero-padded at the start."""
    x = np.asarray(audio, dtype=np.float32)[-_SAMPLES:]
    x = np.pad(x, (_SAMPLES - len(x), 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), (_N_FFT // 2, _N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    log_mel = np.log10(np.maximum(_MEL @ power.T, 1e-10))[:, :-1]
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    out: Float32 = ((log_mel + 4.0) / 4.0).astype(np.float32)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: Path, *, sha256: str | None, threads: int = 1) -> Any:
    """An ONNX Runtime session for the model at ``path`` on the CPU, its file first checked
    against ``sha256`` (None: trusted as is). Every failure is an :class:`EngineUnavailableError`
    naming the file."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineUnavailableError(
            "smart-turn needs onnxruntime (pip install onnxruntime, or parley[neural])"
        ) from exc
    if sha256 is not None:
        try:
            found = _sha256(path)
        except OSError as exc:
            raise EngineUnavailableError(
                f"smart-turn model {path} cannot be read: {exc.strerror}"
            ) from exc
        if found != sha256:
            raise EngineUnavailableError(
                f"smart-turn model {path} fails its SHA-256 check (expected {sha256}, "
                f"found {found}): the file is damaged or not the one parley ships"
            )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own types (Fail, InvalidProtobuf, NoSuchFile)
        raise EngineUnavailableError(f"smart-turn model {path} could not be loaded: {exc}") from exc
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if "input_features" not in inputs or "logits" not in outputs:
        raise EngineUnavailableError(
            f"smart-turn model {path} is not a Smart Turn v3 graph "
            f"(inputs {sorted(inputs)}, outputs {outputs}; want input_features -> logits)"
        )
    return session


class SmartTurn:
    """Smart Turn v3.2 on ONNX Runtime (CPU); one instance serves every session.

    ``model``: a path to another Smart Turn v3 ONNX file (trusted: no hash check); the vendored
    v3.2 file by default, checked against :data:`MODEL_SHA256`. ``workers``: calls run at once
    (each on one core); ``threads``: ONNX Runtime threads per call.
    """

    name = "smart-turn"
    sample_rate = SAMPLE_RATE

    def __init__(
        self, *, model: str | Path | None = None, workers: int = 1, threads: int = 1
    ) -> None:
        if workers < 1 or threads < 1:
            raise ConfigError(
                "smart-turn options workers and threads must be >= 1", param="turn.options"
            )
        if model is None:
            self._session = load_model(MODEL_PATH, sha256=MODEL_SHA256, threads=threads)
        else:
            self._session = load_model(Path(model).expanduser(), sha256=None, threads=threads)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="smart-turn")

    async def end_of_turn(self, audio: Frame) -> float:
        """Probability that the turn whose audio (so far) is ``audio`` is complete."""
        rate = audio.sample_rate
        if not _MIN_RATE <= rate <= _MAX_RATE:
            raise BadAudioError(
                f"smart-turn takes audio at {_MIN_RATE}-{_MAX_RATE} Hz, got {rate} Hz",
                param="audio",
            )
        if len(audio) == 0:
            raise BadAudioError("smart-turn was given no audio", param="audio")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._score, audio)

    def _score(self, audio: Frame) -> float:
        if audio.sample_rate != SAMPLE_RATE:
            # Only the model's window (plus a little for the filter's edge) is worth resampling.
            keep = _SECONDS * audio.sample_rate + audio.sample_rate // 10
            audio = resample(Frame(audio.samples[-keep:], audio.sample_rate), SAMPLE_RATE)
        x = features(int16_to_float32(audio.samples))[None]
        (logits,) = self._session.run(["logits"], {"input_features": x})
        return float(np.clip(logits.reshape(-1)[0], 0.0, 1.0))

    def close(self) -> None:
        """Stop the worker threads once calls in flight are done."""
        self._pool.shutdown(wait=False)
