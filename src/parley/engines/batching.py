"""The batching scheduler that GPU engines share across sessions, split as in vLLM v1.

:class:`Batcher` is pure, synchronous CPU bookkeeping: requests go in with :meth:`~Batcher.add`,
:meth:`~Batcher.schedule` hands out a :class:`Batch` (a plain frozen dataclass) when one is due,
and :meth:`~Batcher.update` finishes it. It has no clock of its own (time is passed in), no
asyncio and no engine, so every scheduling rule is tested without a GPU.

:class:`Runner` is the async driver: it owns the loop ``schedule -> execute -> update``, sleeps
until the batcher's next deadline or a new request, and routes each output to the caller that
submitted the request.

Scheduling rules, in order:

* A batch is due when the queued cost reaches ``max_batch_size``, when the oldest queued request
  has waited ``max_wait_s``, or at once when ``max_wait_s == 0``. ``max_batch_size=1`` turns
  batching off.
* A session's first chunk (what its user is waiting to hear or read) goes ahead of every
  continuation chunk.
* Within a class, sessions take turns: each pass takes one request from each session, sessions
  ordered by the arrival of their oldest queued request, so one chatty session cannot starve the
  others. A session's own requests stay in the order they were added.
* A batch never exceeds ``max_batch_size`` (the sum of request costs).
* One batch is in flight at a time: while a batch is scheduled and not yet updated,
  :meth:`~Batcher.schedule` returns None. One engine executes one batch at a time anyway, and
  it keeps the abort rules simple (a request is either queued, or in the one running batch).
* Aborts apply between steps: queued requests of the session are removed, running ones are
  marked and their outputs dropped in :meth:`~Batcher.update`.

This module must not import an engine, touch a device, or read a clock inside :class:`Batcher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from parley.errors import Code, ConfigError, EngineError, EngineUnavailableError, ParleyError

__all__ = [
    "Batch",
    "BatchRequest",
    "BatchStats",
    "Batcher",
    "Execute",
    "RequestAborted",
    "Runner",
    "Scheduler",
]


class RequestAborted(ParleyError):
    """The request's session was aborted (barge-in, disconnect) before its output was ready.

    Not a :class:`~asyncio.CancelledError`: the awaiting task was not itself cancelled, and must
    be able to tell an aborted request from its own cancellation. Neither the client's nor the
    engine's fault, hence directly under :class:`~parley.errors.ParleyError`.
    """

    code = Code.REQUEST_ABORTED


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One unit of engine work: a chunk of text to speak, a window of audio to transcribe."""

    id: str
    session_id: str
    payload: object
    first: bool
    """The session's first chunk: it goes ahead of continuation chunks."""
    arrived: float
    """Seconds on the caller's monotonic clock."""
    cost: int = 1
    """Share of ``max_batch_size`` this request takes (for example, its length in tokens)."""


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    requests: tuple[BatchRequest, ...]
    scheduled_at: float


@dataclass(frozen=True, slots=True)
class BatchStats:
    batches: int
    requests: int
    aborted: int
    recent_sizes: tuple[int, ...]
    """Requests per batch of the most recent batches, oldest first (bounded)."""


class _Class:
    """The queue of one priority class: a FIFO per session."""

    __slots__ = ("cost", "sessions")

    def __init__(self) -> None:
        self.sessions: dict[str, deque[BatchRequest]] = {}
        self.cost = 0

    def add(self, request: BatchRequest) -> None:
        self.sessions.setdefault(request.session_id, deque()).append(request)
        self.cost += request.cost

    def remove(self, session_id: str) -> list[BatchRequest]:
        removed = list(self.sessions.pop(session_id, ()))
        self.cost -= sum(r.cost for r in removed)
        return removed

    def oldest(self) -> float | None:
        return min((q[0].arrived for q in self.sessions.values()), default=None)

    def take(self, budget: int, into: list[BatchRequest]) -> int:
        """Move up to ``budget`` cost into ``into``, round-robin by session; return what is left.

        A session whose next request does not fit sits out the rest of this batch, so its own
        order is kept and a large request is not overtaken by its session's smaller ones.
        """
        active = sorted(self.sessions, key=lambda s: self.sessions[s][0].arrived)
        while active and budget > 0:
            still: list[str] = []
            for session_id in active:
                queue = self.sessions[session_id]
                request = queue[0]
                if request.cost > budget:
                    continue
                queue.popleft()
                into.append(request)
                budget -= request.cost
                self.cost -= request.cost
                if queue:
                    still.append(session_id)
                else:
                    del self.sessions[session_id]
                if budget == 0:
                    break
            # Next pass in arrival order of the sessions' new oldest requests.
            active = sorted(still, key=lambda s: self.sessions[s][0].arrived)
        return budget


class Batcher:
    """Dynamic micro-batching across sessions; pure bookkeeping, time passed in."""

    __slots__ = (
        "_aborted_running",
        "_batch_ids",
        "_batches",
        "_continuations",
        "_firsts",
        "_ids",
        "_n_aborted",
        "_n_requests",
        "_recent",
        "_running",
        "max_batch_size",
        "max_wait_s",
    )

    def __init__(self, *, max_batch_size: int = 8, max_wait_s: float = 0.005, recent: int = 256):
        if max_batch_size < 1:
            raise ConfigError("max_batch_size must be at least 1", param="max_batch_size")
        if max_wait_s < 0:
            raise ConfigError("max_wait_s must not be negative", param="max_wait_s")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._firsts = _Class()
        self._continuations = _Class()
        self._ids: set[str] = set()
        self._running: Batch | None = None
        self._aborted_running: set[str] = set()
        self._batch_ids = itertools.count(1)
        self._batches = 0
        self._n_requests = 0
        self._n_aborted = 0
        self._recent: deque[int] = deque(maxlen=recent)

    def add(self, request: BatchRequest) -> None:
        """Queue a request. Its id must be unique among queued and running requests."""
        if request.id in self._ids:
            raise ValueError(f"request {request.id!r} is already queued or running")
        if not 1 <= request.cost <= self.max_batch_size:
            raise ValueError(
                f"request {request.id!r} costs {request.cost}, "
                f"outside 1..max_batch_size={self.max_batch_size}"
            )
        self._ids.add(request.id)
        (self._firsts if request.first else self._continuations).add(request)

    def abort(self, session_id: str) -> list[str]:
        """Drop the session's queued requests and mark its running ones; return their ids."""
        removed = self._firsts.remove(session_id) + self._continuations.remove(session_id)
        ids = [r.id for r in removed]
        self._ids.difference_update(ids)
        if self._running is not None:
            for request in self._running.requests:
                if request.session_id == session_id and request.id not in self._aborted_running:
                    self._aborted_running.add(request.id)
                    ids.append(request.id)
        self._n_aborted += len(ids)
        return ids

    @property
    def queued(self) -> int:
        """Total cost of the queued requests."""
        return self._firsts.cost + self._continuations.cost

    @property
    def running(self) -> Batch | None:
        return self._running

    def _oldest(self) -> float | None:
        a, b = self._firsts.oldest(), self._continuations.oldest()
        if a is None or b is None:
            return b if a is None else a
        return min(a, b)

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`schedule` would next return a batch if nothing new arrives.

        ``now`` when one is due already; None when nothing is queued or a batch is running
        (the next chance is then its :meth:`update`, which the caller drives).
        """
        if self._running is not None:
            return None
        oldest = self._oldest()
        if oldest is None:
            return None
        if self.queued >= self.max_batch_size or self.max_wait_s == 0:
            return now
        return max(now, oldest + self.max_wait_s)

    def schedule(self, now: float) -> Batch | None:
        """The next batch if one is due at ``now``, else None."""
        deadline = self.next_deadline(now)
        if deadline is None or deadline > now:
            return None
        requests: list[BatchRequest] = []
        budget = self._firsts.take(self.max_batch_size, requests)
        self._continuations.take(budget, requests)
        batch = Batch(next(self._batch_ids), tuple(requests), now)
        self._running = batch
        self._batches += 1
        self._n_requests += len(requests)
        self._recent.append(len(requests))
        return batch

    def update(
        self, batch: Batch, outputs: Mapping[str, object]
    ) -> list[tuple[BatchRequest, object]]:
        """Finish the running batch; return ``(request, output)`` for each live request.

        Requests aborted while the batch ran are left out, and so are requests with no entry
        in ``outputs`` (pass ``{}`` when the execution failed). Extra keys are ignored.
        """
        if batch is not self._running:
            raise ValueError(f"batch {batch.id} is not the running batch")
        aborted = self._aborted_running
        done = [
            (r, outputs[r.id]) for r in batch.requests if r.id not in aborted and r.id in outputs
        ]
        self._ids.difference_update(r.id for r in batch.requests)
        self._running = None
        self._aborted_running = set()
        return done

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._n_requests, self._n_aborted, tuple(self._recent))


Execute = Callable[[Sequence[BatchRequest]], Awaitable[Mapping[str, object]]]
"""Runs one batch on the engine; returns each request's output keyed by request id."""


class Runner:
    """Drives a :class:`Batcher`: ``schedule -> execute -> update`` in one task.

    Use ``async with runner:`` (starts the loop in a task, stops it on exit) or run
    :meth:`run` in the caller's own ``TaskGroup``. ``execute`` runs in the loop's task; if it
    raises, that batch's callers get the exception and the loop goes on. ``on_batch(size)`` is
    called once per batch with its number of requests; it must be cheap and must not raise
    (``functools.partial(metrics.batch, "tts")`` fits).

    A caller whose ``submit`` is cancelled leaves its request queued; its output is dropped.
    Interruptions go through :meth:`abort`, which also frees the engine of the session's work.
    """

    def __init__(
        self,
        batcher: Batcher,
        execute: Execute,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._batcher = batcher
        self._execute = execute
        self._clock = clock
        self._on_batch = on_batch
        self._futures: dict[str, asyncio.Future[object]] = {}
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.overhead_s = 0.0
        """CPU time spent scheduling: ``schedule`` that gave a batch, ``update``, routing."""
        self.execute_s = 0.0
        """Time spent in ``execute`` (the engine's work)."""

    async def submit(
        self,
        session_id: str,
        payload: object,
        *,
        first: bool,
        cost: int = 1,
        id: str | None = None,
    ) -> object:
        """Queue one request and wait for its output.

        Raises :class:`RequestAborted` if the session is aborted first, the exception of
        ``execute`` if its batch fails, :class:`~parley.errors.EngineError` if ``execute`` gave
        no output for it, and :class:`~parley.errors.EngineUnavailableError` if the runner stops.
        """
        request_id = id if id is not None else f"req_{next(self._ids)}"
        request = BatchRequest(request_id, session_id, payload, first, self._clock(), cost)
        self._batcher.add(request)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        self._wake.set()
        return await future

    def abort(self, session_id: str) -> list[str]:
        """Abort the session's requests; their callers get :class:`RequestAborted` at once."""
        ids = self._batcher.abort(session_id)
        for request_id in ids:
            self._fail(request_id, RequestAborted(f"request {request_id} was aborted"))
        # A removed request may have been the oldest: let the loop recompute its deadline.
        self._wake.set()
        return ids

    def _fail(self, request_id: str, error: BaseException) -> None:
        future = self._futures.pop(request_id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    async def run(self) -> None:
        """The loop; runs until cancelled, then fails every pending request."""
        try:
            while True:
                now = self._clock()
                started = time.perf_counter()
                batch = self._batcher.schedule(now)
                if batch is None:
                    deadline = self._batcher.next_deadline(now)
                    self._wake.clear()
                    delay = None if deadline is None else max(0.0, deadline - now)
                    try:
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                self.overhead_s += time.perf_counter() - started
                await self._step(batch)
        finally:
            for request_id in list(self._futures):
                self._fail(request_id, EngineUnavailableError("the batch runner stopped"))

    async def _step(self, batch: Batch) -> None:
        if self._on_batch is not None:
            self._on_batch(len(batch.requests))
        outputs: Mapping[str, object] = {}
        error: Exception | None = None
        started = time.perf_counter()
        try:
            outputs = await self._execute(batch.requests)
        except Exception as exc:
            error = exc
        finally:
            # Also on cancellation: the batcher must not keep a batch that will never finish.
            executed = time.perf_counter()
            self.execute_s += executed - started
            done = self._batcher.update(batch, outputs)
        for request, output in done:
            future = self._futures.pop(request.id, None)
            if future is not None and not future.done():
                future.set_result(output)
        for request in batch.requests:
            if request.id in self._futures:
                self._fail(
                    request.id,
                    error
                    if error is not None
                    else EngineError(f"the engine gave no output for request {request.id}"),
                )
        self.overhead_s += time.perf_counter() - executed

    async def __aenter__(self) -> Runner:
        if self._task is not None:
            raise RuntimeError("the runner is already started")
        self._task = asyncio.create_task(self.run(), name="batch-runner")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Swallow only the cancellation we caused; our own cancellation still propagates.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


class Scheduler:
    """What a batched engine owns: a :class:`Batcher` and its :class:`Runner`.

    The runner's loop starts in whichever event loop first calls :meth:`submit` (engines are
    built before a loop exists, and one process may run several loops in turn: a CLI command,
    then tests). A submit from a different loop than the running one starts afresh with an
    empty batcher, since requests queued in a closed loop can never be answered.

    ``observe(callback)`` registers ``callback(batch_size)``, called once per batch; the server
    passes ``functools.partial(metrics.batch, engine_name)``.
    """

    def __init__(
        self,
        name: str,
        execute: Execute,
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._execute = execute
        self._clock = clock
        self._observers: list[Callable[[int], None]] = []
        # Validate the settings now, at configuration time, not at the first request.
        self._batcher = Batcher(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
        self._runner: Runner | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def observe(self, callback: Callable[[int], None]) -> None:
        self._observers.append(callback)

    def _on_batch(self, size: int) -> None:
        for callback in self._observers:
            callback(size)

    def _ensure(self) -> Runner:
        loop = asyncio.get_running_loop()
        if (
            self._runner is None
            or self._loop is not loop
            or self._task is None
            or self._task.done()
        ):
            self._batcher = Batcher(max_batch_size=self.max_batch_size, max_wait_s=self.max_wait_s)
            self._runner = Runner(
                self._batcher, self._execute, clock=self._clock, on_batch=self._on_batch
            )
            self._task = loop.create_task(self._runner.run(), name=f"{self.name}-batch-runner")
            self._loop = loop
        return self._runner

    async def submit(
        self, session_id: str, payload: object, *, first: bool, cost: int = 1
    ) -> object:
        """Queue one request for the engine and wait for its output (see :meth:`Runner.submit`)."""
        return await self._ensure().submit(session_id, payload, first=first, cost=cost)

    def abort(self, session_id: str) -> list[str]:
        """Abort the session's queued and running requests (barge-in, disconnect)."""
        if self._runner is None or self._loop is not _running_loop():
            return []
        return self._runner.abort(session_id)

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    @property
    def queued(self) -> int:
        """Total cost of the requests waiting for the engine (not those it is running)."""
        return self._batcher.queued

    @property
    def overhead_s(self) -> float:
        """Scheduling time of the current runner (see :attr:`Runner.overhead_s`)."""
        return 0.0 if self._runner is None else self._runner.overhead_s

    @property
    def execute_s(self) -> float:
        """Engine time of the current runner (see :attr:`Runner.execute_s`)."""
        return 0.0 if self._runner is None else self._runner.execute_s

    async def aclose(self) -> None:
        """Stop the runner; pending requests fail with EngineUnavailableError."""
        task, self._task, self._runner = self._task, None, None
        if task is None or task.done() or self._loop is not _running_loop():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
