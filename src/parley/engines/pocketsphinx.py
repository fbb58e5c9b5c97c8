"""CMU PocketSphinx speech recognition (the en-US model ships in the wheel): the engine, and the
worker processes it decodes in.

The decoder is tuned for turn latency rather than for the last point of accuracy: the default
configuration's second pass (``fwdflat``) makes ``end_utt()`` cost 150-700 ms on a small machine,
so it is off, and the beams are narrowed (measured ~5-10x real time with end_utt < 20 ms and
similar word accuracy on the shared clips). Every setting can be overridden through the
constructor's ``decoder_options``. What happens next to a decoder (pooling, utterances cut into
bounded segments, a worker's request loop) is in :mod:`parley.engines.pocketsphinx_decoder`.

Where decoding runs: pocketsphinx holds the GIL for the whole of ``process_raw`` (measured: the
event loop made no progress at all while another thread decoded), so a thread pool would stall
every session's I/O and use one core at most. By default the engine therefore decodes in worker
*processes* (one per core); each utterance sticks to one worker, which owns its decoder, and the
parent only waits on a pipe from a thread. ``processes=0`` decodes in threads of this process
instead (fine for one caller, e.g. the CLI). This module recognises audio; it must not detect
speech or end turns.

Bounded memory, however fast audio arrives: a decoder costs ~90 MB, and every utterance in
flight holds one, so a client that sends a minute of speech in a second (many turns recognised
at once) made each worker load a decoder per turn (measured: 20 streams on 2 workers grew each
by 870 MB, kept). At most ``streams_per_process`` streams now decode at once per worker; later
ones wait for a free place (holding nothing), and audio goes to a worker in pieces of at most
1 s, one request at a time. A worker that, idle, still holds more than ``max_rss_mb`` is
replaced.

A worker that dies (killed, crashed) is noticed by the request in flight on it (end of file on
its pipe), by the next request that would use it, or by :meth:`PocketsphinxASR.health`. It is
reaped at once (no zombie) and a replacement is started; the utterances it held fail with an
:class:`~parley.errors.EngineError` (their decoder state is gone), later requests go to the
replacement, and :meth:`~PocketsphinxASR.health` says ``degraded`` until the replacement is
ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import wait
from typing import Any, Literal

from pocketsphinx import Config

from parley.audio.frames import Frame
from parley.engines.base import EngineHealth, Transcript
from parley.engines.pocketsphinx_decoder import (
    DEFAULT_DECODER_OPTIONS,
    SAMPLE_RATE,
    DecoderPool,
    Utterance,
    transcribe_with,
    worker_main,
)
from parley.errors import BadAudioError, ConfigError, EngineError, EngineUnavailableError

__all__ = ["DEFAULT_DECODER_OPTIONS", "PocketsphinxASR"]

log = logging.getLogger("parley.engines.pocketsphinx")

# Audio goes to a worker in pieces of at most this (1 s): a coalesced backlog neither lands in a
# worker whole nor keeps a stream from noticing that it was cancelled.
_PIECE_BYTES = 2 * SAMPLE_RATE
# A slot whose workers died this many times in a row without becoming ready is down.
_DOWN_AFTER = 3


def _normalise_language(language: str) -> str:
    return language.strip().lower().replace("_", "-")


def _supported(language: str) -> bool:
    # One model, American English; it serves other English variants too.
    code = _normalise_language(language)
    return code == "en" or code.startswith("en-")


def _pieces(pcm: bytes) -> Iterator[bytes]:
    for i in range(0, len(pcm), _PIECE_BYTES):
        yield pcm[i : i + _PIECE_BYTES]


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux ``/proc``); None where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


# --- worker processes ---------------------------------------------------------------------------


class _Worker:
    """The parent's end of one decoding process, from its start to its reaping.

    ``call`` blocks: run it from a thread. Once the process is gone (``lost``) it stays gone:
    its slot starts another :class:`_Worker`.
    """

    def __init__(
        self, context: Any, args: tuple[Any, ...], on_lost: Callable[[_Worker], None]
    ) -> None:
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=worker_main, args=(child, *args), daemon=True, name="parley-pocketsphinx"
        )
        self._process.start()
        child.close()
        self.pid: int = self._process.pid
        self._on_lost = on_lost
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._state = threading.Lock()  # noticing the end and reaping, once
        self.ready = False  # the process said it had loaded its decoders
        self.lost: BaseException | None = None  # why it is gone
        self.exitcode: int | None = None
        self.users = 0  # streams and transcriptions on this process (event loop only)

    def call(self, kind: str, uid: int, payload: object = None) -> Any:
        with self._lock:
            if self.lost is not None:
                raise self._gone() from self.lost
            try:
                if not self.ready:
                    self._conn.recv()  # ("ready", pid)
                    self.ready = True
                self._conn.send((kind, uid, payload))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:  # BrokenPipeError, ConnectionResetError
                cause: BaseException | None = exc
            else:
                cause = None
        if cause is not None:
            self._lose(cause)
            raise self._gone() from cause
        if status == "error":
            raise EngineUnavailableError(f"pocketsphinx worker failed: {value}")
        return value

    def alive(self) -> bool:
        """False once the process has ended (then it is reaped and its slot told)."""
        with self._state:
            if self.lost is not None:
                return False
            if not wait([self._process.sentinel], 0):
                return True
        self._lose(ChildProcessError(f"pocketsphinx worker process {self.pid} exited"))
        return False

    def poll_ready(self) -> bool:
        """Whether the process is ready, without waiting for it."""
        if self.ready or self.lost is not None or not self._lock.acquire(blocking=False):
            return self.ready
        try:
            if self._conn.poll():
                self._conn.recv()
                self.ready = True
        except (EOFError, OSError):
            pass  # it died: the next alive() or call() finds out
        finally:
            self._lock.release()
        return self.ready

    def close(self) -> None:
        """Ask the process to exit, and reap it (a no-op once it is gone)."""
        with self._state:
            if self.lost is not None:
                return
            self.lost = EOFError("closed")
        try:
            with self._lock:
                self._conn.send(("close", 0, None))
        except OSError:
            pass
        self._reap()
        self._conn.close()

    def _lose(self, cause: BaseException) -> None:
        with self._state:
            if self.lost is not None:
                return
            self.lost = cause
            self._reap()
        log.warning("pocketsphinx worker %d ended (%s); starting another", self.pid, self._how())
        self._on_lost(self)

    def _reap(self) -> None:
        self._process.join(timeout=2)
        if self._process.exitcode is None:  # its pipe broke but it lingers
            self._process.kill()
            self._process.join(timeout=2)
        self.exitcode = self._process.exitcode

    def _how(self) -> str:
        code = self.exitcode
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _gone(self) -> EngineError:
        return EngineError(
            f"the pocketsphinx worker process {self.pid} ended ({self._how()}) while "
            "recognising; its utterance is lost"
        )


class _Slot:
    """One place in the pool of workers: the current worker, and a new one when it dies."""

    def __init__(self, start: Callable[[Callable[[_Worker], None]], _Worker]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self.failures = 0  # workers of this slot that died since one was last ready
        self.worker = start(self._lost)

    def live(self) -> _Worker:
        """The current worker, replaced first if it has died."""
        worker = self.worker
        return worker if worker.alive() else self.worker

    def state(self) -> Literal["ok", "restarting", "down"]:
        worker = self.live()
        if worker.poll_ready():
            with self._lock:
                if self.worker is worker:
                    self.failures = 0
        if not self.failures:
            return "ok"
        return "down" if self.failures >= _DOWN_AFTER else "restarting"

    def recycle(self, worker: _Worker) -> bool:
        """Start a fresh worker in place of ``worker`` (which the caller then closes)."""
        with self._lock:
            if self.worker is not worker:
                return False
            self.worker = self._start(self._lost)
            return True

    def _lost(self, worker: _Worker) -> None:
        with self._lock:
            if self.worker is not worker:
                return
            if worker.ready:
                self.failures = 0
            self.failures += 1
            self.worker = self._start(self._lost)


class _Capacity:
    """At most ``per_slot`` streams at a time in each of ``slots`` places; later streams wait
    in order, holding nothing. Event loop only."""

    def __init__(self, slots: int, per_slot: int) -> None:
        self.counts = [0] * slots
        self._per_slot = per_slot
        self._waiters: deque[asyncio.Future[int]] = deque()

    async def acquire(self) -> int:
        index = min(range(len(self.counts)), key=self.counts.__getitem__)
        if self.counts[index] < self._per_slot and not self._waiters:
            self.counts[index] += 1
            return index
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed a place just as it was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, index: int) -> None:
        self.counts[index] -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.counts[index] += 1
                waiter.set_result(index)
                return


def _shutdown(slots: list[_Slot], executor: ThreadPoolExecutor) -> None:
    for slot in slots:
        slot.worker.close()
    executor.shutdown(wait=False)


class PocketsphinxASR:
    """Streaming English ASR with the bundled CMU en-US model.

    ``partial_interval_ms``: the most often (in audio time) a partial is produced; a partial is
    only produced when the hypothesis changed. ``processes``: decoding processes (default:
    one per core; 0 decodes in threads of this process). ``streams_per_process``: streams
    decoding at once per process (each holds a decoder, ~90 MB); more wait their turn.
    ``warm``: decoders loaded up front (per process). ``max_idle``: decoders kept loaded between
    streams, per process. ``segment_s``: an utterance is decoded in segments of about this
    length, which bounds a decoder's memory. ``max_rss_mb``: a worker process that holds more
    than this when idle is replaced (None: never). ``threads``: decoding threads when
    ``processes`` is 0 (default: the CPU count, at most 4). Other keyword arguments are
    pocketsphinx decoder settings and override :data:`DEFAULT_DECODER_OPTIONS`.
    """

    name = "pocketsphinx"
    languages = frozenset({"en"})  # its en-US acoustic model
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        language: str = "en",
        *,
        partial_interval_ms: float = 200.0,
        warm: int = 0,
        max_idle: int = 1,
        streams_per_process: int = 4,
        segment_s: float = 30.0,
        max_rss_mb: float | None = 512.0,
        threads: int | None = None,
        processes: int | None = None,
        **decoder_options: Any,
    ) -> None:
        if not _supported(language):
            raise ConfigError(
                f"pocketsphinx supports only English ('en', 'en-US', ...), not {language!r}",
                param="asr.language",
            )
        if (
            partial_interval_ms <= 0
            or segment_s <= 0
            or (max_rss_mb is not None and max_rss_mb <= 0)
        ):
            raise ConfigError(
                "partial_interval_ms, segment_s and max_rss_mb must be positive",
                param="asr.options",
            )
        if (
            warm < 0
            or max_idle < 0
            or streams_per_process < 1
            or (threads is not None and threads < 1)
            or (processes is not None and processes < 0)
        ):
            raise ConfigError(
                "warm, max_idle and processes must be >= 0, threads and streams_per_process >= 1",
                param="asr.options",
            )
        options = {**DEFAULT_DECODER_OPTIONS, **decoder_options}
        try:
            config = Config(**options)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"bad pocketsphinx option: {exc}", param="asr.options") from exc
        if int(config["samprate"]) != SAMPLE_RATE:
            raise ConfigError(f"pocketsphinx samprate must be {SAMPLE_RATE}", param="asr.options")
        self._frate = int(config["frate"])
        self._partial_samples = max(1, round(partial_interval_ms * SAMPLE_RATE / 1000))
        self._segment_s = segment_s
        self._max_rss = None if max_rss_mb is None else int(max_rss_mb * 2**20)
        self._pool = DecoderPool(options, max(max_idle, warm))
        self._processes = (os.cpu_count() or 1) if processes is None else processes
        self._capacity = _Capacity(max(1, self._processes), streams_per_process)
        self._slots: list[_Slot] = []
        self._worker_args = (
            options,
            self._partial_samples,
            self._frate,
            max_idle,
            warm,
            segment_s,
        )
        self._uids = itertools.count(1)
        workers = threads if threads is not None else min(4, os.cpu_count() or 1)
        # With worker processes these threads only wait on pipes: one per stream, and one more
        # per process for a transcription.
        workers = max(workers, (streams_per_process + 1) * self._processes)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="pocketsphinx")
        weakref.finalize(self, _shutdown, self._slots, self._executor)
        if self._processes == 0:
            for _ in range(warm):
                self._pool.add()

    # --- workers -------------------------------------------------------------------------------

    def _start_workers(self) -> list[_Slot]:
        """The worker slots, started on first use (spawning costs ~0.5 s)."""
        if not self._slots:
            start = functools.partial(
                _Worker, multiprocessing.get_context("spawn"), self._worker_args
            )
            self._slots.extend(_Slot(start) for _ in range(self._processes))
        return self._slots

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none before first use, or with ``processes=0``)."""
        return [slot.worker.pid for slot in self._slots]

    def _done_with(self, slot: _Slot, worker: _Worker) -> None:
        """A stream or transcription has finished with ``worker``: recycle it if it is idle
        and holds too much memory."""
        worker.users -= 1
        if worker.users or self._max_rss is None or not worker.ready or not worker.alive():
            return
        rss = _rss_bytes(worker.pid)
        if rss is None or rss <= self._max_rss or not slot.recycle(worker):
            return
        log.info("pocketsphinx worker %d holds %d MB idle; replacing it", worker.pid, rss >> 20)
        with contextlib.suppress(RuntimeError):  # the executor is shut down: so is the engine
            self._executor.submit(worker.close)

    def health(self) -> EngineHealth:
        """``degraded`` while a worker that died is being replaced, ``down`` when no worker
        can start; never blocks (a dead worker is reaped and replaced here too)."""
        if not self._slots:
            return EngineHealth("ok")
        states = [slot.state() for slot in self._slots]
        n = len(states)
        down, restarting = states.count("down"), states.count("restarting")
        if down == n:
            return EngineHealth("down", f"{n} of {n} recogniser workers failing to start")
        parts = []
        if restarting:
            parts.append(f"{restarting} of {n} recogniser workers restarting")
        if down:
            parts.append(f"{down} of {n} recogniser workers failing to start")
        return EngineHealth("degraded", "; ".join(parts)) if parts else EngineHealth("ok")

    # --- recognition -------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        """Loaded decoders waiting for a stream (``processes=0``)."""
        return len(self._pool)

    def _check(self, language: str | None) -> None:
        if language is not None and not _supported(language):
            raise ConfigError(
                f"pocketsphinx supports only English ('en', 'en-US', ...), not {language!r}",
                param="language",
            )

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        """Partials while ``audio`` flows (when the hypothesis changes); one final at its end.

        Its partials cost nothing extra (the decoder is incremental), so ``partials`` is
        ignored; pause marks (empty frames) carry no samples and change nothing."""
        self._check(language)
        index = await self._capacity.acquire()
        try:
            inner = (
                self._stream_in_worker(self._start_workers()[index], audio)
                if self._processes
                else self._stream_in_thread(audio)
            )
            async with contextlib.aclosing(inner) as transcripts:
                async for transcript in transcripts:
                    yield transcript
        finally:
            self._capacity.release(index)

    async def _stream_in_thread(
        self, audio: AsyncIterable[Frame]
    ) -> AsyncGenerator[Transcript, None]:
        loop = asyncio.get_running_loop()
        utterance = Utterance(self._pool, self._partial_samples, self._frate, self._segment_s)
        finished = False
        try:
            last = ""
            async for frame in audio:
                _check_rate(frame)
                for piece in _pieces(frame.to_bytes()):
                    text = await loop.run_in_executor(self._executor, utterance.feed, piece)
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
        self, slot: _Slot, audio: AsyncIterable[Frame]
    ) -> AsyncGenerator[Transcript, None]:
        loop = asyncio.get_running_loop()
        uid = next(self._uids)
        worker: _Worker | None = None  # bound with the first audio, to a live worker
        finished = False
        try:
            last = ""
            async for frame in audio:
                _check_rate(frame)
                for piece in _pieces(frame.to_bytes()):
                    if worker is None:
                        worker = slot.live()
                        worker.users += 1
                    text = await loop.run_in_executor(
                        self._executor, worker.call, "feed", uid, piece
                    )
                    if text and text != last:
                        last = text
                        yield Transcript(text=text, is_final=False, language="en")
            if worker is None:
                final = Transcript(text="", is_final=True, language="en")
            else:
                final = await loop.run_in_executor(self._executor, worker.call, "finish", uid)
            finished = True
            yield final
        finally:
            try:
                if worker is not None and not finished and worker.lost is None:
                    # Shielded so that a second cancellation cannot leave the decoder
                    # borrowed; a worker that dies meanwhile has nothing left to give back.
                    with contextlib.suppress(EngineError):
                        await asyncio.shield(
                            loop.run_in_executor(self._executor, worker.call, "abort", uid)
                        )
            finally:
                if worker is not None:
                    self._done_with(slot, worker)

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        """A whole recording at once (batch normalisation: a little more accurate than stream)."""
        self._check(language)
        _check_rate(audio)
        loop = asyncio.get_running_loop()
        if not self._processes:
            return await loop.run_in_executor(self._executor, self._transcribe, audio.to_bytes())
        slot = min(self._start_workers(), key=lambda s: s.worker.users)
        worker = slot.live()
        worker.users += 1
        try:
            result: Transcript = await loop.run_in_executor(
                self._executor, worker.call, "transcribe", 0, audio.to_bytes()
            )
        finally:
            self._done_with(slot, worker)
        return result

    def _transcribe(self, pcm: bytes) -> Transcript:
        return transcribe_with(self._pool, pcm, self._frate, self._segment_s)


def _check_rate(frame: Frame) -> None:
    if frame.sample_rate != SAMPLE_RATE:
        raise BadAudioError(
            f"pocketsphinx needs {SAMPLE_RATE} Hz audio, got {frame.sample_rate} Hz",
            param="audio",
        )
