"""PocketSphinx decoding inside one process: decoders, utterances, and a worker's request loop.

This is what runs wherever :class:`~parley.engines.pocketsphinx.PocketsphinxASR` decodes: in
threads of the server process (``processes=0``) or in a worker process, whose loop
(:func:`worker_main`) is here too. It must not know where it runs: processes, admission and
health are the engine's (``pocketsphinx.py``).

Memory is bounded whatever the audio:

- An utterance holds its decoder's search state, which grows with the audio decoded since
  ``start_utt()`` and is kept at its high-water mark afterwards (measured: one 600 s stream grew
  a worker by 138 MB for good, ~0.23 MB per second of speech). So an utterance is decoded in
  segments of about ``segment_s`` seconds (:class:`Segmenter`): the decoder's utterance is ended
  at a quiet 100 ms block once a segment is that long (at the latest ``_GRACE_S`` later) and
  a new one begins; the words of all segments make the transcript, timed from the first sample.
  The cepstral mean is not reset between segments: it is the same speaker and channel. (This
  is no turn detection: the caller's utterance goes on, only the decoder's is cut.)
- Audio waits in an utterance for less than one 100 ms block; callers send it in pieces.
- Decoders (~90 MB each) are loaded per concurrent utterance and at most ``max_idle`` are kept;
  glibc keeps what is freed unless told (measured: 605 MB held after freeing 9 of 10 decoders,
  141 MB after ``malloc_trim``), so an idle worker trims its heap after dropping one.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from pocketsphinx import Decoder

from parley.engines.base import Transcript, Word
from parley.errors import EngineUnavailableError

__all__ = [
    "BLOCK_BYTES",
    "DEFAULT_DECODER_OPTIONS",
    "SAMPLE_RATE",
    "DecoderPool",
    "Segmenter",
    "Utterance",
    "transcribe_with",
    "worker_main",
]

SAMPLE_RATE = 16000
# Audio goes to the decoder in blocks of this size (100 ms), whatever the caller's chunking.
BLOCK_BYTES = 2 * 1600
_BLOCK_SAMPLES = BLOCK_BYTES // 2
# A segment past ``segment_s`` ends at the first block this much quieter than its mean energy
# (-10 dB: a pause between words), at the latest this many seconds later.
_QUIET = 0.1
_GRACE_S = 5.0

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


def hyp_words(text: str) -> list[str]:
    return [w for w in (_clean(t) for t in text.split()) if w]


class DecoderPool:
    """Idle decoders, shared by every utterance of one process; safe to use from any thread.

    A decoder's live cepstral mean adapts to the audio it hears and would carry one caller's
    channel into the next caller's utterance (measured: WER 0.54 instead of 0.46 over the shared
    clips), so a returned decoder has its feature computation reset (~0.1 ms).
    """

    __slots__ = ("_idle", "_lock", "_max_idle", "_options", "dropped")

    def __init__(self, options: dict[str, Any], max_idle: int) -> None:
        self._options = options
        self._max_idle = max_idle
        self._idle: list[Decoder] = []
        self._lock = threading.Lock()
        self.dropped = False
        """A decoder was let go since the owner last cleared this (time to trim the heap)."""

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
            else:
                self.dropped = True

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


class Segmenter:
    """Where to end the decoder's utterance inside a long one (see the module docstring).

    Fed whole 100 ms blocks in order, however they are chunked; :meth:`cuts` gives the byte
    offsets, in what it was just given, after which a segment ends. Only block energies decide,
    so the same audio is cut in the same places whatever its chunking.
    """

    __slots__ = ("_blocks", "_energy", "_max_blocks", "_min_blocks")

    def __init__(self, segment_s: float) -> None:
        self._min_blocks = max(1, round(segment_s * SAMPLE_RATE / _BLOCK_SAMPLES))
        self._max_blocks = self._min_blocks + round(_GRACE_S * SAMPLE_RATE / _BLOCK_SAMPLES)
        self._blocks = 0
        self._energy = 0.0

    def cuts(self, pcm: bytes) -> list[int]:
        n = len(pcm) // BLOCK_BYTES
        # Integer sums, not np.dot: BLAS would start threads that spin on the other cores.
        samples = np.frombuffer(pcm, np.int16, n * _BLOCK_SAMPLES).astype(np.int64)
        if self._blocks + n < self._min_blocks:
            # Far from a cut (the common case): only the running energy is needed.
            self._energy += float(np.square(samples).sum()) / _BLOCK_SAMPLES
            self._blocks += n
            return []
        energies = np.square(samples).reshape(n, _BLOCK_SAMPLES).sum(axis=1) / _BLOCK_SAMPLES
        cuts: list[int] = []
        for i, energy in enumerate(energies.tolist()):
            self._blocks += 1
            self._energy += energy
            if self._blocks >= self._min_blocks and (
                energy <= _QUIET * self._energy / self._blocks or self._blocks >= self._max_blocks
            ):
                cuts.append((i + 1) * BLOCK_BYTES)
                self._blocks = 0
                self._energy = 0.0
        return cuts


def _final(decoder: Decoder, frate: int, duration_s: float, offset_s: float) -> Transcript:
    """The transcript of an ended decoder utterance that began ``offset_s`` into the caller's;
    word times clamped to the ``duration_s`` of audio it was given."""
    words: list[Word] = []
    for seg in decoder.seg() or ():  # None when the utterance had no frames
        text = _clean(seg.word)
        if text is None:
            continue
        start = min(seg.start_frame / frate, duration_s)
        end = max(start, min((seg.end_frame + 1) / frate, duration_s))
        words.append(Word(text=text, start_s=offset_s + start, end_s=offset_s + end))
    if words:
        text = " ".join(w.text for w in words)
    else:
        hyp = decoder.hyp()
        text = " ".join(hyp_words(hyp.hypstr)) if hyp is not None else ""
    return Transcript(text=text, is_final=True, words=tuple(words), language="en")


def _joined(parts: list[Transcript]) -> Transcript:
    if len(parts) == 1:
        return parts[0]
    return Transcript(
        text=" ".join(p.text for p in parts if p.text),
        is_final=True,
        words=tuple(itertools.chain.from_iterable(p.words for p in parts)),
        language="en",
    )


class Utterance:
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
        "_segment_start",
        "_segmenter",
        "_segments",
        "_since_partial",
    )

    def __init__(
        self, pool: DecoderPool, partial_samples: int, frate: int, segment_s: float
    ) -> None:
        self._pool = pool
        self._partial_samples = partial_samples
        self._frate = frate
        self._segmenter = Segmenter(segment_s)
        self._decoder: Decoder | None = None
        self._samples = 0
        self._segment_start = 0  # first sample of the decoder's current utterance
        self._segments: list[Transcript] = []  # of the segments already ended
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
            whole = len(self._pending) - len(self._pending) % BLOCK_BYTES
            if whole == 0:
                return None
            blocks = bytes(self._pending[:whole])
            del self._pending[:whole]
            start = 0
            for cut in self._segmenter.cuts(blocks):
                self._decode(decoder, blocks[start:cut])
                self._next_segment(decoder)
                start = cut
            if start < whole:
                self._decode(decoder, blocks[start:])
            self._since_partial += whole // 2
            if self._since_partial < self._partial_samples:
                return None
            self._since_partial = 0
            hyp = decoder.hyp()
            words = [p.text for p in self._segments if p.text]
            return " ".join([*words, *(hyp_words(hyp.hypstr) if hyp is not None else [])])

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
                    self._decode(decoder, bytes(self._pending))
                    self._pending.clear()
                decoder.end_utt()
                return _joined([*self._segments, self._segment_final(decoder)])
            finally:
                self._decoder = None
                self._segments.clear()
                self._pool.release(decoder)

    def abort(self) -> None:
        """End the utterance, drop its result and give the decoder back (idempotent)."""
        with self._lock:
            self._done = True
            self._segments.clear()
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

    def _decode(self, decoder: Decoder, pcm: bytes) -> None:
        decoder.process_raw(pcm, False, False)
        self._samples += len(pcm) // 2

    def _segment_final(self, decoder: Decoder) -> Transcript:
        return _final(
            decoder,
            self._frate,
            (self._samples - self._segment_start) / SAMPLE_RATE,
            self._segment_start / SAMPLE_RATE,
        )

    def _next_segment(self, decoder: Decoder) -> None:
        decoder.end_utt()
        self._segments.append(self._segment_final(decoder))
        self._segment_start = self._samples
        decoder.start_utt()


def transcribe_with(pool: DecoderPool, pcm: bytes, frate: int, segment_s: float) -> Transcript:
    """A whole recording, normalised per segment (batch: a little more accurate than a stream)."""
    whole = len(pcm) - len(pcm) % BLOCK_BYTES
    bounds = [0, *Segmenter(segment_s).cuts(pcm[:whole]), len(pcm)]
    decoder = pool.acquire()
    try:
        parts: list[Transcript] = []
        for start, end in itertools.pairwise(bounds):
            if end <= start and parts:
                continue
            decoder.start_utt()
            try:
                if end > start:
                    decoder.process_raw(pcm[start:end], False, True)
            finally:
                decoder.end_utt()
            duration_s = (end - start) / 2 / SAMPLE_RATE
            parts.append(_final(decoder, frate, duration_s, start / 2 / SAMPLE_RATE))
        return _joined(parts)
    finally:
        pool.release(decoder)


def _heap_trimmer() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``; a no-op where the C library has none (musl, macOS)."""
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int

    def trim() -> None:
        malloc_trim(0)

    return trim


def worker_main(
    conn: Connection,
    options: dict[str, Any],
    partial_samples: int,
    frate: int,
    max_idle: int,
    warm: int,
    segment_s: float,
) -> None:
    """A decoding process: says ``("ready", pid)`` once its warm decoders are loaded, then
    serves requests in order on ``conn``, one reply each. The parent sends one request at a
    time and waits for its reply, so nothing queues in the pipe."""
    pool = DecoderPool(options, max(max_idle, warm))
    utterances: dict[int, Utterance] = {}
    trim = _heap_trimmer()
    for _ in range(warm):
        pool.add()
    conn.send(("ready", os.getpid()))
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
                        utterance = utterances[uid] = Utterance(
                            pool, partial_samples, frate, segment_s
                        )
                    reply: object = ("ok", utterance.feed(payload))
                case "finish":
                    utterance = utterances.pop(uid, None) or Utterance(
                        pool, partial_samples, frate, segment_s
                    )
                    reply = ("ok", utterance.finish())
                case "abort":
                    utterance = utterances.pop(uid, None)
                    if utterance is not None:
                        utterance.abort()
                    reply = ("ok", None)
                case "transcribe":
                    reply = ("ok", transcribe_with(pool, payload, frate, segment_s))
                case "close":
                    conn.send(("ok", None))
                    return
                case _:
                    reply = ("error", f"unknown request {kind!r}")
        except Exception as exc:  # reported to the caller, the worker lives on
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
        if pool.dropped and not utterances:
            pool.dropped = False
            trim()
