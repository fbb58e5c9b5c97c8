"""Piper voices (VITS exported to ONNX) through piper-tts and ONNX Runtime: the CPU choice.

piper-tts loads the voice and phonemizes with the espeak-ng bundled in its wheel; the ONNX
session itself is run here, so that the clauses of many sessions share one run. Piper's graph
takes a batch (``input`` [B, T], ``input_lengths`` [B]) but returns the audio padded to the
longest row, with no per-row lengths. Its ``Ceil`` tensor holds each phoneme's duration in
frames (zero on padding), which piper exposes as an "alignment" output when it patches the model
with the ``onnx`` package: with it a row's length is ``sum(durations) * hop_length`` and a batch
is ONE run. Without ``onnx`` installed (and a model not patched on disk) the rows of a batch
run one by one: the scheduler still orders and aborts them, but there is no batching gain.

Batching is meant for a GPU (not measured here). On a CPU, ONNX Runtime already spreads one
row over the cores and a padded batch gains little or loses (measured on 2 cores, best of 5,
8 rows of 50 phonemes: a medium-size voice 2.0 s batched, 1.5 s one by one; the tiny test
voice 0.032 s and 0.047 s; rows of unequal length come out even), while every row of a batch
waits for the whole batch: ``max_batch_size`` is 1 on a CPU unless set.

``scales`` (noise, length, noise_w) is one per run, so rows of different speeds run apart.
Piper's exporter gives ``sid`` a fixed shape of one, so a multi-speaker voice's rows also run
apart per speaker unless its ``sid`` takes a batch.

This module speaks text; it must not normalise or rewrite it.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from parley.audio.frames import PCM16, float32_to_int16
from parley.engines.batching import BatchRequest
from parley.engines.device import Placement, place
from parley.engines.piper_voices import piper_voices_dir
from parley.engines.vits import ClauseBatchedTTS, Speakers, split_text
from parley.errors import ConfigError, EngineError, ParleyError

__all__ = ["DEFAULT_VOICE", "PiperTTS"]

DEFAULT_VOICE = "en_US-lessac-medium"

# Phonemizers that need nothing beyond the wheel; piper's others need extra packages, and its
# Chinese one downloads a model at first use.
_PHONEME_TYPES = ("espeak", "text")


@dataclass(frozen=True, slots=True)
class _Clause:
    """One request's payload: phoneme ids, speaker (None: single-speaker voice) and speed."""

    ids: tuple[int, ...]
    speaker: int | None
    speed: float


def _cuda_count() -> int:
    """1 when ONNX Runtime has its CUDA provider (it names no count), else 0."""
    import onnxruntime

    return 1 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else 0


class PiperTTS(ClauseBatchedTTS):
    """Text to speech with a Piper voice, batched across sessions.

    ``model`` is a voice's ``.onnx`` file (its ``.onnx.json`` beside it) or a voice name such
    as ``en_US-lessac-medium``, looked up in ``voices_dir`` (default: where ``parley models
    pull piper:VOICE`` puts voices). ``device`` is ``auto``/``cpu``/``cuda`` (ONNX Runtime's
    CUDA provider, from the ``onnxruntime-gpu`` package); ``dtype`` is ``float32`` (voices are
    exported in it) or ``auto``. ``noise_scale`` and ``noise_w``
    override the voice's own settings; ``speed`` divides its ``length_scale``.

    Batching: up to ``max_batch_size`` clauses per batch, waiting at most ``max_wait_ms`` for it
    to fill; one ONNX run per batch when per-row lengths are known (see the module docstring),
    else one per row. ``max_batch_size=1`` turns batching off; by default it is 8 on CUDA
    and 1 on the CPU. Each row's audio is scaled to
    full range, as piper does per sentence.
    """

    name = "piper"

    def __init__(
        self,
        model: str = DEFAULT_VOICE,
        default_voice: str | None = None,
        *,
        voices_dir: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int | None = None,
        max_wait_ms: float = 5.0,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> None:
        self.placement: Placement = place(
            device,
            dtype,
            cuda_count=_cuda_count,
            backend="onnxruntime",
            dtypes={"cpu": ["float32"], "cuda": ["float32"]},
            auto_dtype={"cpu": "float32", "cuda": "float32"},
            param="tts.options",
        )
        onnx_path, config_path = _voice_files(model, voices_dir)
        self._voice = _load(onnx_path, config_path, self.placement)
        config = self._voice.config
        self._session = self._voice.session
        self.sample_rate = int(config.sample_rate)
        self._hop = int(config.hop_length)
        self._length_scale = float(config.length_scale)
        self._noise_scale = float(config.noise_scale if noise_scale is None else noise_scale)
        self._noise_w = float(config.noise_w_scale if noise_w is None else noise_w)
        outputs = self._session.get_outputs()
        self.batched = len(outputs) > 1
        """Whether a batch is one run (per-row lengths known), else one run per row."""
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._multi = int(config.num_speakers) > 1 and "sid" in inputs
        self._sid_per_row = self._multi and inputs["sid"].shape[0] != 1
        by_id = {sid: name for name, sid in config.speaker_id_map.items()}
        names = [by_id.get(i, str(i)) for i in range(int(config.num_speakers))]
        voice_name = onnx_path.name.removesuffix(".onnx")
        language = str(config.espeak_voice)
        self.speakers = Speakers.build(names, single=voice_name, language=language)
        if default_voice:
            self._default = self.speakers.resolve(
                default_voice, param="tts.voice", error=ConfigError
            )
        else:
            self._default = int(config.default_speaker_id) if self._multi else 0
        # One thread: ONNX Runtime already spreads one run over the cores.
        self._start_batching(max_batch_size, max_wait_ms, on_cuda=8)

    def _prepare(self, text: str, speaker: int, speed: float) -> list[_Clause]:
        """Phoneme ids per sentence of each piece of ``text`` (piper's espeak-ng, its lock)."""
        clauses = []
        for piece in split_text(text):
            for phonemes in self._voice.phonemize(piece):
                if any(p.strip() for p in phonemes):
                    ids = tuple(int(i) for i in self._voice.phonemes_to_ids(phonemes))
                    clauses.append(_Clause(ids, speaker if self._multi else None, speed))
        return clauses

    def _run(self, requests: Sequence[BatchRequest]) -> dict[str, object]:
        groups: dict[tuple[float, int | None], list[BatchRequest]] = {}
        for request in requests:
            clause = cast(_Clause, request.payload)
            key = (clause.speed, None if self._sid_per_row else clause.speaker)
            groups.setdefault(key, []).append(request)
        out: dict[str, object] = {}
        for (speed, _), group in groups.items():
            clauses = [cast(_Clause, r.payload) for r in group]
            if self.batched:
                audio = self._forward(clauses, speed)
            else:
                audio = [a for c in clauses for a in self._forward([c], speed)]
            out.update(zip((r.id for r in group), audio, strict=True))
        return out

    def _forward(self, clauses: Sequence[_Clause], speed: float) -> list[PCM16]:
        """One ONNX run over ``clauses`` (same speed; same speaker unless ``sid`` is per row)."""
        width = max(len(c.ids) for c in clauses)
        ids = np.zeros((len(clauses), width), np.int64)
        for row, clause in enumerate(clauses):
            ids[row, : len(clause.ids)] = clause.ids
        feed: dict[str, npt.NDArray[Any]] = {
            "input": ids,
            "input_lengths": np.array([len(c.ids) for c in clauses], np.int64),
            "scales": np.array(
                [self._noise_scale, self._length_scale / speed, self._noise_w], np.float32
            ),
        }
        if self._multi:
            speakers = [c.speaker or 0 for c in clauses]
            feed["sid"] = np.array(speakers if self._sid_per_row else speakers[:1], np.int64)
        try:
            result = self._session.run(None, feed)
        except Exception as exc:  # ONNX Runtime's errors share no base class worth naming
            raise EngineError(f"piper synthesis failed: {exc}") from exc
        waves = np.asarray(result[0], np.float32).reshape(len(clauses), -1)
        if self.batched:
            frames = np.asarray(result[1]).reshape(len(clauses), -1).sum(axis=1)
            lengths = [int(max(1.0, n)) * self._hop for n in frames]
        else:
            lengths = [waves.shape[1]]
        return [_normalised(waves[row, :n]) for row, n in enumerate(lengths)]


def _normalised(wave: npt.NDArray[np.float32]) -> PCM16:
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if not np.isfinite(peak):
        raise EngineError("the Piper voice produced non-finite audio")
    return float32_to_int16(wave / peak if peak > 1e-8 else np.zeros_like(wave))


def _voice_files(model: str, voices_dir: str | None) -> tuple[Path, Path]:
    """The voice's ``.onnx`` and ``.onnx.json``; ConfigError naming the pull command if absent."""
    folder = Path(voices_dir).expanduser() if voices_dir else piper_voices_dir()
    path = Path(model).expanduser()
    if path.suffix != ".onnx":
        path = folder / f"{model.removeprefix('piper:')}.onnx"
    config = Path(f"{path}.json")
    missing = next((p for p in (path, config) if not p.is_file()), None)
    if missing is not None:
        voice = path.name.removesuffix(".onnx")
        raise ConfigError(
            f"Piper voice {model!r}: {missing} not found; run `parley models pull "
            f"piper:{voice}` on a machine with internet (it puts voices in {folder}), "
            "or set tts.options.model to a voice's .onnx file",
            param="tts.options.model",
        )
    return path, config


def _load(onnx_path: Path, config_path: Path, placement: Placement) -> Any:
    """piper's ``PiperVoice``, patched for per-row lengths when ``onnx`` is installed."""
    from piper import PiperVoice

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        phoneme_type = str(config.get("phoneme_type", "espeak"))
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"could not read the Piper voice config {config_path}: {exc}",
            param="tts.options.model",
        ) from exc
    if phoneme_type not in _PHONEME_TYPES:
        raise ConfigError(
            f"Piper voice {onnx_path.name} uses {phoneme_type!r} phonemes; parley runs "
            f"voices with {' or '.join(_PHONEME_TYPES)} phonemes",
            param="tts.options.model",
        )
    try:
        return PiperVoice.load(
            onnx_path,
            config_path=config_path,
            use_cuda=placement.kind == "cuda",
            include_alignments=importlib.util.find_spec("onnx") is not None,
        )
    except ParleyError:
        raise
    except Exception as exc:  # a bad file fails deep in onnx or ONNX Runtime, in many ways
        raise ConfigError(
            f"could not load the Piper voice {onnx_path}: {' '.join(str(exc).split())[:300]}",
            param="tts.options.model",
        ) from exc
