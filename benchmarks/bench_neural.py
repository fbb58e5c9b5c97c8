"""Neural engines under concurrent load, batched and unbatched in the same run.

    python benchmarks/bench_neural.py tts --engine vits --levels 1,4,8,16
    python benchmarks/bench_neural.py tts --engine piper --levels 1,4,8
    python benchmarks/bench_neural.py asr --levels 1,2,4,8
    python benchmarks/bench_neural.py tts --engine vits --device cuda --levels 1,8,32,128

Run from the project root. Without ``--model`` each engine loads a full-size architecture with
random weights, built here by the same builders the tests use (tests/tinymodels) and loaded
through the engine's real loading code: its compute cost is the real model's, nothing is
downloaded. ``--model`` takes real weights instead (see the README's "Neural engines").

TTS: at each level, that many streams each speak ``--clauses`` clauses in turn, as a reply
does (the first clause is a first chunk, the rest continuations). Reported: aggregate audio
seconds per wall second, time to first audio per stream (p50/p95), mean batch size, and the
scheduler's own time per batch. The same level runs with batching on (``max_batch_size`` =
the level, at most ``--max-batch``) and off (``max_batch_size = 1``).

ASR: at each level, that many streams send real speech (the shared clips) at real-time pace
in 100 ms frames. First-partial latency is the time from the moment the first partial's audio
had been sent (``partial_interval_ms`` after the stream starts) to that partial's arrival;
final latency is from the last frame sent to the final transcript. A level passes when the
first-partial p95 is at most ``--slo-ms``. Random weights never choose end-of-text, so every
decode runs to the engine's token cap for its audio: a conservative cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.tinymodels, when run as a script

from parley.audio.files import read_audio  # noqa: E402
from parley.audio.frames import Frame  # noqa: E402
from parley.bench import summarize  # noqa: E402
from parley.bench.clips import load_clips  # noqa: E402
from parley.config import ASRSettings, TTSSettings  # noqa: E402
from parley.engines.base import SpeechOptions  # noqa: E402
from parley.engines.registry import build_asr, build_tts  # noqa: E402

# Clauses of the length a voice agent's replies are cut into.
CLAUSES = [
    "Thanks for calling, I can help with that.",
    "Your order shipped yesterday and should arrive on Thursday.",
    "Could you read me the number on the back of the card?",
    "I have moved your appointment to three in the afternoon.",
    "The outage is fixed, so please restart the router now.",
    "Is there anything else I can do for you today?",
    "Your balance is forty two dollars and ten cents.",
    "I will send a confirmation to the email on file.",
]


@dataclass
class Row:
    engine: str
    mode: str
    level: int
    wall_s: float
    audio_s: float
    x_realtime: float
    p50_ms: float
    p95_ms: float
    batches: int
    mean_batch: float
    sched_ms_per_batch: float
    extra: dict[str, Any]


def _model(args: argparse.Namespace, workdir: Path) -> str:
    if args.model:
        return str(args.model)
    if args.kind == "asr":
        from tests.tinymodels.whisper import build_whisper_for_bench

        return str(build_whisper_for_bench(workdir / "whisper", args.size))
    if args.engine == "vits":
        from tests.tinymodels.vits import build_vits_for_bench

        return str(build_vits_for_bench(workdir / "vits"))
    from tests.tinymodels.piper import build_piper_for_bench

    return str(build_piper_for_bench(workdir / "piper"))


def _sched(engine: Any) -> tuple[int, float, float]:
    """(batches, mean requests per batch, scheduler ms per batch) of the engine's scheduler."""
    scheduler = engine.scheduler
    stats = scheduler.stats
    mean = stats.requests / stats.batches if stats.batches else float("nan")
    per = scheduler.overhead_s / stats.batches * 1e3 if stats.batches else float("nan")
    return stats.batches, mean, per


# --- TTS -----------------------------------------------------------------------------------


async def _tts_level(args: argparse.Namespace, model: str, level: int, batched: bool) -> Row:
    options: dict[str, Any] = {
        "model": model,
        "device": args.device,
        "max_batch_size": min(level, args.max_batch) if batched else 1,
    }
    if args.dtype:
        options["dtype"] = args.dtype
    engine: Any = build_tts(TTSSettings(engine=args.engine, options=options))
    rate = 24000
    async for _ in engine.synthesize("Warming up the model.", SpeechOptions(sample_rate=rate)):
        pass
    await engine.scheduler.aclose()  # count only the measured run's batches

    ttfa: list[float] = []
    samples = 0

    async def speak(stream: int) -> None:
        nonlocal samples
        start = time.perf_counter()
        first = True
        for k in range(args.clauses):
            text = CLAUSES[(stream + k) % len(CLAUSES)]
            opts = SpeechOptions(sample_rate=rate, stream=f"s{stream}", continuation=k > 0)
            async for frame in engine.synthesize(text, opts):
                if first and len(frame):
                    ttfa.append((time.perf_counter() - start) * 1e3)
                    first = False
                samples += len(frame)

    began = time.perf_counter()
    await asyncio.gather(*(speak(i) for i in range(level)))
    wall = time.perf_counter() - began
    batches, mean, per = _sched(engine)
    await engine.scheduler.aclose()
    s = summarize(ttfa)
    audio = samples / rate
    return Row(
        args.engine,
        "batched" if batched else "unbatched",
        level,
        wall,
        audio,
        audio / wall,
        s.p50,
        s.p95,
        batches,
        mean,
        per,
        {"placement": str(engine.placement)},
    )


# --- ASR -----------------------------------------------------------------------------------


def _speech(rate: int) -> list[Frame]:
    clips = [c for c in load_clips() if c.duration_s <= 12]
    return [read_audio(c.path, sample_rate=rate) for c in clips]


async def _asr_level(args: argparse.Namespace, model: str, level: int, batched: bool) -> Row:
    options: dict[str, Any] = {
        "model": model,
        "device": args.device,
        "max_batch_size": min(level, args.max_batch) if batched else 1,
        "partial_interval_ms": args.partial_ms,
    }
    if args.dtype:
        options["dtype"] = args.dtype
    engine: Any = build_asr(ASRSettings(engine="whisper", options=options))
    rate = engine.sample_rate
    clips = _speech(rate)
    await engine.transcribe(clips[0])
    await engine.scheduler.aclose()

    first_partial: list[float] = []
    finals: list[float] = []
    audio_s = 0.0
    step = rate // 10  # 100 ms frames

    async def listen(stream: int) -> None:
        nonlocal audio_s
        clip = clips[stream % len(clips)]
        audio_s += clip.duration_s
        sent: dict[str, float] = {}

        async def frames() -> Any:
            start = time.perf_counter()
            for i in range(0, len(clip), step):
                # Real-time pace against the stream's own clock, not sleep drift.
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                yield Frame(clip.samples[i : i + step], rate)
                if (i + step) / rate * 1e3 >= args.partial_ms and "first" not in sent:
                    sent["first"] = time.perf_counter()
            sent["last"] = time.perf_counter()

        async with contextlib.aclosing(engine.stream(frames())) as results:
            async for transcript in results:
                now = time.perf_counter()
                if not transcript.is_final and "partial" not in sent and "first" in sent:
                    sent["partial"] = now
                    first_partial.append((now - sent["first"]) * 1e3)
                if transcript.is_final:
                    finals.append((now - sent["last"]) * 1e3)

    began = time.perf_counter()
    await asyncio.gather(*(listen(i) for i in range(level)))
    wall = time.perf_counter() - began
    batches, mean, per = _sched(engine)
    await engine.scheduler.aclose()
    s, f = summarize(first_partial), summarize(finals)
    return Row(
        "whisper",
        "batched" if batched else "unbatched",
        level,
        wall,
        audio_s,
        audio_s / wall,
        s.p50,
        s.p95,
        batches,
        mean,
        per,
        {
            "placement": str(engine.placement),
            "partials_seen": s.n,
            "final_p50_ms": f.p50,
            "final_p95_ms": f.p95,
            "slo_met": s.n == level and s.p95 <= args.slo_ms,
        },
    )


# --- main ----------------------------------------------------------------------------------


def _table(rows: list[Row], kind: str) -> str:
    if kind == "tts":
        head = (
            "| engine | mode | streams | audio s / wall s | first audio p50 | p95 | "
            "batches | mean batch | scheduler / batch |\n|---|---|---|---|---|---|---|---|---|"
        )
        lines = [
            f"| {r.engine} | {r.mode} | {r.level} | {r.x_realtime:.1f}x | {r.p50_ms:.0f} ms | "
            f"{r.p95_ms:.0f} ms | {r.batches} | {r.mean_batch:.1f} | "
            f"{r.sched_ms_per_batch:.3f} ms |"
            for r in rows
        ]
    else:
        head = (
            "| mode | streams | first partial p50 | p95 | final p50 | final p95 | "
            "batches | mean batch | scheduler / batch | p95 <= SLO |\n"
            "|---|---|---|---|---|---|---|---|---|---|"
        )
        lines = [
            f"| {r.mode} | {r.level} | {r.p50_ms:.0f} ms | {r.p95_ms:.0f} ms | "
            f"{r.extra['final_p50_ms']:.0f} ms | {r.extra['final_p95_ms']:.0f} ms | "
            f"{r.batches} | {r.mean_batch:.1f} | {r.sched_ms_per_batch:.3f} ms | "
            f"{'yes' if r.extra['slo_met'] else 'no'} |"
            for r in rows
        ]
    return "\n".join([head, *lines])


async def _main(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args, Path(tmp))
        run = _tts_level if args.kind == "tts" else _asr_level
        for level in args.levels:
            for batched in (True, False):
                row = await run(args, model, level, batched)
                rows.append(row)
                print(
                    f"{row.engine} {row.mode} x{level}: {row.x_realtime:.1f}x RT, "
                    f"p50 {row.p50_ms:.0f} ms, p95 {row.p95_ms:.0f} ms, "
                    f"mean batch {row.mean_batch:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["tts", "asr"])
    parser.add_argument("--engine", default="vits", choices=["vits", "piper"], help="TTS engine")
    parser.add_argument("--model", help="real weights (engine's model option) instead of random")
    parser.add_argument("--size", default="tiny.en", help="Whisper architecture for random weights")
    parser.add_argument("--levels", default="1,4,8", help="concurrent streams, comma-separated")
    parser.add_argument("--clauses", type=int, default=3, help="clauses per TTS stream")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--partial-ms", type=int, default=500)
    parser.add_argument("--slo-ms", type=float, default=300.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    rows = asyncio.run(_main(args))
    print(
        f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}, python "
        f"{platform.python_version()}; device {args.device}\n"
    )
    print(_table(rows, args.kind))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
