"""End of turn decided -> first reply audio, per stage, over the shared English clips.

Each clip is one caller turn: it is streamed into a fresh pipeline (real engines from the
configuration, ``faq`` LLM by default) in 20 ms packets, followed by silence until the turn ends
and the reply is generated. ``--pace realtime`` (default) streams at the speed of speech, as a
caller would, so the recogniser runs alongside the speech; ``--pace fast`` feeds as fast as
possible (the recogniser then has a backlog to finish at the end of the turn).

    python benchmarks/bench_pipeline.py [--clips DIR] [--repeat N] [--pace realtime|fast]
                                        [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

from parley.audio.files import read_audio
from parley.audio.frames import Frame
from parley.bench import load_clips, summarize
from parley.config import load_settings
from parley.engines.registry import build_engines, warm_up
from parley.pipeline import Pipeline, ResponseDone, TranscriptFinal
from parley.pipeline.timeline import STAGES

PACKET_MS = 20


async def one_turn(engines, settings, path: Path, realtime: bool) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    recording = read_audio(path)
    rate = recording.sample_rate
    n = rate * PACKET_MS // 1000
    pipeline = Pipeline(engines, settings, input_rate=rate)
    done: list[ResponseDone] = []
    transcript: list[str] = []

    async def collect() -> None:
        async for event in pipeline.events():
            if isinstance(event, ResponseDone):
                done.append(event)
            elif isinstance(event, TranscriptFinal):
                transcript.append(event.text)

    silence_ms = settings.turn_detection.silence_duration_ms + 200
    packets = [recording.samples[i : i + n] for i in range(0, len(recording), n)]
    packets += [Frame.silence(PACKET_MS, rate).samples] * (silence_ms // PACKET_MS)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        async with pipeline:
            start = time.perf_counter()
            for i, packet in enumerate(packets):
                await pipeline.push(Frame(packet, rate))
                if realtime:
                    due = start + (i + 1) * PACKET_MS / 1000
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                else:
                    await asyncio.sleep(0)
            await pipeline.end_of_input()
    if not done:
        return {}, " ".join(transcript)
    timeline = done[0].timeline
    row = dict(timeline.stages())
    if timeline.response_latency_ms is not None:
        row["response_latency"] = timeline.response_latency_ms
    return row, " ".join(transcript)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pace", choices=["realtime", "fast"], default="realtime")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    settings = load_settings(overrides=overrides)
    engines = build_engines(settings)
    await warm_up(engines)
    clips = load_clips(args.clips)
    rows: list[dict] = []
    for _ in range(args.repeat):
        for clip in clips:
            row, text = await one_turn(engines, settings, clip.path, args.pace == "realtime")
            if row:
                rows.append(row)
            print(
                f"{clip.id:28s} {row.get('response_latency', float('nan')):7.1f} ms  {text[:50]}",
                file=sys.stderr,
            )
    names = [s[0] for s in STAGES] + ["response_latency"]
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={_cores()}".strip(),
        "pace": args.pace,
        "llm": settings.llm.resolved_engine,
        "silence_duration_ms": settings.turn_detection.silence_duration_ms,
        "turns": len(rows),
        "stages_ms": {n: summarize(r[n] for r in rows if n in r).to_dict() for n in names},
    }
    print(f"\n{'stage':26s} {'p50 ms':>9s} {'p95 ms':>9s} {'mean ms':>9s}   n")
    for name in names:
        s = summarize(r[name] for r in rows if name in r)
        print(f"{name:26s} {s.p50:9.1f} {s.p95:9.1f} {s.mean:9.1f} {s.n:4d}")
    if args.json:
        args.json.write_text(json.dumps({**result, "rows": rows}, indent=2))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
