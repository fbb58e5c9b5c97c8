"""Giving memory back to the operating system after sessions end.

glibc keeps freed heap pages in the process: after a storm of sessions had closed, their models
and buffers were freed, yet the server's RSS stayed where the storm had taken it (1.5 GiB after
150 speaking sessions, 258 MiB after ``malloc_trim(0)``; docs/reliability.md). :class:`Trimmer`
runs the cyclic garbage collector (a finished session's objects refer to one another) and then
``malloc_trim(0)`` a little after sessions end, at most once per ``interval_s``, in a worker
thread (the trim releases the GIL; on a 1.4 GiB heap it took 143 ms). Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

__all__ = ["Trimmer"]

log = logging.getLogger("parley.server")


def _malloc_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """Collects and trims once sessions have stopped ending for ``delay_s`` (a storm's sessions
    end together: one trim after the last of them), then rests ``interval_s``."""

    def __init__(
        self,
        *,
        delay_s: float = 1.0,
        interval_s: float = 2.0,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._delay_s = delay_s
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._last_end = 0.0
        self.trims = 0

    def session_ended(self) -> None:
        if self._trim is None:
            return
        self._last_end = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        trimmed_at = float("-inf")
        while self._last_end > trimmed_at:  # sessions ended since the last trim
            # A debounce: each session that ends pushes the trim back (no event to wait on).
            while (wait := self._last_end + self._delay_s - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            trimmed_at = time.monotonic()
            await asyncio.to_thread(self._collect_and_trim)
            self.trims += 1
            await asyncio.sleep(self._interval_s)  # the next trim waits at least this long

    def _collect_and_trim(self) -> None:
        assert self._trim is not None
        # A finished session's objects hold one another (pipeline, listener, callbacks), so
        # only the cyclic collector frees them; then the freed pages can go back.
        gc.collect()
        self._trim()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
