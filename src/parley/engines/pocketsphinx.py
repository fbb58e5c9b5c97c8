"""CMU PocketSphinx speech recognition, in-process (the en-US model ships in the wheel).

The decoder is tuned for turn latency rather than for the last point of accuracy: the default
configuration's second pass (``fwdflat``) makes ``end_utt()`` cost 150-700 ms on a small machine,
so it is off, and the beams are narrowed (measured ~5-10x real time with end_utt < 20 ms and
similar word accuracy on the shared clips). Every setting can be overridden through the
constructor's ``decoder_options``.

A decoder takes ~0.33 s and ~90 MB to load, so loaded decoders wait in a pool and each stream
borrows one for its utterance.

Where decoding runs: pocketsphinx holds the GIL for the whole of ``process_raw`` (measured: the
event loop made no progress at all while another thread decoded), so a thread pool would stall
every session's I/O and use one core at most. By default the engine therefore decodes in worker
*processes* (one per core); each utterance sticks to one worker, which owns its decoder, and the
parent only waits on a pipe from a thread. ``processes=0`` decodes in threads of this process
instead (fine for one caller, e.g. the CLI). This module recognises audio; it must not detect
speech or end turns.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import re
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from pocketsphinx import Config, Decoder

from parley.audio.frames import Frame
from parley.engines.base import Transcript, Word
from parley.errors import BadAudioError, ConfigError, EngineUnavailableError

__all__ = ["DEFAULT_DECODER_OPTIONS", "PocketsphinxASR"]

_SAMPLE_RATE = 16000
# Audio goes to the decoder in blocks of this size (100 ms), whatever the caller's chunking.
_BLOCK_BYTES = 2 * 1600

DEFAULT_DECODER_OPTIONS: dict[str, Any] = {
    "beam": 1e-40,
    "wbeam": 1e-30,
    "pbeam": 1e-40,
    "fwdflat": False,
    "bestpath": False,
    # Caps the HMMs searched per frame: ~1.8x faster here at the same word error rate (0.47 on
    # ../shared/speech; 2000 gave 0.48, 1500 gave 0.51).
    "maxhmmpf": 3000,
    "loglevel": "FATAL",
}

# "and(2)" is the second pronunciation of "and".
_ALTERNATE = re.compile(r"\(\d+\)$")


def _clean(word: str) -> str | None:
    """A recognised word without its pronunciation suffix; None for fillers (<s>, [NOISE], ...)."""
    if not word or word[0] in "<[+":
        return None
    return _ALTERNATE.sub("", word) or None


def _normalise_language(language: str) -> str:
    return language.strip().lower().replace("_", "-")


def _supported(language: str) -> bool:
    # One model, American English; it serves other English variants too.
    code = _normalise_language(language)
    return code == "en" or code.startswith("en-")


class _DecoderPool:
    """Idle decoders, shared by every stream of one engine; safe to use from any thread.

    A decoder's live cepstral mean adapts to the audio it hears and would carry one caller's
    channel into the next caller's utterance (measured: WER 0.54 instead of 0.46 over the shared
    clips), so a returned decoder has its feature computation reset (~0.1 ms).
    """

    __slots__ = ("_idle", "_lock", "_max_idle", "_options")

    def __init__(self, options: dict[str, Any], max_idle: int) -> None:
        self._options = options
        self._max_idle = max_idle
        self._idle: list[Decoder] = []
        self._lock = threading.Lock()

    def acquire(self) -> Decoder:
        """An idle decoder, or a newly loaded one (slow: call it off the event loop)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._load()

    def release(self, decoder: Decoder) -> None:
        decoder.reinit_feat()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(decoder)

    def add(self) -> None:
        self.release(self._load())

    def _load(self) -> Decoder:
        try:
            return Decoder(**self._options)
        except (KeyError, ValueError, RuntimeError, OSError) as exc:
            raise EngineUnavailableError(
                f"pocketsphinx decoder could not be loaded: {exc}"
            ) from exc

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)


class _Utterance:
    """One stream's borrowed decoder. Its methods run in worker threads, one at a time."""

    __slots__ = (
        "_decoder",
        "_done",
        "_frate",
        "_lock",
        "_partial_samples",
        "_pending",
        "_pool",
        "_samples",
        "_since_partial",
    )

    def __init__(self, pool: _DecoderPool, partial_samples: int, frate: int) -> None:
        self._pool = pool
        self._partial_samples = partial_samples
        self._frate = frate
        self._decoder: Decoder | None = None
        self._samples = 0
        self._since_partial = 0
        self._pending = bytearray()
        self._done = False
        # A cancelled stream's last feed() may still be running when abort() is submitted.
        self._lock = threading.Lock()

    def feed(self, pcm: bytes) -> str | None:
        """Decode more audio; returns the hypothesis text when a partial is due."""
        with self._lock:
            if self._done:
                return None
            decoder = self._start()
            # Decode in fixed blocks whatever the chunking of the input: the decoder's live
            # normalisation updates per call, so the same audio cut differently (as a loaded
            # server coalesces packets) would otherwise give a different transcript.
            self._pending += pcm
            whole = len(self._pending) - len(self._pending) % _BLOCK_BYTES
            if whole == 0:
                return None
            decoder.process_raw(bytes(self._pending[:whole]), False, False)
            del self._pending[:whole]
            n = whole // 2
            self._samples += n
            self._since_partial += n
            if self._since_partial < self._partial_samples:
                return None
            self._since_partial = 0
            hyp = decoder.hyp()
            return " ".join(_hyp_words(hyp.hypstr)) if hyp is not None else ""

    def finish(self) -> Transcript:
        """End the utterance and return the decoder; the final transcript."""
        with self._lock:
            if self._done:
                raise RuntimeError("utterance already finished")
            self._done = True
            if self._decoder is None:
                # No audio came: nothing to decode, no decoder to borrow.
                return Transcript(text="", is_final=True, language="en")
            decoder = self._decoder
            try:
                if self._pending:
                    decoder.process_raw(bytes(self._pending), False, False)
                    self._samples += len(self._pending) // 2
                    self._pending.clear()
                decoder.end_utt()
                return _final(decoder, self._frate, self._samples / _SAMPLE_RATE)
            finally:
                self._decoder = None
                self._pool.release(decoder)

    def abort(self) -> None:
        """End the utterance, drop its result and give the decoder back (idempotent)."""
        with self._lock:
            self._done = True
            decoder, self._decoder = self._decoder, None
            if decoder is None:
                return
            try:
                decoder.end_utt()
            finally:
                self._pool.release(decoder)

    def _start(self) -> Decoder:
        if self._decoder is None:
            decoder = self._pool.acquire()
            try:
                decoder.start_utt()
            except BaseException:
                self._pool.release(decoder)
                raise
            self._decoder = decoder
        return self._decoder


def _hyp_words(text: str) -> list[str]:
    return [w for w in (_clean(t) for t in text.split()) if w]


def _final(decoder: Decoder, frate: int, duration_s: float) -> Transcript:
    """The transcript of an ended utterance, word times clamped to the audio it was given."""
    words: list[Word] = []
    for seg in decoder.seg():
        text = _clean(seg.word)
        if text is None:
            continue
        start = min(seg.start_frame / frate, duration_s)
        end = min((seg.end_frame + 1) / frate, duration_s)
        words.append(Word(text=text, start_s=start, end_s=max(start, end)))
    if words:
        text = " ".join(w.text for w in words)
    else:
        hyp = decoder.hyp()
        text = " ".join(_hyp_words(hyp.hypstr)) if hyp is not None else ""
    return Transcript(text=text, is_final=True, words=tuple(words), language="en")


# --- worker processes ---------------------------------------------------------------------------


def _worker_main(
    conn: Connection,
    options: dict[str, Any],
    partial_samples: int,
    frate: int,
    max_idle: int,
    warm: int,
) -> None:
    """A decoding process: requests in order on ``conn``, one reply each."""
    pool = _DecoderPool(options, max(max_idle, warm))
    utterances: dict[int, _Utterance] = {}
    for _ in range(warm):
        pool.add()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        kind, uid, payload = request
        try:
            match kind:
                case "feed":
                    utterance = utterances.get(uid)
                    if utterance is None:
                        utterance = utterances[uid] = _Utterance(pool, partial_samples, frate)
                    reply: object = ("ok", utterance.feed(payload))
                case "finish":
                    utterance = utterances.pop(uid, None) or _Utterance(
                        pool, partial_samples, frate
                    )
                    reply = ("ok", utterance.finish())
                case "abort":
                    utterance = utterances.pop(uid, None)
                    if utterance is not None:
                        utterance.abort()
                    reply = ("ok", None)
                case "transcribe":
                    reply = ("ok", _transcribe_with(pool, payload, frate))
                case "close":
                    conn.send(("ok", None))
                    return
                case _:
                    reply = ("error", f"unknown request {kind!r}")
        except Exception as exc:  # reported to the caller, the worker lives on
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class _ProcessWorker:
    """The parent's end of one decoding process. ``call`` blocks: run it from a thread."""

    def __init__(self, context: Any, args: tuple[Any, ...]) -> None:
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_worker_main, args=(child, *args), daemon=True, name="parley-pocketsphinx"
        )
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self.active = 0  # utterances bound to this worker

    def call(self, kind: str, uid: int, payload: object = None) -> Any:
        with self._lock:
            try:
                self._conn.send((kind, uid, payload))
                status, value = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                raise EngineUnavailableError("a pocketsphinx worker process died") from exc
        if status == "error":
            raise EngineUnavailableError(f"pocketsphinx worker failed: {value}")
        return value

    def close(self) -> None:
        try:
            with self._lock:
                self._conn.send(("close", 0, None))
        except (OSError, BrokenPipeError):
            pass
        self._process.join(timeout=2)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _transcribe_with(pool: _DecoderPool, pcm: bytes, frate: int) -> Transcript:
    decoder = pool.acquire()
    try:
        decoder.start_utt()
        try:
            decoder.process_raw(pcm, False, True)
        finally:
            decoder.end_utt()
        return _final(decoder, frate, len(pcm) / 2 / _SAMPLE_RATE)
    finally:
        pool.release(decoder)


def _shutdown(workers: list[_ProcessWorker], executor: ThreadPoolExecutor) -> None:
    for worker in workers:
        worker.close()
    executor.shutdown(wait=False)


class PocketsphinxASR:
    """Streaming English ASR with the bundled CMU en-US model.

    ``partial_interval_ms``: the most often (in audio time) a partial is produced; a partial is
    only produced when the hypothesis changed. ``processes``: decoding processes (default:
    one per core; 0 decodes in threads of this process). ``warm``: decoders loaded up front
    (per process). ``max_idle``: decoders kept loaded between streams, per process (each holds
    ~90 MB). ``threads``: decoding threads when ``processes`` is 0 (default: the CPU count, at
    most 4). Other keyword arguments are pocketsphinx decoder settings and override
    :data:`DEFAULT_DECODER_OPTIONS`.
    """

    name = "pocketsphinx"
    sample_rate = _SAMPLE_RATE

    def __init__(
        self,
        language: str = "en",
        *,
        partial_interval_ms: float = 200.0,
        warm: int = 0,
        max_idle: int = 8,
        threads: int | None = None,
        processes: int | None = None,
        **decoder_options: Any,
    ) -> None:
        if not _supported(language):
            raise ConfigError(
                f"pocketsphinx supports only English ('en', 'en-US', ...), not {language!r}",
                param="asr.language",
            )
        if partial_interval_ms <= 0:
            raise ConfigError("partial_interval_ms must be positive", param="asr.options")
        if (
            warm < 0
            or max_idle < 0
            or (threads is not None and threads < 1)
            or (processes is not None and processes < 0)
        ):
            raise ConfigError(
                "warm, max_idle and processes must be >= 0 and threads >= 1", param="asr.options"
            )
        options = {**DEFAULT_DECODER_OPTIONS, **decoder_options}
        try:
            config = Config(**options)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"bad pocketsphinx option: {exc}", param="asr.options") from exc
        if int(config["samprate"]) != _SAMPLE_RATE:
            raise ConfigError(f"pocketsphinx samprate must be {_SAMPLE_RATE}", param="asr.options")
        self._frate = int(config["frate"])
        self._partial_samples = max(1, round(partial_interval_ms * _SAMPLE_RATE / 1000))
        self._pool = _DecoderPool(options, max(max_idle, warm))
        self._processes = (os.cpu_count() or 1) if processes is None else processes
        self._workers: list[_ProcessWorker] = []
        self._worker_args = (options, self._partial_samples, self._frate, max_idle, warm)
        self._uids = itertools.count(1)
        workers = threads if threads is not None else min(4, os.cpu_count() or 1)
        # With worker processes these threads only wait on pipes, two per process at most.
        workers = max(workers, 2 * self._processes)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="pocketsphinx")
        weakref.finalize(self, _shutdown, self._workers, self._executor)
        if self._processes == 0:
            for _ in range(warm):
                self._pool.add()

    def _worker(self) -> _ProcessWorker:
        """The least busy worker process (started on first use: spawning costs ~0.5 s)."""
        if not self._workers:
            context = multiprocessing.get_context("spawn")
            self._workers.extend(
                _ProcessWorker(context, self._worker_args) for _ in range(self._processes)
            )
        return min(self._workers, key=lambda w: w.active)

    @property
    def idle(self) -> int:
        """Loaded decoders waiting for a stream."""
        return len(self._pool)

    def _check(self, language: str | None) -> None:
        if language is not None and not _supported(language):
            raise ConfigError(
                f"pocketsphinx supports only English ('en', 'en-US', ...), not {language!r}",
                param="language",
            )

    async def stream(
        self, audio: AsyncIterable[Frame], *, language: str | None = None
    ) -> AsyncGenerator[Transcript, None]:
        """Partials while ``audio`` flows (when the hypothesis changes); one final at its end."""
        self._check(language)
        if self._processes:
            async for transcript in self._stream_in_worker(audio):
                yield transcript
            return
        loop = asyncio.get_running_loop()
        utterance = _Utterance(self._pool, self._partial_samples, self._frate)
        finished = False
        try:
            last = ""
            async for frame in audio:
                _check_rate(frame)
                if not len(frame):
                    continue
                text = await loop.run_in_executor(self._executor, utterance.feed, frame.to_bytes())
                if text and text != last:
                    last = text
                    yield Transcript(text=text, is_final=False, language="en")
            final = await loop.run_in_executor(self._executor, utterance.finish)
            finished = True
            yield final
        finally:
            if not finished:
                # Runs after any feed() still in flight (the utterance's lock); shielded so that
                # a second cancellation cannot leave the decoder out of the pool.
                await asyncio.shield(loop.run_in_executor(self._executor, utterance.abort))

    async def _stream_in_worker(
        self, audio: AsyncIterable[Frame]
    ) -> AsyncGenerator[Transcript, None]:
        loop = asyncio.get_running_loop()
        worker = self._worker()
        uid = next(self._uids)
        worker.active += 1
        finished = False
        try:
            last = ""
            async for frame in audio:
                _check_rate(frame)
                if not len(frame):
                    continue
                text = await loop.run_in_executor(
                    self._executor, worker.call, "feed", uid, frame.to_bytes()
                )
                if text and text != last:
                    last = text
                    yield Transcript(text=text, is_final=False, language="en")
            final: Transcript = await loop.run_in_executor(
                self._executor, worker.call, "finish", uid
            )
            finished = True
            yield final
        finally:
            worker.active -= 1
            if not finished:
                # Shielded so that a second cancellation cannot leave the decoder borrowed.
                await asyncio.shield(
                    loop.run_in_executor(self._executor, worker.call, "abort", uid)
                )

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        """A whole recording at once (batch normalisation: a little more accurate than stream)."""
        self._check(language)
        _check_rate(audio)
        loop = asyncio.get_running_loop()
        if self._processes:
            worker = self._worker()
            result: Transcript = await loop.run_in_executor(
                self._executor, worker.call, "transcribe", 0, audio.to_bytes()
            )
            return result
        return await loop.run_in_executor(self._executor, self._transcribe, audio.to_bytes())

    def _transcribe(self, pcm: bytes) -> Transcript:
        return _transcribe_with(self._pool, pcm, self._frate)


def _check_rate(frame: Frame) -> None:
    if frame.sample_rate != _SAMPLE_RATE:
        raise BadAudioError(
            f"pocketsphinx needs {_SAMPLE_RATE} Hz audio, got {frame.sample_rate} Hz",
            param="audio",
        )
