"""What a Ray Serve hop adds to each engine call: the same engine in-process and as a deployment.

    eval "$(.ci/ray.sh)"        # a one-node Ray head on loopback
    python benchmarks/bench_ray.py --calls 40 --profile fast --batch-wait 0.01 0

For each ``--batch-wait`` (the deployments' ``batch_wait_timeout_s``) it deploys an application of
its own (``--profile``'s ASR and TTS, one replica each), then makes ``--calls`` calls one at a
time, alternating in-process and remote so both see the same machine load:

- TTS: one sentence at 24 kHz; time to the first frame and to the last;
- ASR: ``transcribe`` of a 2.9 s clip (en_ldc93s1).

It prints p50/p99 of each and the added latency (remote minus in-process, at p50 and p99), and
deletes the application. One call at a time measures the hop, not batching: a lone request
waits ``batch_wait_timeout_s`` for a batch that never fills, which the rows with 0 show apart.
On two cores the replica and the in-process engine share the CPUs with this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from parley.audio.files import read_audio  # noqa: E402
from parley.audio.frames import Frame  # noqa: E402
from parley.config import Settings, load_settings  # noqa: E402
from parley.engines.base import ASR, TTS, SpeechOptions  # noqa: E402
from parley.engines.registry import build_asr, build_tts  # noqa: E402

CLIP = ROOT.parent / "shared" / "speech" / "en_ldc93s1.wav"
T = TypeVar("T")
SENTENCE = "Your table for four is booked for seven thirty tonight."


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _tts_call(tts: TTS) -> tuple[float, float]:
    started = time.perf_counter()
    first = 0.0
    async for _ in tts.synthesize(SENTENCE, SpeechOptions(sample_rate=24000)):
        if not first:
            first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def _asr_call(asr: ASR, clip: Frame) -> float:
    started = time.perf_counter()
    await asr.transcribe(clip)
    return time.perf_counter() - started


async def _paired(
    calls: int, local: Callable[[], Awaitable[T]], remote: Callable[[], Awaitable[T]]
) -> tuple[list[T], list[T]]:
    """``calls`` results of each, in-process and remote alternating (which goes first too),
    after two warm-up rounds."""
    mine: list[T] = []
    theirs: list[T] = []
    for i in range(calls + 2):
        if i % 2:
            a, b = await local(), await remote()
        else:
            b, a = await remote(), await local()
        if i >= 2:
            mine.append(a)
            theirs.append(b)
    return mine, theirs


def _row(what: str, wait: float, local: list[float], remote: list[float]) -> str:
    ms = [1000 * f(v, q) for v in (local, remote) for f, q in ((_pct, 0.5), (_pct, 0.99))]
    added = (ms[2] - ms[0], ms[3] - ms[1])
    return (
        f"| {what} | {wait * 1000:.0f} | {ms[0]:.1f} / {ms[1]:.1f} | {ms[2]:.1f} / {ms[3]:.1f} "
        f"| {added[0]:+.1f} / {added[1]:+.1f} |"
    )


async def _bench(base: Settings, wait: float, calls: int) -> list[str]:
    from ray import serve

    from parley.engines.ray_serve import RemoteASR, RemoteTTS, deploy

    settings = base.model_copy(
        update={
            "engines": base.engines.model_copy(
                update={
                    "app_name": f"parley-bench-{uuid.uuid4().hex[:6]}",
                    "batch_wait_timeout_s": wait,
                }
            )
        }
    )
    started = time.perf_counter()
    await asyncio.to_thread(deploy, settings)
    print(f"deployed in {time.perf_counter() - started:.1f} s (batch wait {wait} s)")
    try:
        remote_tts = await RemoteTTS.connect(settings.engines)
        remote_asr = await RemoteASR.connect(settings.engines)
        local_tts = build_tts(settings.tts)
        local_asr = build_asr(settings.asr)
        clip = read_audio(CLIP, sample_rate=local_asr.sample_rate)
        tts_local, tts_remote = await _paired(
            calls, lambda: _tts_call(local_tts), lambda: _tts_call(remote_tts)
        )
        asr_local, asr_remote = await _paired(
            calls, lambda: _asr_call(local_asr, clip), lambda: _asr_call(remote_asr, clip)
        )
        stats = await remote_tts.stats()
        print(f"TTS replica: {stats['batches']} batches, sizes {stats['sizes']}")
        await remote_tts.aclose()
        await remote_asr.aclose()
    finally:
        serve.delete(settings.engines.app_name)
    name = f"{settings.tts.engine} TTS"
    first = ([t[0] for t in tts_local], [t[0] for t in tts_remote])
    whole = ([t[1] for t in tts_local], [t[1] for t in tts_remote])
    return [
        _row(f"{name}, first frame", wait, *first),
        _row(f"{name}, whole sentence", wait, *whole),
        _row(f"{settings.asr.engine} ASR, 2.9 s clip", wait, asr_local, asr_remote),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", default=os.environ.get("PARLEY_TEST_RAY_ADDRESS"))
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--profile", choices=("fast", "neural"), default="fast")
    parser.add_argument("--batch-wait", type=float, nargs="+", default=[0.01, 0.0])
    parser.add_argument("--replica-cpus", type=float, default=0.5)
    args = parser.parse_args()
    if not args.address:
        sys.exit('no Ray cluster: eval "$(.ci/ray.sh)" first, or pass --address HOST:PORT')
    overrides: dict[str, object] = {
        "profile": args.profile,
        "engines.backend": "ray",
        "engines.address": args.address,
        "engines.replica_cpus": args.replica_cpus,
    }
    if args.profile == "fast":
        overrides["asr.options"] = {"processes": 1}  # one decoding process each side
    base = load_settings(env={}, overrides=overrides)
    rows = []
    for wait in args.batch_wait:
        rows += await _bench(base, wait, args.calls)
    print(f"\n{args.calls} calls each, one at a time, in-process and remote alternating\n")
    print(
        "| engine call | batch wait (ms) | in-process p50 / p99 (ms) "
        "| Ray Serve p50 / p99 (ms) | added p50 / p99 (ms) |"
    )
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    import ray

    ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
