"""VITS and MMS-TTS speech through transformers, one forward pass for many sessions' clauses.

Each clause is one request to the engine's :class:`~parley.engines.batching.Scheduler`; a batch
of them is tokenized, padded and spoken by ONE ``VitsModel`` forward on a dedicated worker
thread, and each waveform is cut to its own length (``sequence_lengths``). VITS is not
autoregressive, so a batch costs about as much as its longest clause: batching multiplies the
throughput of a GPU, while the first audio of a clause comes when its whole clause is done.

What the Piper engine (:mod:`parley.engines.piper`, VITS exported to ONNX) shares with this one
lives here too: OpenAI voice names mapped onto speaker ids (:class:`Speakers`), long text split
into requests (:func:`split_text`) and the way from requests to frames (:func:`speak`). torch and
transformers are imported when a :class:`VitsTTS` is built, never by importing this module, so
Piper does not pull them in.

This module speaks text; it must not normalise or rewrite it (the model's tokenizer drops the
characters it has no symbol for).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from parley.audio.frames import PCM16, Frame, float32_to_int16
from parley.audio.resample import StreamResampler
from parley.engines.base import OPENAI_VOICE_NAMES, SpeechOptions, Voice
from parley.engines.batching import BatchRequest, Scheduler
from parley.engines.device import Placement, cuda_count_torch, place
from parley.errors import ClientError, ConfigError, EngineError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "OPENAI_VOICES",
    "ClauseBatchedTTS",
    "Speakers",
    "VitsTTS",
    "speak",
    "split_text",
]

DEFAULT_MODEL = "facebook/mms-tts-eng"

# OpenAI's voice names: spread over a multi-speaker model's speakers so that clients written
# for OpenAI get a distinct (and always the same) speaker for each.
OPENAI_VOICES = OPENAI_VOICE_NAMES

# A request's text is at most this long (~15 s of speech). Longer text is split: attention cost
# grows with the square of the length, and one long row would stretch a whole batch.
MAX_CHARS = 200
# Frames handed out are at most this long.
_FRAME_S = 0.2

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_CLAUSE_END = re.compile(r"(?<=[.!?;:,])\s+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


# --- What the VITS family shares (also used by parley.engines.piper) -------------------------


@dataclass(frozen=True, slots=True)
class Speakers:
    """A model's voices and the names that pick each of its speaker ids."""

    voices: tuple[Voice, ...]
    ids: Mapping[str, int]
    """Lower-cased name -> speaker id: the model's speaker names, their ids as text, and the
    OpenAI voice names."""

    @classmethod
    def build(
        cls, names: Sequence[str], *, single: str, language: str, gender: str | None = None
    ) -> Speakers:
        """``names[i]`` names speaker ``i``; a one-speaker model's only voice is ``single``."""
        if len(names) <= 1:
            voice = Voice(id=single, name=single, language=language, gender=gender)
            ids = {single.lower(): 0, "0": 0} | dict.fromkeys(OPENAI_VOICES, 0)
            return cls((voice,), ids)
        voices = tuple(Voice(id=n, name=n, language=language) for n in names)
        table: dict[str, int] = {}
        for sid, name in enumerate(names):
            table.setdefault(name.lower(), sid)
        for sid in range(len(names)):
            table.setdefault(str(sid), sid)
        # Evenly spread over the speakers, wrapping when there are fewer than 13.
        step = max(1, len(names) // len(OPENAI_VOICES))
        for i, name in enumerate(OPENAI_VOICES):
            table.setdefault(name, (i * step) % len(names))
        return cls(voices, table)

    def resolve(
        self, name: str, *, param: str = "voice", error: type[ClientError] = ClientError
    ) -> int:
        """The speaker id of a voice name; else ``error`` (a ClientError) names some voices."""
        sid = self.ids.get(name.strip().lower())
        if sid is None:
            examples = ", ".join(v.id for v in self.voices[:8])
            more = f" (or any of the {len(self.voices)} listed)" if len(self.voices) > 8 else ""
            raise error(
                f"unknown voice {name!r}; try one of {examples}{more} or an OpenAI voice name",
                param=param,
            )
        return sid


def split_text(text: str, max_chars: int = MAX_CHARS) -> list[str]:
    """``text`` in pieces of at most ``max_chars``, whitespace collapsed, none empty.

    Pieces break after clause punctuation where they can, else between words; a single word
    longer than ``max_chars`` stays whole.
    """
    units: list[str] = []
    for clause in _CLAUSE_END.split(" ".join(text.split())):
        units.extend([clause] if len(clause) <= max_chars else clause.split(" "))
    pieces: list[str] = []
    for unit in units:
        if not unit:
            continue
        if pieces and len(pieces[-1]) + 1 + len(unit) <= max_chars:
            pieces[-1] += " " + unit
        else:
            pieces.append(unit)
    return pieces


def validate(options: SpeechOptions) -> None:
    """The ClientErrors every engine raises for impossible options, as espeak does."""
    if not options.speed > 0:
        raise ClientError(f"speed must be positive, got {options.speed}", param="speed")
    if options.sample_rate <= 0:
        raise ClientError(
            f"sample rate must be positive, got {options.sample_rate}", param="sample_rate"
        )


def _frames(samples: PCM16, rate: int) -> Iterator[Frame]:
    step = max(1, round(rate * _FRAME_S))
    for start in range(0, len(samples), step):
        yield Frame(samples[start : start + step], rate)


async def speak(
    scheduler: Scheduler,
    session: str,
    payloads: Sequence[object],
    options: SpeechOptions,
    model_rate: int,
) -> AsyncGenerator[Frame, None]:
    """Submit ``payloads`` one after another and yield their audio as frames.

    The engine's ``execute`` answers each payload with int16 samples at ``model_rate``; they
    are resampled to ``options.sample_rate`` as one stream (no click between pieces) and cut
    into frames of at most 200 ms. Only the first payload of a stream's first clause is a
    ``first`` request. Leaving early (``aclose()``, cancellation, an error) aborts the
    session's requests in the scheduler: a barge-in frees the engine of its queued work.
    """
    resampler = StreamResampler(model_rate, options.sample_rate)
    finished = False
    try:
        for i, payload in enumerate(payloads):
            first = i == 0 and not options.continuation
            audio = cast(PCM16, await scheduler.submit(session, payload, first=first))
            for frame in _frames(resampler.process(audio), options.sample_rate):
                yield frame
        for frame in _frames(resampler.flush(), options.sample_rate):
            yield frame
        finished = True
    finally:
        if not finished:
            scheduler.abort(session)


# --- what the clause-batched TTS engines share ----------------------------------------------


class ClauseBatchedTTS:
    """A TTS engine whose clauses are requests to its own :class:`Scheduler`, run on one thread.

    Subclasses set ``name``, ``sample_rate``, ``speakers``, ``placement`` and ``_default`` (the
    default speaker), call :meth:`_start_batching`, and implement ``_prepare`` (text -> the
    payloads of its requests, off the event loop) and ``_run`` (a batch -> each request's int16
    audio at ``sample_rate``, on the worker thread).
    """

    name: str
    sample_rate: int
    speakers: Speakers
    placement: Placement
    _default: int

    def _start_batching(
        self, max_batch_size: int | None, max_wait_ms: float, *, on_cuda: int
    ) -> None:
        self._calls = itertools.count(1)
        # One thread: one forward at a time uses the whole device; more would only contend.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self.scheduler = Scheduler(
            self.name,
            self._execute,
            # Batching pays on a GPU; on a CPU a padded batch is no faster than its rows
            # (docs/benchmarks.md), and each row would wait for the whole batch.
            max_batch_size=max_batch_size
            if max_batch_size is not None
            else (on_cuda if self.placement.kind == "cuda" else 1),
            max_wait_s=max_wait_ms / 1000.0,
        )

    def voices(self) -> Sequence[Voice]:
        return self.speakers.voices

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        """Frames at ``options.sample_rate``: each clause's audio once its batch is spoken."""
        validate(options)
        speaker = self._default if not options.voice else self.speakers.resolve(options.voice)
        if not text.strip():
            return
        payloads = await asyncio.to_thread(self._prepare, text, speaker, options.speed)
        if not payloads:
            return
        session = options.stream or f"{self.name}:{next(self._calls)}"
        async with aclosing(
            speak(self.scheduler, session, payloads, options, self.sample_rate)
        ) as frames:
            async for frame in frames:
                yield frame

    def _prepare(self, text: str, speaker: int, speed: float) -> Sequence[object]:
        raise NotImplementedError

    def _run(self, requests: Sequence[BatchRequest]) -> dict[str, object]:
        raise NotImplementedError

    async def _execute(self, requests: Sequence[BatchRequest]) -> Mapping[str, object]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._run, requests)


# --- VitsTTS ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Clause:
    """One request's payload: token ids, speaker and speed."""

    ids: tuple[int, ...]
    speaker: int
    speed: float


class VitsTTS(ClauseBatchedTTS):
    """Text to speech with a VITS / MMS-TTS model (``transformers.VitsModel``), batched.

    ``model`` is a folder saved with ``save_pretrained`` or a Hugging Face repository id found
    in the local cache (``parley models pull ORG/NAME`` puts it there; ``allow_download=True``
    lets transformers fetch it instead). ``device`` is ``auto``/``cpu``/``cuda[:N]``; ``dtype``
    is ``float32`` or ``bfloat16`` on the CPU and ``float16``, ``bfloat16`` or ``float32`` on
    CUDA, where ``auto`` is ``float16``: transformers' own fp16 test of mms-tts-eng gives the
    fp32 durations and finite audio, while bfloat16 rounds the summed phoneme durations (its
    8-bit mantissa holds integers exactly only up to 256 frames). A batch whose audio is not
    finite fails with an EngineError that suggests ``float32``.

    Batching: up to ``max_batch_size`` clauses per forward, waiting at most ``max_wait_ms`` for
    a batch to fill (``max_batch_size=1``: one clause per forward). One forward runs per
    speaking rate in the batch (VITS has one global rate); speakers differ per row. The output
    noise (``noise_scale``, ``noise_scale_duration``: the model's config by default) is drawn
    per batch; ``seed`` reseeds torch's global generator before each forward so that the same
    batch gives the same audio. Batching is meant for GPUs (not measured here): on a CPU a
    padded forward is slower than its rows one by one (an MMS-size model on 2 cores: 8 clauses
    in 20 s batched, 12 s one by one), so ``max_batch_size`` defaults to 32 on CUDA and 1 on the
    CPU.

    MMS checkpoints for non-Latin scripts (``is_uroman`` tokenizers) need romanised text: with
    the ``uroman`` package installed the tokenizer romanises, else non-ASCII input is a
    ConfigError. Tokenizers that phonemize (``phonemize=True``) need the ``phonemizer`` package.
    """

    name = "vits"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        default_voice: str | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int | None = None,
        max_wait_ms: float = 5.0,
        noise_scale: float | None = None,
        noise_scale_duration: float | None = None,
        seed: int | None = None,
        allow_download: bool = False,
    ) -> None:
        self.placement: Placement = place(
            device,
            dtype,
            cuda_count=cuda_count_torch,
            backend="torch",
            dtypes={"cpu": ["float32", "bfloat16"], "cuda": ["float16", "bfloat16", "float32"]},
            auto_dtype={"cpu": "float32", "cuda": "float16"},
            param="tts.options",
        )
        import torch

        self._torch = torch
        self._model, self._tokenizer = _load(model, allow_download, self.placement)
        config = self._model.config
        if noise_scale is not None:
            self._model.noise_scale = noise_scale
        if noise_scale_duration is not None:
            self._model.noise_scale_duration = noise_scale_duration
        self._seed = seed
        self.sample_rate = int(config.sampling_rate)
        self._num_speakers = int(config.num_speakers)
        self._blank = bool(getattr(self._tokenizer, "add_blank", False))
        self._uroman = bool(getattr(self._tokenizer, "is_uroman", False))
        single = Path(model.rstrip("/")).name or model
        names = [f"speaker_{i}" for i in range(self._num_speakers)]
        language = str(getattr(self._tokenizer, "language", None) or "")
        self.speakers = Speakers.build(names, single=single, language=language)
        self._default = (
            self.speakers.resolve(default_voice, param="tts.voice", error=ConfigError)
            if default_voice
            else 0
        )
        self._start_batching(max_batch_size, max_wait_ms, on_cuda=32)

    def _prepare(self, text: str, speaker: int, speed: float) -> list[_Clause]:
        """Token ids per piece of ``text``; pieces with nothing to speak are left out."""
        if self._uroman and _NON_ASCII.search(text):
            from transformers.utils.import_utils import is_uroman_available

            if not is_uroman_available():
                raise ConfigError(
                    "this MMS model reads romanised text: install the uroman package "
                    "(pip install uroman) or send Latin-script text",
                    param="tts.options.model",
                )
        clauses = []
        for piece in split_text(text):
            ids = tuple(int(i) for i in self._tokenizer(piece)["input_ids"])
            # With add_blank every other id is the blank: a piece of blanks says nothing.
            spoken = ids[1::2] if self._blank else ids
            if spoken:
                clauses.append(_Clause(ids, speaker, speed))
        return clauses

    def _run(self, requests: Sequence[BatchRequest]) -> dict[str, object]:
        by_speed: dict[float, list[BatchRequest]] = {}
        for request in requests:
            by_speed.setdefault(cast(_Clause, request.payload).speed, []).append(request)
        out: dict[str, object] = {}
        for speed, group in by_speed.items():
            audio = self._forward([cast(_Clause, r.payload) for r in group], speed)
            out.update(zip((r.id for r in group), audio, strict=True))
        return out

    def _forward(self, clauses: Sequence[_Clause], speed: float) -> list[PCM16]:
        """One padded forward; each row's int16 audio at the model's rate."""
        torch = self._torch
        width = max(len(c.ids) for c in clauses)
        ids = torch.zeros((len(clauses), width), dtype=torch.long)
        mask = torch.zeros((len(clauses), width), dtype=torch.long)
        for row, clause in enumerate(clauses):
            ids[row, : len(clause.ids)] = torch.tensor(clause.ids, dtype=torch.long)
            mask[row, : len(clause.ids)] = 1
        device = self.placement.device
        kwargs: dict[str, Any] = {}
        hook = None
        if self._num_speakers > 1:
            # VitsModel takes one speaker_id for the whole batch; its speaker embedding is
            # swapped for one row per clause, which every later layer broadcasts over.
            rows = torch.tensor([c.speaker for c in clauses], dtype=torch.long, device=device)
            hook = self._model.embed_speaker.register_forward_hook(_per_row(rows))
            kwargs["speaker_id"] = 0
        self._model.speaking_rate = speed
        if self._seed is not None:
            torch.manual_seed(self._seed)
        try:
            with torch.inference_mode():
                output = self._model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
                )
        finally:
            if hook is not None:
                hook.remove()
        waves = output.waveform.float().cpu().numpy()
        lengths = [int(n) for n in output.sequence_lengths.tolist()]
        audio = []
        for row, n in enumerate(lengths):
            wave = waves[row, :n]
            if not np.isfinite(wave).all():
                raise EngineError(
                    f"the VITS model produced non-finite audio in {self.placement.dtype}; "
                    'set tts.options.dtype = "float32"'
                )
            audio.append(float32_to_int16(wave))
        return audio


def _per_row(rows: torch.Tensor) -> Any:
    """A forward hook that makes an embedding layer return the embeddings of ``rows``."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        return module.weight[rows]

    return hook


def _load(model: str, allow_download: bool, placement: Placement) -> tuple[Any, Any]:
    """The VitsModel on its device and dtype, and its tokenizer; ConfigError when missing."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, VitsModel

    path = Path(model).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or not _REPO_ID.match(model)):
        raise ConfigError(
            f"no VITS model folder at {path}: tts.options.model is a folder saved with "
            "save_pretrained or a Hugging Face repository id such as facebook/mms-tts-eng",
            param="tts.options.model",
        )
    source = str(path) if local else model
    offline = not allow_download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type != "vits":
            raise ConfigError(
                f"{source} is a {config.model_type!r} model, not a VITS one",
                param="tts.options.model",
            )
        vits: Any = VitsModel.from_pretrained(source, config=config, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if local:
            raise ConfigError(
                f"could not load a VITS model from {path}: {_one_line(exc)}",
                param="tts.options.model",
            ) from exc
        raise ConfigError(
            f"VITS model {model!r} is not in the Hugging Face cache: run "
            f"`parley models pull {model}` on a machine with internet (and copy the cache "
            "over), or set tts.options.model to a folder",
            param="tts.options.model",
        ) from exc
    if getattr(tokenizer, "phonemize", False):
        from transformers.utils.import_utils import is_phonemizer_available

        if not is_phonemizer_available():
            raise ConfigError(
                f"the tokenizer of {source} phonemizes: install the phonemizer package "
                "and espeak-ng",
                param="tts.options.model",
            )
    dtype = getattr(torch, placement.dtype)
    vits = vits.to(device=placement.device, dtype=dtype).eval()
    # Weight norm only matters for training; folded once, it is not recomputed per forward.
    from torch.nn.utils import parametrize

    for module in vits.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return vits, tokenizer


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
