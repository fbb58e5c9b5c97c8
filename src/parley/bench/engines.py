"""``parley bench engines``: the configured engines, one at a time, on the shared clips.

    parley bench engines [--config FILE] [--set KEY=VALUE] [--clips DIR] [--json OUT]

Measures, on the English clips of ``../shared/speech`` (or ``--clips``): VAD milliseconds per
32 ms window; ASR streaming speed (20 ms frames through the async ``stream()`` API, as fast as it
decodes), the delay from the end of the input to the final transcript, and word error rate; TTS
real-time factor and time to first audio; LLM time to first token and to the whole answer.
Prints markdown tables; ``--json`` also writes the raw numbers.
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
from parley.bench.clips import default_clips
from parley.bench.stats import summarize
from parley.config import Settings, load_settings
from parley.engines.base import ASR, LLM, TTS, VAD, ChatRequest, Message, SpeechOptions, TextDelta
from parley.engines.registry import build_engines
from parley.errors import ConfigError

QUESTIONS = (
    "How do I start parley?",
    "How do I connect a real language model?",
    "What is barge-in?",
    "Which languages can you speak?",
    "What is the capital of Mongolia?",
)

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
    summary = summarize(values)
    return summary.p50 if q == 0.5 else summary.p95


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("mister", "mr"))


def word_edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Substitutions, insertions and deletions that turn ``ref`` into ``hyp`` (Levenshtein
    over words, one row of the table at a time)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def _wer(reference: str, hypothesis: str) -> float:
    ref = _words(reference)
    return word_edits(ref, _words(hypothesis)) / max(1, len(ref))


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


async def bench_vad(vad: VAD, clips: list[tuple[str, Frame, str]]) -> dict[str, Any]:
    times: list[float] = []
    for _, clip, _ in clips:
        stream = vad.open_stream()
        n = stream.window_samples
        for i in range(0, len(clip) - n + 1, n):
            window = Frame(clip.samples[i : i + n], clip.sample_rate)
            start = time.perf_counter()
            await stream.probabilities(window)
            times.append((time.perf_counter() - start) * 1000)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return {
        "windows": len(times),
        "ms_per_window_p50": _percentile(times, 0.5),
        "ms_per_window_p95": _percentile(times, 0.95),
    }


async def bench_asr(asr: ASR, clips: list[tuple[str, Frame, str]]) -> dict[str, Any]:
    await asr.transcribe(Frame(clips[0][1].samples[:3200], clips[0][1].sample_rate))  # warm
    rows: list[dict[str, Any]] = []
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


async def bench_tts(tts: TTS) -> dict[str, Any]:
    options = SpeechOptions(sample_rate=24000)
    async for _ in tts.synthesize("Warm up.", options):
        pass
    rows: list[dict[str, Any]] = []
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
    vad, asr, tts, llm = results["vad"], results["asr"], results["tts"], results["llm"]
    names = results["engines"]
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| engine | metric | value | goal |",
        "| --- | --- | --- | --- |",
        f"| {names['vad']} VAD | ms per 32 ms window, p50 / p95 ({vad['windows']} windows) "
        f"| {vad['ms_per_window_p50']:.3f} / {vad['ms_per_window_p95']:.3f} | <= 1 |",
        f"| {names['asr']} | streaming speed, 20 ms frames (x real time, all clips) "
        f"| {asr['x_real_time_overall']:.1f} | >= 4 |",
        f"| {names['asr']} | end of input -> final, p50 / p95 (ms) "
        f"| {asr['final_after_end_ms_p50']:.1f} / {asr['final_after_end_ms_p95']:.1f} | |",
        f"| {names['asr']} | word error rate (all clips) | {asr['wer_overall']:.2f} | |",
        f"| {names['tts']} | synthesis speed (x real time, {len(tts['sentences'])} sentences) "
        f"| {tts['x_real_time_overall']:.0f} | >= 100 |",
        f"| {names['tts']} | time to first chunk, p50 / p95 (ms) "
        f"| {tts['first_chunk_ms_p50']:.2f} / {tts['first_chunk_ms_p95']:.2f} | |",
        f"| {names['llm']} LLM | time to first token, p50 / p95 (ms, {len(llm['questions'])} "
        f"questions) | {llm['ttft_ms_p50']:.2f} / {llm['ttft_ms_p95']:.2f} | |",
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


async def bench_llm(llm: LLM) -> dict[str, Any]:
    """Time to first token and to the last, per question (the configured LLM, e.g. faq)."""
    rows: list[dict[str, Any]] = []
    for question in QUESTIONS:
        request = ChatRequest((Message("system", "Answer briefly."), Message("user", question)))
        start = time.perf_counter()
        first = None
        text = ""
        async for event in llm.stream(request):
            if isinstance(event, TextDelta):
                if first is None:
                    first = time.perf_counter() - start
                text += event.text
        rows.append(
            {
                "question": question,
                "ttft_ms": 1000 * (first or 0.0),
                "total_ms": 1000 * (time.perf_counter() - start),
                "answer_chars": len(text),
            }
        )
    return {
        "engine": llm.name,
        "questions": rows,
        "ttft_ms_p50": _percentile([r["ttft_ms"] for r in rows], 0.5),
        "ttft_ms_p95": _percentile([r["ttft_ms"] for r in rows], 0.95),
    }


async def run(settings: Settings, clips_dir: Path) -> dict[str, Any]:
    clips = _clips(clips_dir)
    engines = build_engines(settings)
    return {
        "machine": _machine(),
        "engines": {k: getattr(engines, k).name for k in ("vad", "asr", "llm", "tts")},
        "vad": await bench_vad(engines.vad, clips),
        "asr": await bench_asr(engines.asr, clips),
        "tts": await bench_tts(engines.tts),
        "llm": await bench_llm(engines.llm),
    }


async def command(args: argparse.Namespace, console: Any) -> int:
    """``parley bench engines`` (the CLI's calling convention: async, returns the exit code)."""
    overrides = dict(item.split("=", 1) for item in (args.set or []) if "=" in item)
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    settings = load_settings(args.config, overrides=overrides)
    clips = args.clips or default_clips()
    if not (clips / "manifest.jsonl").is_file():
        raise ConfigError(f"no manifest.jsonl in {clips}")
    results = await run(settings, clips)
    print(_report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def add_parser(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    engines = actions.add_parser(
        "engines",
        parents=parents,
        help="real-time factor of the configured ASR and TTS, VAD cost, LLM time to first token",
        description="Time the configured engines one at a time on the English speech clips: VAD "
        "cost per window, ASR streaming speed, delay to the final transcript and word error "
        "rate, TTS real-time factor and time to first audio, LLM time to first token. Prints "
        "markdown tables.",
    )
    engines.add_argument("--config", type=Path, help="TOML configuration file")
    engines.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    engines.add_argument(
        "--profile", choices=("neural", "fast"), help="engines where the config names none"
    )
    engines.add_argument(
        "--clips", type=Path, help="folder with manifest.jsonl (default: the shared clips)"
    )
    engines.add_argument("--json", type=Path, help="also write the raw numbers here")
    engines.set_defaults(run=command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--set", action="append")
    parser.add_argument("--clips", type=Path)
    parser.add_argument("--json", type=Path)
    return asyncio.run(command(parser.parse_args(argv), None))


if __name__ == "__main__":
    sys.exit(main())
