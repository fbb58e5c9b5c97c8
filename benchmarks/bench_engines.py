"""Benchmark the embedded engines (silero VAD, pocketsphinx ASR, espeak-ng TTS) on real clips.

    python benchmarks/bench_engines.py [--clips DIR] [--json OUT]

Measures, on the shared English clips (``../shared/speech`` beside the repository by default):
VAD milliseconds per 32 ms window; pocketsphinx streaming speed (20 ms frames through the async
``stream()`` API, as fast as it decodes), the delay from the end of the input to the final
transcript, and word error rate; espeak-ng real-time factor and time to first audio. Prints
markdown tables; ``--json`` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import soundfile as sf

from parley.audio.frames import Frame
from parley.engines.base import SpeechOptions
from parley.engines.espeak import EspeakTTS
from parley.engines.pocketsphinx import PocketsphinxASR
from parley.engines.silero import SileroVAD

DEFAULT_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "speech"

SENTENCES = (
    "Hello!",
    "Sure, I can help you with that.",
    "Your order has been shipped and should arrive on Thursday afternoon.",
    "The quick brown fox jumps over the lazy dog, and then it runs back into the forest "
    "before anyone can see where it went.",
    "Thank you for calling. Please hold while I transfer you to the next available agent, "
    "who will be able to answer your questions about billing, refunds and delivery times.",
)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("mister", "mr"))


def _wer(reference: str, hypothesis: str) -> float:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def _clips(folder: Path) -> list[tuple[str, Frame, str]]:
    out = []
    with (folder / "manifest.jsonl").open() as lines:
        for line in lines:
            entry = json.loads(line)
            if entry["language"] != "en":
                continue
            samples, rate = sf.read(folder / entry["file"], dtype="int16")
            out.append((entry["id"], Frame(samples, rate), entry["transcript"]))
    return out


async def bench_vad(clips: list[tuple[str, Frame, str]]) -> dict[str, Any]:
    vad = SileroVAD()
    times: list[float] = []
    for _, clip, _ in clips:
        stream = vad.open_stream()
        for i in range(0, len(clip) - 511, 512):
            window = Frame(clip.samples[i : i + 512], clip.sample_rate)
            start = time.perf_counter()
            await stream.probabilities(window)
            times.append((time.perf_counter() - start) * 1000)
        stream.close()
    return {
        "windows": len(times),
        "ms_per_window_p50": _percentile(times, 0.5),
        "ms_per_window_p95": _percentile(times, 0.95),
    }


async def bench_asr(clips: list[tuple[str, Frame, str]]) -> dict[str, Any]:
    asr = PocketsphinxASR(warm=1)
    rows = []
    for name, clip, reference in clips:
        ended = 0.0

        async def frames(clip: Frame = clip) -> AsyncIterator[Frame]:
            nonlocal ended
            for i in range(0, len(clip), 320):  # 20 ms
                yield Frame(clip.samples[i : i + 320], clip.sample_rate)
            ended = time.perf_counter()

        start = time.perf_counter()
        partials = 0
        text = ""
        async for transcript in asr.stream(frames()):
            if transcript.is_final:
                text = transcript.text
            else:
                partials += 1
        done = time.perf_counter()
        rows.append(
            {
                "clip": name,
                "audio_s": clip.duration_s,
                "wall_s": done - start,
                "x_real_time": clip.duration_s / (done - start),
                "final_after_end_ms": (done - ended) * 1000,
                "partials": partials,
                "wer": _wer(reference, text),
                "text": text,
            }
        )
    audio = sum(r["audio_s"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    finals = [r["final_after_end_ms"] for r in rows]
    ref_words = [len(_words(ref)) for _, _, ref in clips]
    return {
        "clips": rows,
        "x_real_time_overall": audio / wall,
        "final_after_end_ms_p50": _percentile(finals, 0.5),
        "final_after_end_ms_p95": _percentile(finals, 0.95),
        "wer_overall": sum(r["wer"] * n for r, n in zip(rows, ref_words, strict=True))
        / sum(ref_words),
    }


async def bench_tts() -> dict[str, Any]:
    tts = EspeakTTS()
    options = SpeechOptions(sample_rate=24000)
    async for _ in tts.synthesize("Warm up.", options):
        pass
    rows = []
    for sentence in SENTENCES:
        start = time.perf_counter()
        first = None
        samples = 0
        async for frame in tts.synthesize(sentence, options):
            if first is None:
                first = time.perf_counter() - start
            samples += len(frame)
        wall = time.perf_counter() - start
        audio = samples / options.sample_rate
        rows.append(
            {
                "words": len(sentence.split()),
                "audio_s": audio,
                "wall_ms": wall * 1000,
                "x_real_time": audio / wall,
                "first_chunk_ms": (first or wall) * 1000,
            }
        )
    audio = sum(r["audio_s"] for r in rows)
    wall = sum(r["wall_ms"] for r in rows) / 1000
    return {
        "sentences": rows,
        "x_real_time_overall": audio / wall,
        "first_chunk_ms_p50": _percentile([r["first_chunk_ms"] for r in rows], 0.5),
        "first_chunk_ms_p95": _percentile([r["first_chunk_ms"] for r in rows], 0.95),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _report(results: dict[str, Any]) -> str:
    vad, asr, tts = results["vad"], results["asr"], results["tts"]
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| engine | metric | value | goal |",
        "| --- | --- | --- | --- |",
        f"| silero VAD | ms per 32 ms window, p50 / p95 ({vad['windows']} windows) "
        f"| {vad['ms_per_window_p50']:.3f} / {vad['ms_per_window_p95']:.3f} | <= 1 |",
        f"| pocketsphinx | streaming speed, 20 ms frames (x real time, all clips) "
        f"| {asr['x_real_time_overall']:.1f} | >= 4 |",
        f"| pocketsphinx | end of input -> final, p50 / p95 (ms) "
        f"| {asr['final_after_end_ms_p50']:.1f} / {asr['final_after_end_ms_p95']:.1f} | |",
        f"| pocketsphinx | word error rate (all clips) | {asr['wer_overall']:.2f} | |",
        f"| espeak-ng | synthesis speed (x real time, {len(tts['sentences'])} sentences) "
        f"| {tts['x_real_time_overall']:.0f} | >= 100 |",
        f"| espeak-ng | time to first chunk, p50 / p95 (ms) "
        f"| {tts['first_chunk_ms_p50']:.2f} / {tts['first_chunk_ms_p95']:.2f} | |",
        "",
        "| clip | audio (s) | x real time | final after end (ms) | partials | WER |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in asr["clips"]:
        lines.append(
            f"| {r['clip']} | {r['audio_s']:.1f} | {r['x_real_time']:.1f} "
            f"| {r['final_after_end_ms']:.1f} | {r['partials']} | {r['wer']:.2f} |"
        )
    lines += [
        "",
        "| sentence words | audio (s) | wall (ms) | x real time | first chunk (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in tts["sentences"]:
        lines.append(
            f"| {r['words']} | {r['audio_s']:.2f} | {r['wall_ms']:.1f} "
            f"| {r['x_real_time']:.0f} | {r['first_chunk_ms']:.2f} |"
        )
    return "\n".join(lines)


async def run(clips_dir: Path) -> dict[str, Any]:
    clips = _clips(clips_dir)
    return {
        "machine": _machine(),
        "vad": await bench_vad(clips),
        "asr": await bench_asr(clips),
        "tts": await bench_tts(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder with manifest")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if not (args.clips / "manifest.jsonl").is_file():
        print(f"error: no manifest.jsonl in {args.clips}", file=sys.stderr)
        return 2
    results = asyncio.run(run(args.clips))
    print(_report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
