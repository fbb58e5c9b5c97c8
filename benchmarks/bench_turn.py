"""End of turn: a silence window against Smart Turn v3, on real speech with mid-thought pauses.

    python benchmarks/bench_turn.py [--pauses 600,1000,1400] [--thresholds 0.5]
        [--ask-after-ms 200] [--reask-ms 200] [--max-silence-ms 1500] [--json out.json]

Cases are built from ``../shared/speech`` (16 kHz):

- *clause* and *phrase*: an English sentence cut at the end of a word, then a pause of each
  ``--pauses`` length, then the rest of the sentence. Clause cuts fall at a clause or phrase
  boundary (what came before may sound finished: "we must find a new home | in the stars");
  phrase cuts fall after a word that needs another ("... a new home in the | stars"), where
  speakers hesitate. Cut points come from pocketsphinx forced alignment and were chosen by
  grammar before any policy ran;
- *natural*: the JFK clip as recorded, with its own pauses (1.1 s after "Americans" and after
  "not", 0.5 s after "for you");
- *complete*: every whole clip (English, Spanish, German, French), and the ten sentences of the
  long Harvard recording taken apart at its pauses.

Every pause is filled with low noise (-61 dBFS), and 2 s of it follows every case. Silero VAD
(parley's, 32 ms windows) scores each case once; each policy then reads the same probabilities
through parley's own :class:`TurnDetector` (threshold 0.5, hysteresis 0.15):

- ``server_vad N ms``: the turn ends after N ms of silence;
- ``smart-turn``: after ``--ask-after-ms`` of silence the model hears the turn (from 300 ms
  before its first voiced window to now); p >= the threshold ends the turn then (plus the
  model's measured run time); otherwise it is asked again every ``--reask-ms`` ("re-ask") or
  not again ("once"), and ``--max-silence-ms`` of silence ends the turn regardless.

A false cut-off is a case whose turn was declared over before its last word: a paused case cut
during its pause, a complete one split. The delay is from the last voiced window of a case's
final turn to the decision that ends it, over all cases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from parley.audio.frames import PCM16, Frame
from parley.bench.clips import default_clips, load_clips
from parley.bench.stats import summarize
from parley.engines.silero import SileroVAD
from parley.engines.smart_turn import SmartTurn
from parley.pipeline.turns import TurnDetector, TurnState

RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz
WINDOW_MS = 1000 * WINDOW / RATE
PREFIX_MS = 300  # server_vad's prefix_padding_ms: the audio kept before the first voiced window
TAIL_MS = 2000
NOISE_STD = 30.0  # int16 units: -61 dBFS, a quiet room

# (clip, cut at (s), the sentence with the cut marked). Each cut is the end of a word. None of
# them is a cut the tests use (tests/engines/test_smart_turn.py).
CLAUSE = [  # at a clause or phrase boundary: what came before may sound finished
    ("en_ldc93s1", 1.30, "she had your dark suit | in greasy wash water all year"),
    ("en_librivox_0920", 2.48, "had he married a more amiable woman | he might have been ..."),
    ("en_librivox_0920", 4.99, "... made still more respectable | than he was"),
    ("en_librivox_0870", 2.21, "and mister john dashwood had then | leisure to consider ..."),
    ("en_librivox_0870", 5.45, "... how much there might be prudently | in his power ..."),
    ("en_new_home_stars", 2.01, "we must find a new home | in the stars"),
    ("en_sb_culprit", 1.11, "my father has revealed | the culprit's name"),
    ("en_librivox_0880", 1.05, "he was not | an ill disposed young man"),
    ("en_goforward_raw", 1.16, "go forward | ten meters"),
    ("en_cards_005", 1.13, "eight of spades | four of clubs seven of hearts"),
    ("en_sb_birch_canoe", 1.11, "the birch canoe | slid on the smooth planks"),
    ("en_cheetah_platforms", 2.04, "today only platforms | one and three are used"),
]
PHRASE = [  # inside a phrase, after a word that needs another: where a speaker hesitates
    ("en_ldc93s1", 1.38, "she had your dark suit in | greasy wash water all year"),
    ("en_librivox_0920", 1.02, "had he married a | more amiable woman ..."),
    ("en_librivox_0920", 5.12, "... still more respectable than | he was"),
    ("en_librivox_0870", 2.88, "... had then leisure to | consider how much ..."),
    ("en_librivox_0870", 6.60, "... in his power to do for | them"),
    ("en_new_home_stars", 2.18, "we must find a new home in the | stars"),
    ("en_sb_culprit", 1.18, "my father has revealed the | culprit's name"),
    ("en_librivox_0880", 1.29, "he was not an | ill disposed young man"),
    ("en_cards_005", 1.63, "eight of spades four of | clubs seven of hearts"),
    ("en_cheetah_platforms", 3.03, "today only platforms one and three are | used"),
]
SKIP_COMPLETE = {"en_ldc93s1_8k", "en_jfk_wav", "en_osr_harvard72_8k"}  # a copy; natural; split


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    kind: str  # clause | phrase (paused mid-thought) | natural | complete
    audio: PCM16
    pause_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    silence_ms: int
    ask_after_ms: int | None = None
    reask_ms: int | None = None
    threshold: float = 0.5


@dataclass(slots=True)
class Outcome:
    ends: list[tuple[float, float]]  # (decided at, last voiced) in ms of case audio
    calls: int = 0


Ask = Callable[[Case, float, float], Awaitable[tuple[float, float]]]


def _noise(ms: float, rng: np.random.Generator) -> PCM16:
    n = round(ms * RATE / 1000)
    return np.clip(np.rint(rng.normal(0.0, NOISE_STD, n)), -32768, 32767).astype(np.int16)


def _read(path: Path) -> PCM16:
    samples, rate = sf.read(path, dtype="int16")
    assert rate == RATE, f"{path} is {rate} Hz"
    return np.asarray(samples, np.int16)


async def _probabilities(vad: SileroVAD, audio: PCM16) -> list[float]:
    stream = vad.open_stream()
    try:
        return await stream.probabilities(Frame(audio, RATE))
    finally:
        stream.close()


def _segments(probs: list[float], min_gap_ms: float) -> list[tuple[float, float]]:
    """(first voiced, last voiced) ms of each stretch of speech, split at gaps >= min_gap_ms."""
    detector = TurnDetector(silence_duration_ms=int(min_gap_ms))
    out: list[tuple[float, float]] = []
    start = 0.0
    for i, p in enumerate(probs):
        edge = detector.feed(p, i * WINDOW_MS, (i + 1) * WINDOW_MS)
        if edge is not None and edge.started:
            start = edge.at_ms
        elif edge is not None:
            out.append((start, edge.at_ms))
    if (edge := detector.force_stop()) is not None:
        out.append((start, edge.at_ms))
    return out


async def build_cases(folder: Path, pauses: list[int], vad: SileroVAD) -> list[Case]:
    rng = np.random.default_rng(12)
    clips = {c.id: c for c in load_clips(folder, language=None)}
    cases: list[Case] = []
    for kind, cuts in (("clause", CLAUSE), ("phrase", PHRASE)):
        for clip_id, cut_s, _ in cuts:
            audio = _read(clips[clip_id].path)
            cut = round(cut_s * RATE)
            for pause in pauses:
                parts = (audio[:cut], _noise(pause, rng), audio[cut:], _noise(TAIL_MS, rng))
                name = f"{clip_id}@{cut_s}+{pause}"
                cases.append(Case(name, kind, np.concatenate(parts), pause))
    jfk = _read(clips["en_jfk_wav"].path)
    cases.append(Case("en_jfk_wav", "natural", np.concatenate((jfk, _noise(TAIL_MS, rng)))))
    for clip in clips.values():
        if clip.id not in SKIP_COMPLETE:
            audio = np.concatenate((_read(clip.path), _noise(TAIL_MS, rng)))
            cases.append(Case(clip.id, "complete", audio))
    harvard = _read(clips["en_osr_harvard72_8k"].path)
    for n, (start, end) in enumerate(_segments(await _probabilities(vad, harvard), 600), 1):
        a = round((start - PREFIX_MS) * RATE / 1000)
        b = round((end + 100) * RATE / 1000)
        audio = np.concatenate((harvard[max(a, 0) : b], _noise(TAIL_MS, rng)))
        cases.append(Case(f"harvard72_{n}", "complete", audio))
    return cases


async def run(policy: Policy, case: Case, probs: list[float], ask: Ask) -> Outcome:
    detector = TurnDetector(silence_duration_ms=policy.silence_ms)
    out = Outcome([])
    start = 0.0
    next_ask = policy.ask_after_ms
    for i, p in enumerate(probs):
        begin, end = i * WINDOW_MS, (i + 1) * WINDOW_MS
        edge = detector.feed(p, begin, end)
        if edge is not None:
            if edge.started:
                start = edge.at_ms
            else:
                out.ends.append((end, edge.at_ms))
            continue
        if detector.state is not TurnState.SPEECH or policy.ask_after_ms is None:
            continue
        if detector.silence_ms == 0:
            next_ask = policy.ask_after_ms
        elif next_ask is not None and detector.silence_ms >= next_ask:
            out.calls += 1
            prob, cost_ms = await ask(case, max(start - PREFIX_MS, 0.0), end)
            if prob >= policy.threshold:
                stop = detector.force_stop()
                assert stop is not None
                out.ends.append((end + cost_ms, stop.at_ms))
                continue
            next_ask = next_ask + policy.reask_ms if policy.reask_ms else None
    assert detector.state is TurnState.SILENCE, f"{case.name}: the turn never ended"
    return out


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=None)
    parser.add_argument("--pauses", default="600,1000,1400")
    parser.add_argument("--thresholds", default="0.5")
    parser.add_argument("--ask-after-ms", type=int, default=200)
    parser.add_argument("--reask-ms", type=int, default=200)
    parser.add_argument("--max-silence-ms", type=int, default=1500)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pauses = [int(p) for p in args.pauses.split(",")]

    vad = SileroVAD()
    turn = SmartTurn()
    cases = await build_cases(args.clips or default_clips(), pauses, vad)
    probs = {c.name: await _probabilities(vad, c.audio) for c in cases}

    cache: dict[tuple[str, int, int], tuple[float, float]] = {}
    run_ms: list[float] = []

    async def ask(case: Case, from_ms: float, to_ms: float) -> tuple[float, float]:
        a, b = round(from_ms * RATE / 1000), round(to_ms * RATE / 1000)
        if (key := (case.name, a, b)) not in cache:
            t0 = time.perf_counter()
            prob = await turn.end_of_turn(Frame(case.audio[a:b], RATE))
            cache[key] = (prob, 1000 * (time.perf_counter() - t0))
            run_ms.append(cache[key][1])
        return cache[key]

    await turn.end_of_turn(Frame(cases[0].audio, RATE))  # warm up
    after, reask, longest = args.ask_after_ms, args.reask_ms, args.max_silence_ms
    policies = [Policy("server_vad 500 ms", 500), Policy(f"server_vad {longest} ms", longest)]
    for t in (float(x) for x in args.thresholds.split(",")):
        policies.append(
            Policy(f"smart-turn p>={t} once, else {longest} ms", longest, after, None, t)
        )
        policies.append(
            Policy(f"smart-turn p>={t} re-ask, max {longest} ms", longest, after, reask, t)
        )

    by_kind = {k: [c for c in cases if c.kind == k] for k in ("clause", "phrase", "complete")}
    print(
        f"paused: {len(CLAUSE)} clause + {len(PHRASE)} phrase cuts x pauses {pauses} ms; "
        f"natural: JFK; complete: {len(by_kind['complete'])}; ask after {after} ms, "
        f"re-ask every {reask} ms; {_machine()}\n"
    )
    slash = "/".join(str(p) for p in pauses)
    print(
        f"| policy | clause cut-offs ({slash} ms) | phrase cut-offs ({slash} ms) | "
        "JFK premature ends | complete split | delay mean | p50 | p95 | model calls / case |"
    )
    print("|---" * 9 + "|")
    report = []
    for policy in policies:
        outcomes = {c.name: await run(policy, c, probs[c.name], ask) for c in cases}
        cut = {
            kind: [
                sum(len(outcomes[c.name].ends) > 1 for c in by_kind[kind] if c.pause_ms == p)
                for p in pauses
            ]
            for kind in ("clause", "phrase")
        }
        natural = len(outcomes["en_jfk_wav"].ends) - 1
        split = sum(len(outcomes[c.name].ends) > 1 for c in by_kind["complete"])
        delays = summarize(o.ends[-1][0] - o.ends[-1][1] for o in outcomes.values())
        calls = sum(o.calls for o in outcomes.values()) / len(cases)
        clause = "/".join(map(str, cut["clause"])) + f" of {len(CLAUSE)}"
        phrase = "/".join(map(str, cut["phrase"])) + f" of {len(PHRASE)}"
        print(
            f"| {policy.name} | {clause} | {phrase} | {natural} | "
            f"{split} of {len(by_kind['complete'])} | {delays.mean:.0f} ms | {delays.p50:.0f} ms | "
            f"{delays.p95:.0f} ms | {calls:.1f} |"
        )
        report.append(
            {
                "policy": policy.name,
                "cut_offs": cut,
                "jfk_premature_ends": natural,
                "complete_split": split,
                "delay_ms": {"mean": delays.mean, "p50": delays.p50, "p95": delays.p95},
                "calls_per_case": calls,
                "ends": {name: o.ends for name, o in outcomes.items()},
            }
        )
    model = summarize(run_ms)
    print(
        f"\nSmart Turn run time per call (features + ONNX, 1 thread): p50 {model.p50:.0f} ms, "
        f"p95 {model.p95:.0f} ms over {model.n} calls"
    )
    if args.json:
        probs_out = {f"{k[0]}[{k[1]}:{k[2]}]": v[0] for k, v in cache.items()}
        args.json.write_text(
            json.dumps({"machine": _machine(), "policies": report, "asked": probs_out}, indent=1)
        )


if __name__ == "__main__":
    asyncio.run(main())
