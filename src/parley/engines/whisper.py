"""Whisper speech recognition through faster-whisper (CTranslate2), batched across sessions.

Every decode is one request to the engine's :class:`~parley.engines.batching.Scheduler`: a window
of at most 30 s of 16 kHz audio. A batch of windows, from any number of sessions, becomes one
stack of log-mel features and ONE CTranslate2 ``generate`` (encoder and greedy or beam decoder)
on a dedicated worker thread. ``max_batch_size=1`` turns batching off.

Encoder window (``window_s``, ``window_margin_s``): Whisper's reference pads every window to
30 s, whose encoder pass is most of a decode's cost. CTranslate2 also encodes fewer frames, so
a window is the audio plus ``window_margin_s`` of silence, rounded up to the smallest of
``window_s`` (default 10/15/20/30 s plus 3 s); a batch runs one generate per window size. Measured
with tiny.en on the 13 English clips of ``../shared/speech`` (2-11 s; 2-core CPU, shared, so
the times are noisy; ``benchmarks/bench_whisper_window.py``): decode p50 563 ms at 30 s, 298 ms
at 20 s, ~160-210 ms at 10-15 s, WER 0.102 at 30 s and 0.121 at 10-20 s (the difference:
"eight" written "8" on one clip, one word on another). Less padding makes tiny.en loop: the
audio plus 0-3 s (WER 0.59-1.55), a fixed 8 s window (0.44), and 8.5-9 s of audio in a 10 s
window repeated its last sentence; hence a 10 s floor and a 3 s margin. ``window_s=(30,)``,
``window_margin_s=0`` is the reference.

Streaming: Whisper is not incremental, so :meth:`WhisperASR.stream` re-decodes the utterance so
far every ``partial_interval_ms`` of new audio (at most one such partial decode outstanding per
stream, queued as a continuation so that it never delays anyone's final) and yields it when
the text changed. ``partials=False`` (nobody reads partial transcripts) decodes none. Under
load partials thin out: none is submitted while any request waits in the scheduler's queue
(it would only delay someone's window or final; it is retried at the next frame), and after a
partial that took longer than ``partial_interval_ms`` to come back (queueing plus decoding) the
next one waits for a whole interval of audio counted from its return rather than from its
submission, so that a slow engine spends at most about half its time on one stream's partials
(``adaptive_partials=False`` turns both rules off: a partial every interval of audio, at most
one outstanding). ``stable_partials=True`` applies local agreement: a partial shows only the
words that it and the previous partial agree on, so partials only grow (deltas stay
append-only); it costs no decode, and the final may still differ from the last partial.

When the audio ends, outstanding partials are aborted and the final decode is queued as a
*first* request, ahead of every session's partials. A pause mark (an empty frame: the caller
went quiet; see :class:`~parley.engines.base.ASR`) starts that final decode speculatively, as a
first request; if the stream ends with no audio after the mark its text is the final (no second
decode), and audio after the mark aborts it. A decode of exactly the same samples that is
already running or done (a partial of the whole utterance, when nothing came after it) is
reused as the final in the same way; such a partial stays a continuation request. An
utterance longer than 30 s is cut into 30 s windows; each full window is decoded once as soon
as it fills and the final joins the windows' texts.

Decoding follows Whisper's reference otherwise: the prompt is ``<|startoftranscript|>`` (plus
language and task tokens on multilingual models) and ``<|notimestamps|>``, and a window whose
no-speech probability is high and whose text is unlikely is dropped as silence (faster-whisper's
thresholds), the usual guard against Whisper inventing text for silence. There is no
temperature fallback and no conditioning on the previous window's text.

Transcripts carry no word timings (``Transcript.words`` is empty) and their ``language`` is
the one decoded with (English-only models always report ``en``); the language is not detected.

Models: a local folder holding a CTranslate2 Whisper conversion (model.bin, config.json,
tokenizer.json, vocabulary.*), or a faster-whisper size name / hub repository id found in the
Hugging Face cache (``parley models pull whisper:NAME`` puts it there). Nothing is downloaded
unless ``allow_download=True``.

This module turns audio into text; it must not detect speech or end turns.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from parley.audio.frames import PCM16, Float32, Frame, int16_to_float32
from parley.audio.resample import StreamResampler, resample
from parley.engines.base import Transcript
from parley.engines.batching import BatchRequest, RequestAborted, Scheduler
from parley.engines.device import Placement, place
from parley.engines.whisper_features import WindowRule
from parley.engines.whisper_features import log_mel as _log_mel
from parley.engines.whisper_loading import load as _load
from parley.engines.whisper_loading import resolve as _resolve
from parley.engines.whisper_stream import WINDOW_SAMPLES as _WINDOW_SAMPLES
from parley.engines.whisper_stream import Agreement as _Agreement
from parley.engines.whisper_stream import Utterance as _Utterance
from parley.engines.whisper_stream import join as _join
from parley.engines.whisper_stream import next_frame as _next_frame
from parley.engines.whisper_stream import partial_text as _partial_text
from parley.engines.whisper_stream import reusable as _reusable
from parley.errors import ConfigError, EngineError

__all__ = ["WhisperASR"]

_SAMPLE_RATE = 16000
# Shorter audio is not worth a decode: Whisper only invents text for it.
_MIN_SAMPLES = _SAMPLE_RATE // 10
# Whisper's decoder has 448 positions for prompt and text together.
_TEXT_POSITIONS = 448
# faster-whisper's defaults: a window is silence when the model says so and its text is unlikely.
_NO_SPEECH_THRESHOLD = 0.6
_LOG_PROB_THRESHOLD = -1.0

_DTYPES = {
    "cpu": ["float32", "int8"],
    "cuda": ["float16", "bfloat16", "int8_float16", "int8_bfloat16", "int8", "float32"],
}
_PARAM = "asr.options"


@dataclass(frozen=True, slots=True)
class _Window:
    """One request's payload: up to 30 s of audio and the prompt to decode it with."""

    samples: Float32
    prompt: tuple[int, ...]
    kind: Literal["partial", "window", "final"]


class WhisperASR:
    """Whisper ASR (faster-whisper's CTranslate2 models), batched across sessions.

    ``model``: a folder with a CTranslate2 Whisper conversion, or a faster-whisper size name
    (``tiny.en`` ... ``large-v3``, ``turbo``) or hub repository id in the Hugging Face cache
    (``download_root`` names another cache folder; ``allow_download=True`` lets faster-whisper
    fetch it). ``language``: what multilingual models transcribe (English-only ones ignore it);
    a call's ``language`` overrides it. ``device``: ``auto``/``cpu``/``cuda[:N]``; ``dtype``:
    ``float32`` or ``int8`` on the CPU (``auto``: ``int8``), ``float16``, ``bfloat16``,
    ``int8_float16``, ``int8_bfloat16``, ``int8`` or ``float32`` on CUDA (``auto``: ``float16``).

    ``max_batch_size`` windows per batch, waiting at most ``max_wait_ms`` for one to fill;
    ``partial_interval_ms``: audio between partial decodes of a stream; ``beam_size`` 1 is greedy;
    ``max_new_tokens``: text tokens per 30 s window, and ``max_tokens_per_second`` of audio
    (plus 8; 0: no such cap) against Whisper's repetition loops; ``cpu_threads``: CTranslate2's
    threads on the CPU (0: its default); ``window_s`` (bucket sizes, seconds) and
    ``window_margin_s``: the encoder window, the smallest bucket holding the audio plus the
    margin (see the module's docstring for the measurements behind the defaults);
    ``adaptive_partials=False``: partials every ``partial_interval_ms`` whatever the load;
    ``stable_partials``: local agreement, a partial shows only the words that it and the one
    before agree on, so that partials only ever grow (the final may still differ).
    """

    name = "whisper"
    sample_rate = _SAMPLE_RATE

    def __init__(
        self,
        *,
        model: str = "tiny.en",
        language: str = "en",
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        partial_interval_ms: float = 500.0,
        beam_size: int = 1,
        max_new_tokens: int = 224,
        max_tokens_per_second: float = 10.0,
        cpu_threads: int = 0,
        window_s: Sequence[float] = (10.0, 15.0, 20.0, 30.0),
        window_margin_s: float = 3.0,
        adaptive_partials: bool = True,
        stable_partials: bool = False,
        download_root: str | None = None,
        allow_download: bool = False,
    ) -> None:
        if partial_interval_ms <= 0:
            raise ConfigError("partial_interval_ms must be positive", param=_PARAM)
        if max_batch_size < 1 or beam_size < 1 or max_new_tokens < 1:
            raise ConfigError(
                "max_batch_size, beam_size and max_new_tokens must be at least 1", param=_PARAM
            )
        if max_wait_ms < 0 or cpu_threads < 0 or max_tokens_per_second < 0:
            raise ConfigError(
                "max_wait_ms, max_tokens_per_second and cpu_threads must not be negative",
                param=_PARAM,
            )
        self.window = WindowRule.of(window_s, window_margin_s)
        self._adaptive = adaptive_partials
        self._stable = stable_partials
        import ctranslate2

        cpu_types = ctranslate2.get_supported_compute_types("cpu")
        self.placement: Placement = place(
            device,
            dtype,
            cuda_count=ctranslate2.get_cuda_device_count,
            backend="CTranslate2",
            dtypes={"cpu": [t for t in _DTYPES["cpu"] if t in cpu_types], "cuda": _DTYPES["cuda"]},
            auto_dtype={"cpu": "int8", "cuda": "float16"},
            param=_PARAM,
        )
        path = _resolve(model, download_root=download_root, allow_download=allow_download)
        self._model = _load(path, self.placement, cpu_threads)
        self._multilingual = bool(self._model.model.is_multilingual)
        self._supported: tuple[str, ...] = tuple(self._model.supported_languages)
        self._prompts: dict[str, tuple[int, ...]] = {}
        self.language = self._language(language, param="asr.language")
        prompt = self._prompt(self.language)
        if len(prompt) + max_new_tokens > _TEXT_POSITIONS:
            raise ConfigError(
                f"max_new_tokens must be at most {_TEXT_POSITIONS - len(prompt)} for this model "
                f"(Whisper has {_TEXT_POSITIONS} text positions, the prompt takes {len(prompt)})",
                param=_PARAM,
            )
        self._eot = self._tokenizer(self.language).eot
        self._beam_size = beam_size
        self._max_new_tokens = max_new_tokens
        self._tokens_per_second = max_tokens_per_second
        self._partial_samples = max(1, round(partial_interval_ms * _SAMPLE_RATE / 1000))
        self._partial_s = partial_interval_ms / 1000
        self._sessions = itertools.count(1)
        # One thread: one generate at a time uses the whole device; more would only contend.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="whisper")
        weakref.finalize(self, self._worker.shutdown, wait=False)
        self.scheduler = Scheduler(
            self.name,
            self._execute,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_ms / 1000.0,
        )

    # --- languages and prompts -------------------------------------------------------------

    @property
    def languages(self) -> frozenset[str]:
        """The ISO 639-1 codes this model transcribes (English-only models: ``en``)."""
        return frozenset(self._supported) if self._multilingual else frozenset({"en"})

    def _language(self, language: str | None, *, param: str = "language") -> str:
        """The language code to decode with; ConfigError when the model cannot."""
        if language is None:
            return self.language
        if not self._multilingual:
            if language.strip().lower().replace("_", "-").split("-")[0] != "en":
                raise ConfigError(
                    f"this Whisper model transcribes English only, not {language!r}; use a "
                    "multilingual model (asr.options.model = small) for other languages",
                    param=param,
                )
            return "en"
        code = language.strip().lower().replace("_", "-").split("-")[0]
        if code not in self._supported:
            raise ConfigError(
                f"Whisper does not know the language {language!r}; use an ISO 639-1 code "
                "such as en, de, fr, es",
                param=param,
            )
        return code

    def _tokenizer(self, language: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        return Tokenizer(
            self._model.hf_tokenizer, self._multilingual, task="transcribe", language=language
        )

    def _prompt(self, language: str) -> tuple[int, ...]:
        prompt = self._prompts.get(language)
        if prompt is None:
            tokenizer = self._tokenizer(language)
            prompt = (*tokenizer.sot_sequence, tokenizer.no_timestamps)
            if None in prompt:  # e.g. <|yue|>, which only large-v3 models know
                raise ConfigError(
                    f"this Whisper model has no token for the language {language!r}",
                    param="language",
                )
            self._prompts[language] = prompt
        return prompt

    # --- batched execution -----------------------------------------------------------------

    async def _execute(self, requests: Sequence[BatchRequest]) -> Mapping[str, object]:
        windows = []
        for request in requests:
            assert isinstance(request.payload, _Window)
            windows.append(request.payload)
        loop = asyncio.get_running_loop()
        texts = await loop.run_in_executor(self._worker, self._decode_batch, windows)
        return {r.id: text for r, text in zip(requests, texts, strict=True)}

    def _decode_batch(self, windows: Sequence[_Window]) -> list[str]:
        """One CTranslate2 generate per window size in the batch; runs on the worker thread.

        Windows of one size stack into one generate. A batch of several sizes runs one
        generate per size rather than padding all to the largest: a window then decodes to
        the same text in any batch as alone, and short windows never pay for a 30 s encode.
        """
        sizes = [self.window.frames(len(w.samples)) for w in windows]
        texts = [""] * len(windows)
        for size in sorted(set(sizes)):
            rows = [i for i, s in enumerate(sizes) if s == size]
            for i, text in zip(rows, self._generate([windows[i] for i in rows], size), strict=True):
                texts[i] = text
        return texts

    def _generate(self, windows: Sequence[_Window], frames: int) -> list[str]:
        """One CTranslate2 generate for ``windows``, each in a window of ``frames`` frames."""
        import ctranslate2

        extractor = self._model.feature_extractor
        features = np.stack([_log_mel(extractor, w.samples, frames) for w in windows])
        prompts = [list(w.prompt) for w in windows]
        caps = [self._token_cap(len(w.samples)) for w in windows]
        longest = max(caps)
        # CTranslate2 caps the new tokens at half of max_length (OpenAI's sample_len), and at
        # max_length minus the prompt: ask for enough that our cap is the binding limit.
        max_length = max(2 * longest, longest + len(prompts[0]))
        try:
            results = self._model.model.generate(
                ctranslate2.StorageView.from_array(features),
                prompts,
                beam_size=self._beam_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"Whisper decoding failed: {exc}") from exc
        texts = []
        for result, cap in zip(results, caps, strict=True):
            tokens = result.sequences_ids[0][:cap]
            # CTranslate2's score is the log probability over the length; faster-whisper
            # averages over the length plus the end-of-text token.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            if result.no_speech_prob > _NO_SPEECH_THRESHOLD and avg_logprob < _LOG_PROB_THRESHOLD:
                texts.append("")
                continue
            text = self._model.hf_tokenizer.decode([t for t in tokens if t < self._eot])
            texts.append(text.strip())
        return texts

    def _token_cap(self, samples: int) -> int:
        """Text tokens a window of ``samples`` may decode to.

        Speech runs at 2-5 Whisper tokens a second in English; a decoder caught in Whisper's
        known repetition loop would otherwise run to ``max_new_tokens`` on every window. A
        batch decodes as far as its largest cap; each window's text is cut to its own.
        """
        if self._tokens_per_second == 0:
            return self._max_new_tokens
        seconds = samples / _SAMPLE_RATE
        return min(self._max_new_tokens, 8 + math.ceil(seconds * self._tokens_per_second))

    async def _decode(
        self,
        session: str,
        samples: Float32,
        prompt: tuple[int, ...],
        kind: Literal["partial", "window", "final"],
    ) -> str:
        text = await self.scheduler.submit(
            session, _Window(samples, prompt, kind), first=kind == "final"
        )
        assert isinstance(text, str)
        return text

    # --- the ASR Protocol ------------------------------------------------------------------

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        """A whole recording: its 30 s windows decoded concurrently (all as first requests)."""
        code = self._language(language)
        prompt = self._prompt(code)
        samples = int16_to_float32(resample(audio, _SAMPLE_RATE).samples)
        windows = [
            samples[i : i + _WINDOW_SAMPLES]
            for i in range(0, len(samples), _WINDOW_SAMPLES)
            if len(samples) - i >= _MIN_SAMPLES
        ]
        if not windows:
            return Transcript("", is_final=True, language=code)
        session = f"{self.name}:{next(self._sessions)}"
        done = False
        try:
            texts = await asyncio.gather(
                *(self._decode(session, w, prompt, "final") for w in windows)
            )
            done = True
        finally:
            if not done:
                self.scheduler.abort(session)
        return Transcript(_join(texts), is_final=True, language=code)

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        """Partials while ``audio`` flows (when the text changes, and only with ``partials``);
        one final at its end. An empty frame is a pause mark: a speculative final starts."""
        code = self._language(language)
        prompt = self._prompt(code)
        session = f"{self.name}:{next(self._sessions)}"
        # Partials and the speculative final get sessions of their own, to be aborted alone.
        partial_id, speculative_id = f"{session}:partial", f"{session}:speculative"
        utterance = _Utterance()
        windows: list[asyncio.Task[str]] = []
        partial: asyncio.Task[str] | None = None
        speculative: asyncio.Task[str] | None = None
        # The latest decode of the whole current tail, by the stream's sample count when it
        # was taken: a partial or the speculative final, running or done.
        latest: tuple[int, asyncio.Task[str]] | None = None
        incoming: asyncio.Task[Frame | None] | None = None
        resampler: StreamResampler | None = None
        since_partial, total, started = 0, 0, 0.0
        last = ""
        agreement = _Agreement() if self._stable else None
        frames = aiter(audio)
        try:
            while True:
                if partial is not None and partial.done():
                    text = _partial_text(partial, windows)
                    # Adaptive: a partial that took longer than the interval to come back
                    # (queueing and decoding) means a loaded engine; the next one waits for a
                    # whole interval of audio from now, not from this one's submission.
                    if self._adaptive and time.monotonic() - started > self._partial_s:
                        since_partial = 0
                    partial = None
                    if text and agreement is not None:
                        text = agreement.update(text) or ""
                    if text and text != last:
                        last = text
                        yield Transcript(text, is_final=False, language=code)
                if partial is None and incoming is None:
                    frame = await _next_frame(frames)
                else:
                    # A partial is being decoded: wait for it or the next frame, whichever
                    # comes first, so that its text is yielded while the audio still flows.
                    if incoming is None:
                        incoming = asyncio.create_task(_next_frame(frames))
                    waiting = (incoming,) if partial is None else (incoming, partial)
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if not incoming.done():
                        continue
                    frame, incoming = incoming.result(), None
                if frame is None:
                    break
                if not len(frame):
                    # A pause mark: what the resampler holds is the pause's first samples.
                    if resampler is not None:
                        total += self._add(utterance, resampler.flush(), session, prompt, windows)
                        resampler = None
                    if utterance.samples >= _MIN_SAMPLES and not _reusable(latest, total):
                        speculative = asyncio.create_task(
                            self._decode(speculative_id, utterance.current(), prompt, "final")
                        )
                        latest = (total, speculative)
                    continue
                if speculative is not None:
                    # The caller went on: the speculative final is out of date.
                    self._drop(speculative_id, speculative)
                    speculative = None
                samples = frame.samples
                if frame.sample_rate == _SAMPLE_RATE and resampler is not None:
                    # Back at 16 kHz: what the resampler still holds comes first.
                    samples = np.concatenate([resampler.flush(), samples])
                    resampler = None
                if frame.sample_rate != _SAMPLE_RATE:
                    tail = None
                    if resampler is None or resampler.in_rate != frame.sample_rate:
                        tail = None if resampler is None else resampler.flush()
                        resampler = StreamResampler(frame.sample_rate, _SAMPLE_RATE)
                    samples = resampler.process(samples)
                    if tail is not None:
                        samples = np.concatenate([tail, samples])
                filled = len(windows)
                total += self._add(utterance, samples, session, prompt, windows)
                if len(windows) > filled:
                    # A partial in flight covers the window just decoded: it is out of date.
                    self._drop(partial_id, partial)
                    since_partial = 0
                since_partial += len(samples)
                if (
                    partials
                    and partial is None
                    and since_partial >= self._partial_samples
                    and utterance.samples >= _MIN_SAMPLES
                    # Under load, no partial: it would only delay someone's window or final.
                    and (not self._adaptive or self.scheduler.queued == 0)
                ):
                    since_partial, started = 0, time.monotonic()
                    partial = asyncio.create_task(
                        self._decode(partial_id, utterance.current(), prompt, "partial")
                    )
                    latest = (total, partial)
            if resampler is not None:
                total += self._add(utterance, resampler.flush(), session, prompt, windows)
            final: asyncio.Task[str] | None = None
            if latest is not None and _reusable(latest, total):
                # Nothing came after that decode began: its text is the final's.
                final = latest[1]
            if partial is not final:
                # The user is waiting on the final now: partials would only delay it.
                self._drop(partial_id, partial)
                if partial is not None:
                    await asyncio.gather(partial, return_exceptions=True)
                    partial = None
            if final is None and utterance.samples >= _MIN_SAMPLES:
                final = asyncio.create_task(
                    self._decode(session, utterance.current(), prompt, "final")
                )
            texts = await asyncio.gather(*windows)
            if final is not None:
                texts.append(await self._final_text(final, session, utterance, prompt))
            yield Transcript(_join(texts), is_final=True, language=code)
        finally:
            # Barge-in, disconnect or done: free the engine of this stream's queued work and
            # leave no task behind.
            for owner in (session, partial_id, speculative_id):
                self.scheduler.abort(owner)
            tasks = [t for t in (partial, speculative, incoming, *windows) if t is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _add(
        self,
        utterance: _Utterance,
        samples: PCM16,
        session: str,
        prompt: tuple[int, ...],
        windows: list[asyncio.Task[str]],
    ) -> int:
        """Append ``samples`` to the utterance, queueing a decode of each window they fill."""
        for full in utterance.add(int16_to_float32(samples)):
            windows.append(asyncio.create_task(self._decode(session, full, prompt, "window")))
        return len(samples)

    async def _final_text(
        self,
        final: asyncio.Task[str],
        session: str,
        utterance: _Utterance,
        prompt: tuple[int, ...],
    ) -> str:
        """The final decode's text; a reused decode that was aborted after all is redone."""
        try:
            return await final
        except RequestAborted:
            pass
        return await self._decode(session, utterance.current(), prompt, "final")

    def _drop(self, partials: str, partial: asyncio.Task[str] | None) -> None:
        """Abort a stream's partial decode: queued, running, or not yet submitted."""
        self.scheduler.abort(partials)
        if partial is not None:
            partial.cancel()
