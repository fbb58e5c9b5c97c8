"""The batching scheduler: the Batcher's rules with no engine at all, the Runner with a fake one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import pytest

from parley.engines.batching import (
    Batch,
    Batcher,
    BatchRequest,
    RequestAborted,
    Runner,
    Scheduler,
)
from parley.errors import ConfigError, EngineError, EngineUnavailableError


def req(
    id: str, session: str = "s", *, at: float = 0.0, first: bool = False, cost: int = 1
) -> BatchRequest:
    return BatchRequest(id, session, payload=id, first=first, arrived=at, cost=cost)


def ids(batch: Batch | None) -> list[str]:
    assert batch is not None
    return [r.id for r in batch.requests]


def drain(batcher: Batcher, now: float) -> list[list[str]]:
    """Schedule and finish batches at ``now`` until none is due; return each batch's ids."""
    out = []
    while (batch := batcher.schedule(now)) is not None:
        out.append(ids(batch))
        batcher.update(batch, {r.id: r.payload for r in batch.requests})
    return out


# --- Batcher -------------------------------------------------------------------------------

A_FLOODS = [req(f"a{i}", "A", at=i * 0.001) for i in range(10)]


@pytest.mark.parametrize(
    ("max_batch_size", "requests", "now", "expected"),
    [
        pytest.param(
            4,
            [req("c1", "A", at=0), req("c2", "B", at=0.001), req("f1", "C", at=0.002, first=True)],
            1.0,
            [["f1", "c1", "c2"]],
            id="first-chunks-go-ahead-of-continuations",
        ),
        pytest.param(
            2,
            [req("c1", "A", at=0), req("c2", "A", at=0.001), req("f1", "B", at=0.5, first=True)],
            1.0,
            [["f1", "c1"], ["c2"]],
            id="first-chunk-arriving-later-still-goes-first",
        ),
        pytest.param(
            1,
            [req("a", "A", at=0), req("b", "B", at=0.001), req("c", "C", at=0.002)],
            1.0,
            [["a"], ["b"], ["c"]],
            id="max-batch-size-1-means-no-batching",
        ),
        pytest.param(
            4,
            [*A_FLOODS, req("b0", "B", at=0.5)],
            1.0,
            [["a0", "b0", "a1", "a2"], ["a3", "a4", "a5", "a6"], ["a7", "a8", "a9"]],
            id="fair-late-session-gets-into-the-next-batch",
        ),
        pytest.param(
            4,
            [req("a0", "A", at=0), req("a1", "A", at=0.1), req("b0", "B", at=0.05)],
            1.0,
            [["a0", "b0", "a1"]],
            id="round-robin-orders-sessions-by-their-oldest-request",
        ),
        pytest.param(
            4,
            [req("a0", "A", at=0, cost=3), req("a1", "A", at=0.1), req("b0", "B", at=0.2, cost=2)],
            1.0,
            [["a0", "a1"], ["b0"]],
            id="costs-never-exceed-max-batch-size",
        ),
        pytest.param(
            4,
            [req("a0", "A", at=0, cost=2), req("a1", "A", at=0.1, cost=3), req("a2", "A", at=0.2)],
            1.0,
            [["a0"], ["a1", "a2"]],
            id="a-request-that-does-not-fit-is-not-overtaken-by-its-session",
        ),
    ],
)
def test_batcher_order(
    max_batch_size: int, requests: list[BatchRequest], now: float, expected: list[list[str]]
) -> None:
    batcher = Batcher(max_batch_size=max_batch_size, max_wait_s=0.1)
    for r in requests:
        batcher.add(r)
    assert drain(batcher, now) == expected


@pytest.mark.parametrize(
    ("max_batch_size", "max_wait_s", "arrivals", "now", "ready", "deadline"),
    [
        pytest.param(4, 0.1, [0.0], 0.0, False, 0.1, id="alone-waits"),
        pytest.param(4, 0.1, [0.0], 0.099, False, 0.1, id="not-ready-before-max-wait"),
        pytest.param(4, 0.1, [0.0], 0.1, True, 0.1, id="ready-at-max-wait"),
        pytest.param(4, 0.1, [0.0, 0.05], 0.06, False, 0.1, id="deadline-from-oldest"),
        pytest.param(4, 0.1, [0.0, 0.01, 0.02, 0.03], 0.03, True, 0.03, id="full-batch-at-once"),
        pytest.param(4, 0.0, [0.0], 0.0, True, 0.0, id="max-wait-0-at-once"),
        pytest.param(1, 0.1, [0.0], 0.0, True, 0.0, id="batch-size-1-is-full-at-once"),
        pytest.param(4, 0.1, [], 0.0, False, None, id="empty-no-deadline"),
    ],
)
def test_batcher_when_ready(
    max_batch_size: int,
    max_wait_s: float,
    arrivals: list[float],
    now: float,
    ready: bool,
    deadline: float | None,
) -> None:
    batcher = Batcher(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
    for i, at in enumerate(arrivals):
        batcher.add(req(f"r{i}", f"s{i}", at=at))
    assert batcher.next_deadline(now) == (None if deadline is None else max(now, deadline))
    batch = batcher.schedule(now)
    assert (batch is not None) is ready
    if batch is not None:
        assert batch.scheduled_at == now
        assert len(batch.requests) == min(len(arrivals), max_batch_size)


def test_batcher_one_batch_in_flight() -> None:
    batcher = Batcher(max_batch_size=2, max_wait_s=0)
    for i in range(4):
        batcher.add(req(f"r{i}", at=i))
    first = batcher.schedule(10)
    assert ids(first) == ["r0", "r1"]
    assert batcher.schedule(10) is None
    assert batcher.next_deadline(10) is None
    assert first is not None
    with pytest.raises(ValueError, match="not the running batch"):
        batcher.update(Batch(99, (), 10), {})
    assert batcher.update(first, {"r0": "x", "r1": "y"}) == [
        (first.requests[0], "x"),
        (first.requests[1], "y"),
    ]
    assert ids(batcher.schedule(10)) == ["r2", "r3"]


def test_batcher_abort_queued_and_running() -> None:
    batcher = Batcher(max_batch_size=2, max_wait_s=0)
    batcher.add(req("a0", "A", at=0))
    batcher.add(req("b0", "B", at=1))
    batcher.add(req("a1", "A", at=2))
    batcher.add(req("b1", "B", at=3))
    running = batcher.schedule(5)
    assert ids(running) == ["a0", "b0"]
    assert running is not None

    # a0 is running, a1 queued; both go, B's are untouched.
    assert batcher.abort("A") == ["a1", "a0"]
    assert batcher.abort("A") == []
    assert batcher.update(running, {"a0": "dropped", "b0": "kept"}) == [
        (running.requests[1], "kept")
    ]
    assert drain(batcher, 5) == [["b1"]]
    assert batcher.stats.aborted == 2
    assert (batcher.stats.batches, batcher.stats.requests) == (2, 3)
    # An aborted id is free to be used again, and runs.
    batcher.add(req("a0", "A", at=6))
    assert batcher.queued == 1
    assert drain(batcher, 6) == [["a0"]]


def test_batcher_abort_moves_the_deadline() -> None:
    batcher = Batcher(max_batch_size=4, max_wait_s=1)
    batcher.add(req("a0", "A", at=0))
    batcher.add(req("b0", "B", at=0.5))
    assert batcher.next_deadline(0.5) == 1
    batcher.abort("A")
    assert batcher.next_deadline(0.5) == 1.5
    assert batcher.queued == 1


def test_batcher_update_skips_missing_outputs() -> None:
    batcher = Batcher(max_batch_size=2, max_wait_s=0)
    batcher.add(req("a"))
    batcher.add(req("b"))
    batch = batcher.schedule(0)
    assert batch is not None
    assert batcher.update(batch, {"b": 2, "zzz": 3}) == [(batch.requests[1], 2)]
    assert batcher.running is None


def test_batcher_stats_are_bounded() -> None:
    batcher = Batcher(max_batch_size=3, max_wait_s=0, recent=2)
    for i in range(7):
        batcher.add(req(f"r{i}", at=i))
    assert drain(batcher, 10) == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    stats = batcher.stats
    assert (stats.batches, stats.requests, stats.recent_sizes) == (3, 7, (3, 1))


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        pytest.param(req("dup"), "already queued", id="duplicate-id"),
        pytest.param(req("big", cost=5), "outside", id="cost-over-max"),
        pytest.param(req("zero", cost=0), "outside", id="cost-zero"),
    ],
)
def test_batcher_add_rejects(request_: BatchRequest, match: str) -> None:
    batcher = Batcher(max_batch_size=4)
    batcher.add(req("dup"))
    with pytest.raises(ValueError, match=match):
        batcher.add(request_)


@pytest.mark.parametrize(
    ("max_batch_size", "max_wait_s", "param"),
    [
        pytest.param(0, 0.1, "max_batch_size", id="batch-size-0"),
        pytest.param(4, -1.0, "max_wait_s", id="negative-wait"),
    ],
)
def test_batcher_config_rejects(max_batch_size: int, max_wait_s: float, param: str) -> None:
    with pytest.raises(ConfigError) as info:
        Batcher(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
    assert info.value.param == param


# --- Runner --------------------------------------------------------------------------------


class FakeEngine:
    """Echoes each payload upper-cased; can be told to fail, to hold a batch or to take time."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.fail_next = False
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.delay_s = delay_s

    async def execute(self, requests: Sequence[BatchRequest]) -> Mapping[str, object]:
        self.batches.append([r.id for r in requests])
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise EngineError("boom")
        return {r.id: str(r.payload).upper() for r in requests}


async def test_runner_batches_concurrent_submits_and_routes_results() -> None:
    engine, sizes = FakeEngine(), list[int]()
    runner = Runner(
        Batcher(max_batch_size=8, max_wait_s=0.01), engine.execute, on_batch=sizes.append
    )
    async with runner:
        results = await asyncio.gather(
            *(runner.submit(f"s{i}", f"text {i}", first=True) for i in range(5))
        )
    assert results == [f"TEXT {i}" for i in range(5)]
    assert sizes == [5]
    assert engine.batches == [[f"req_{i}" for i in range(1, 6)]]  # in the order submitted


async def test_runner_waits_max_wait_for_a_lone_request_not_for_a_full_batch() -> None:
    max_wait = 0.3
    engine = FakeEngine()
    runner = Runner(Batcher(max_batch_size=4, max_wait_s=max_wait), engine.execute)
    async with runner:
        started = time.monotonic()
        assert await runner.submit("A", "alone", first=True) == "ALONE"
        alone = time.monotonic() - started
        started = time.monotonic()
        full = await asyncio.gather(*(runner.submit(f"s{i}", "x", first=True) for i in range(4)))
        full_s = time.monotonic() - started
    assert full == ["X"] * 4
    assert [len(b) for b in engine.batches] == [1, 4]
    # The lone request waited for batch-mates that never came; the full batch went at once.
    assert max_wait <= alone < max_wait + 0.25
    assert full_s < max_wait / 2


async def test_runner_execute_error_fails_only_that_batch() -> None:
    engine = FakeEngine()
    engine.fail_next = True
    runner = Runner(Batcher(max_batch_size=2, max_wait_s=0), engine.execute)
    async with runner:
        with pytest.raises(EngineError, match="boom"):
            await runner.submit("A", "x", first=True)
        assert await runner.submit("A", "y", first=False) == "Y"
    assert engine.batches == [["req_1"], ["req_2"]]


async def test_runner_abort_resolves_queued_and_running_promptly() -> None:
    engine = FakeEngine()
    engine.hold = asyncio.Event()
    runner = Runner(Batcher(max_batch_size=1, max_wait_s=0), engine.execute)
    async with runner, asyncio.timeout(1):
        running = asyncio.create_task(runner.submit("A", "a0", first=True, id="a0"))
        await engine.started.wait()  # a0 is in the engine now
        queued = asyncio.create_task(runner.submit("A", "a1", first=False, id="a1"))
        other = asyncio.create_task(runner.submit("B", "b0", first=False, id="b0"))
        await asyncio.sleep(0)
        assert sorted(runner.abort("A")) == ["a0", "a1"]
        for task in (running, queued):
            with pytest.raises(RequestAborted):
                await task  # while the engine still holds a0's batch
        engine.hold.set()
        assert await other == "B0"
    assert engine.batches == [["a0"], ["b0"]]


async def test_runner_missing_output_is_an_engine_error() -> None:
    async def execute(requests: Sequence[BatchRequest]) -> Mapping[str, object]:
        return {}

    async with Runner(Batcher(max_wait_s=0), execute) as runner:
        with pytest.raises(EngineError, match="no output"):
            await runner.submit("A", "x", first=True)


async def test_runner_stop_fails_pending_requests() -> None:
    engine = FakeEngine()
    engine.hold = asyncio.Event()
    runner = Runner(Batcher(max_batch_size=1, max_wait_s=0), engine.execute)
    async with runner:
        pending = asyncio.create_task(runner.submit("A", "x", first=True))
        await engine.started.wait()
    with pytest.raises(EngineUnavailableError, match="stopped"):
        await pending


# --- Scheduler -----------------------------------------------------------------------------


async def test_scheduler_starts_in_the_running_loop_and_reports_batches() -> None:
    delay = 0.05
    engine, sizes = FakeEngine(delay_s=delay), list[int]()
    scheduler = Scheduler("fake", engine.execute, max_batch_size=4, max_wait_s=0.01)
    assert (scheduler.overhead_s, scheduler.execute_s) == (0.0, 0.0)  # not started yet
    scheduler.observe(sizes.append)
    results = await asyncio.gather(
        *(scheduler.submit(f"s{i}", f"t{i}", first=True) for i in range(6))
    )
    assert results == [f"T{i}" for i in range(6)]
    assert sizes == [4, 2]
    assert engine.batches == [["req_1", "req_2", "req_3", "req_4"], ["req_5", "req_6"]]
    stats = scheduler.stats
    assert (stats.batches, stats.requests, stats.aborted) == (2, 6, 0)
    assert stats.recent_sizes == (4, 2)
    # Engine time is the two executions; the scheduler's own bookkeeping is a small part of it.
    assert 2 * delay <= scheduler.execute_s < 2 * delay + 0.5
    assert 0 < scheduler.overhead_s < scheduler.execute_s / 4
    await scheduler.aclose()


def test_scheduler_survives_a_new_event_loop() -> None:
    """An engine built once serves a CLI command, then a server: each runs its own loop."""
    engine = FakeEngine()
    scheduler = Scheduler("fake", engine.execute, max_batch_size=2, max_wait_s=0)
    assert asyncio.run(scheduler.submit("A", "one", first=True)) == "ONE"
    assert asyncio.run(scheduler.submit("A", "two", first=True)) == "TWO"
    assert scheduler.stats.batches == 1  # a fresh batcher for the second loop


async def test_scheduler_abort_before_start_and_after_close_is_a_no_op() -> None:
    scheduler = Scheduler("fake", FakeEngine().execute)
    assert scheduler.abort("A") == []
    await scheduler.aclose()
    await scheduler.aclose()


def test_scheduler_rejects_bad_settings_at_construction() -> None:
    with pytest.raises(ConfigError):
        Scheduler("fake", FakeEngine.execute, max_batch_size=0)  # type: ignore[arg-type]
