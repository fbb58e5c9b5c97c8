"""The batching scheduler's own cost: ``add`` x32, then ``schedule`` + ``update``, per batch.

    python benchmarks/bench_batching.py [--batches 10000]

Requests and output dicts are built outside the timed region; CPU only, no engine.
"""

from __future__ import annotations

import argparse
import time

from parley.bench import summarize
from parley.engines.batching import Batcher, BatchRequest


def bench(sessions: int, n: int, size: int = 32) -> tuple[float, float]:
    batcher = Batcher(max_batch_size=size, max_wait_s=0.005)
    reqs = [
        [
            BatchRequest(f"r{i}_{j}", f"s{j % sessions}", None, j < sessions, float(i))
            for j in range(size)
        ]
        for i in range(n)
    ]
    outs = [{r.id: None for r in rs} for rs in reqs]
    adds: list[float] = []
    steps: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        for r in reqs[i]:
            batcher.add(r)
        t1 = time.perf_counter()
        batch = batcher.schedule(float(i))
        assert batch is not None and len(batch.requests) == size
        batcher.update(batch, outs[i])
        steps.append((time.perf_counter() - t1) * 1e6)
        adds.append((t1 - t0) * 1e6)
    return summarize(adds).p50, summarize(steps).p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    args = parser.parse_args()
    print("| sessions | add x32, p50 (us) | schedule + update, p50 (us per 32-request batch) |")
    print("| --- | --- | --- |")
    for sessions in (1, 8, 32):
        add, step = bench(sessions, args.batches)
        print(f"| {sessions} | {add:.1f} | {step:.1f} |")


if __name__ == "__main__":
    main()
