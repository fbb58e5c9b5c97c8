"""Speaker verification: is the voice sample's speaker the consent recording's?

A :class:`SpeakerVerifier` turns a recording into a speaker embedding (unit-length float32);
two recordings are one speaker when the cosine of their embeddings reaches the verifier's
``threshold``. The one backend is Resemblyzer's voice encoder (Apache-2.0; a 3-layer LSTM over
40 mel bands, trained on VoxCeleb and LibriSpeech, 256-dim embeddings), whose weights
(``pretrained.pt``, 17 MB) ship in the ``Resemblyzer`` wheel pinned by the ``voices`` extra.
We read only that file from the package, checked against its SHA-256, and run the network and
its mel front end here: importing ``resemblyzer`` itself would pull librosa and webrtcvad in.

The threshold was measured on ``shared/speech`` (same speaker: two halves of one recording;
different speakers: recordings of different people); the figures are in ``docs`` and the
module's constant below. This module must not know about consents, tenants or HTTP.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.engines.packaged import PackagedModel, verified_folder
from parley.errors import Code, EngineUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = [
    "RESEMBLYZER",
    "RESEMBLYZER_THRESHOLD",
    "Embedding",
    "ResemblyzerVerifier",
    "SpeakerVerifier",
    "load_speaker_verifier",
    "same_speaker",
    "similarity",
]

Embedding = npt.NDArray[np.float32]

# Cosine at or above which two recordings are taken as one speaker (measured, see module doc).
RESEMBLYZER_THRESHOLD: Final = 0.72


class SpeakerVerifier(Protocol):
    name: str
    threshold: float

    def embed(self, audio: Frame) -> Embedding:
        """The speaker embedding of ``audio`` (unit length). Blocking: run it off the loop."""
        ...


def similarity(a: Embedding, b: Embedding) -> float:
    """Cosine similarity of two embeddings."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def same_speaker(verifier: SpeakerVerifier, a: Embedding, b: Embedding) -> bool:
    return similarity(a, b) >= verifier.threshold


def _resemblyzer_folder() -> Path:
    # find_spec does not run the package's __init__ (which imports librosa).
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("resemblyzer")
    return Path(next(iter(spec.submodule_search_locations)))


RESEMBLYZER = PackagedModel(
    name="Resemblyzer voice encoder",
    distribution="Resemblyzer",
    version="0.1.4",
    locate=_resemblyzer_folder,
    files={"pretrained.pt": "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"},
    param="trust.speaker_verification",
)

# Resemblyzer's hyperparameters (resemblyzer/hparams.py).
_RATE = 16000
_N_FFT = 400  # 25 ms
_HOP = 160  # 10 ms
_N_MELS = 40
_PARTIAL_FRAMES = 160  # 1.6 s
_PARTIAL_RATE = 1.3  # partials per second
_MIN_COVERAGE = 0.75
_TARGET_DBFS = -30.0


def _hz_to_mel(f: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale, librosa's default (htk=False).
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    log = f >= min_log_hz
    mel[log] = min_log_mel + np.log(f[log] / min_log_hz) / logstep
    return mel


def _mel_to_hz(m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    f = m * f_sp
    log = m >= min_log_mel
    f[log] = min_log_hz * np.exp(logstep * (m[log] - min_log_mel))
    return f


def _mel_filters() -> npt.NDArray[np.float32]:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (Slaney scale and norm)."""
    fft_freqs = np.linspace(0, _RATE / 2, 1 + _N_FFT // 2)
    edges = _hz_to_mel(np.array([0.0, _RATE / 2]))
    mel_f = _mel_to_hz(np.linspace(edges[0], edges[1], _N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERS = _mel_filters()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float32)


def _mel_frames(wav: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(frames, 40) mel power spectrogram, as librosa.feature.melspectrogram (centred frames)."""
    padded = np.pad(wav, _N_FFT // 2)
    n = 1 + (len(padded) - _N_FFT) // _HOP
    idx = np.arange(_N_FFT)[None, :] + _HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(padded[idx] * _WINDOW, axis=1)) ** 2
    return (spec.astype(np.float32) @ _FILTERS.T).astype(np.float32)


def _preprocess(audio: Frame) -> npt.NDArray[np.float32]:
    """16 kHz float samples, quiet recordings raised to -30 dBFS, long pauses cut out."""
    wav = resample(audio, _RATE).samples.astype(np.float32) / 32768.0
    rms = float(np.sqrt(np.mean(wav**2))) if len(wav) else 0.0
    if rms > 0:
        change = _TARGET_DBFS - 20 * np.log10(rms)
        if change > 0:
            wav = wav * np.float32(10 ** (change / 20))
    return _trim_silences(wav)


def _trim_silences(wav: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Drop 30 ms windows in long pauses (Resemblyzer does this with webrtcvad; an energy gate
    is enough here: the recordings are single-speaker speech)."""
    window = 480
    n = len(wav) // window
    if n < 8:
        return wav
    energy = np.sqrt(np.mean(wav[: n * window].reshape(n, window) ** 2, axis=1))
    voiced = energy > max(float(energy.max()) * 0.05, 1e-4)
    # Moving average over 8 windows, then dilation by 6 (Resemblyzer's smoothing).
    smooth = np.convolve(voiced.astype(np.float32), np.ones(8) / 8, mode="same") > 0.5
    keep = np.convolve(smooth.astype(np.float32), np.ones(13), mode="same") > 0
    if not keep.any():
        return wav
    return wav[: n * window].reshape(n, window)[keep].reshape(-1)


def _partial_slices(n_samples: int) -> list[slice]:
    """Resemblyzer's VoiceEncoder.compute_partial_slices, as mel-frame slices."""
    n_frames = int(np.ceil((n_samples + 1) / _HOP))
    frame_step = int(np.round((_RATE / _PARTIAL_RATE) / _HOP))
    steps = max(1, n_frames - _PARTIAL_FRAMES + frame_step + 1)
    slices = [slice(i, i + _PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    last = slices[-1]
    coverage = (n_samples - last.start * _HOP) / (_PARTIAL_FRAMES * _HOP)
    if coverage < _MIN_COVERAGE and len(slices) > 1:
        slices = slices[:-1]
    return slices


@dataclass
class ResemblyzerVerifier:
    """Resemblyzer's voice encoder, loaded from the weights its wheel ships."""

    model: Any  # torch.nn.Module
    name: str = "resemblyzer"
    threshold: float = RESEMBLYZER_THRESHOLD

    def __post_init__(self) -> None:
        # One forward at a time: the LSTM's modules are shared.
        self._lock = threading.Lock()

    def embed(self, audio: Frame) -> Embedding:
        import torch

        wav = _preprocess(audio)
        slices = _partial_slices(len(wav))
        need = slices[-1].stop * _HOP
        if need > len(wav):
            wav = np.pad(wav, (0, need - len(wav)))
        mel = _mel_frames(wav)
        mels = np.stack([mel[s] for s in slices])
        with self._lock, torch.inference_mode():
            partials: Embedding = self.model(torch.from_numpy(mels)).numpy()
        raw = partials.mean(axis=0)
        unit: Embedding = (raw / np.linalg.norm(raw)).astype(np.float32)
        return unit


def _encoder(state: dict[str, torch.Tensor]) -> Any:
    import torch
    from torch import nn

    class VoiceEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(_N_MELS, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            raw = torch.relu(self.linear(hidden[-1]))
            unit: torch.Tensor = raw / torch.norm(raw, dim=1, keepdim=True)
            return unit

    model = VoiceEncoder()
    # The checkpoint also holds the training-time similarity weight and bias: not needed.
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_speaker_verifier(weights: Path | None = None) -> SpeakerVerifier:
    """Resemblyzer's encoder from ``weights`` (a ``pretrained.pt``) or the installed wheel,
    checked against its SHA-256. Without torch or the wheel: EngineUnavailableError
    ``speaker_verification_unavailable``; a damaged file: ConfigError."""
    try:
        import torch
    except ImportError as exc:
        raise _unavailable("torch is not installed") from exc
    if weights is None:
        try:
            folder = RESEMBLYZER.locate()
        except ImportError as exc:
            raise _unavailable("the Resemblyzer package is not installed") from exc
        path = verified_folder(RESEMBLYZER, folder) / "pretrained.pt"
    else:
        path = weights
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return ResemblyzerVerifier(_encoder(checkpoint["model_state"]))


def _unavailable(why: str) -> EngineUnavailableError:
    return EngineUnavailableError(
        f"Speaker verification is not available on this server ({why}); install parley's "
        "'voices' extra: pip install 'parley[voices]'.",
        code=Code.SPEAKER_VERIFICATION_UNAVAILABLE,
    )
