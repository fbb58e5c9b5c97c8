"""Watermark robustness, false positives and audibility on speech parley synthesised.

    python benchmarks/bench_watermark.py [--sentences 52] [--fp 3000] [--json OUT]

Synthesises the sentences below with the default TTS (Piper joe, 24 kHz), marks each reply by
streaming the TTS chunks through an :class:`~parley.trust.Embedder` (a random 32-bit payload
each), then for every attack separately measures how often :func:`~parley.trust.detect` finds the
mark, how many payload bits it reads right where it does, and how often the CRC-checked payload
is the one embedded. False positives: 3 s excerpts of unmarked audio (the clips of
``../shared/speech``, the unmarked TTS replies, silence, white and pink noise). Audibility: PESQ
(wide band, 16 kHz) marked vs unmarked, and the Whisper round-trip WER of both. Prints a
markdown table (docs/trust.md keeps the last one).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soxr

from parley.audio.files import read_audio
from parley.audio.frames import Frame
from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from parley.bench.engines import _words, word_edits
from parley.config import load_settings
from parley.engines.base import SpeechOptions
from parley.engines.registry import build_asr, build_tts
from parley.trust import Embedder, WatermarkKey, detect
from parley.trust.watermark import decode_bits

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "speech"
RATE = 24000
SUBJECTS = (
    "Your order",
    "The technician",
    "Our support team",
    "The refund for your last invoice",
    "A new appointment",
    "The replacement router",
    "Your monthly statement",
    "The delivery driver",
    "Your travel insurance claim",
    "The conference room booking",
    "My colleague from the billing department",
    "The software update",
    "Your prescription",
)
PREDICATES = (
    "has been confirmed and you will receive an email with all the details within the hour.",
    "should arrive on Thursday afternoon, but please call us back if anything looks wrong.",
    "was moved to next Monday at ten in the morning because of the public holiday.",
    "will be processed in three to five working days once we have checked the paperwork.",
)
SENTENCES = tuple(f"{s} {p}" for p in PREDICATES for s in SUBJECTS)  # 52


def _codec(frame: Frame, container: str, codec: str, bitrate: int, rate: int) -> Frame:
    """Encode and decode through PyAV (FFmpeg's encoders)."""
    x = np.asarray(soxr.resample(frame.samples, frame.sample_rate, rate), np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.bit_rate = bitrate
        stream.layout = "mono"
        af = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        af.sample_rate = rate
        for packet in stream.encode(af):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    pieces = []
    with av.open(buf, "r") as inp:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for decoded in inp.decode(audio=0):
            for f in resampler.resample(decoded):
                pieces.append(f.to_ndarray().reshape(-1))
    return Frame(np.concatenate(pieces).astype(np.int16), rate)


def _narrow(frame: Frame) -> np.ndarray:
    return np.asarray(soxr.resample(frame.samples, frame.sample_rate, 8000), np.int16)


def _scaled(frame: Frame, factor: float) -> Frame:
    x = np.clip(np.rint(frame.samples.astype(np.float64) * factor), -32768, 32767)
    return Frame(x.astype(np.int16), frame.sample_rate)


def _speed(frame: Frame, speed: float) -> Frame:
    """Faster or slower with the pitch (a plain resample played at the old rate)."""
    x = soxr.resample(frame.samples, frame.sample_rate, round(frame.sample_rate / speed))
    return Frame(np.asarray(x, np.int16), frame.sample_rate)


def _recording(n: int, rng: np.random.Generator) -> np.ndarray:
    clips = sorted(SPEECH.glob("en_*.wav"))
    clip = read_audio(clips[int(rng.integers(len(clips)))], sample_rate=RATE).samples
    reps = -(-n // len(clip)) + 1
    looped = np.tile(clip, reps)
    start = int(rng.integers(0, len(looped) - n))
    return looped[start : start + n].astype(np.float64)


def attacks(rng: np.random.Generator) -> dict[str, Callable[[Frame], Frame]]:
    def noise(f: Frame) -> Frame:
        x = f.samples.astype(np.float64)
        sigma = np.sqrt(np.mean(x**2) / 10 ** (20 / 10))
        return Frame(
            np.clip(np.rint(x + rng.normal(0, sigma, len(x))), -32768, 32767).astype(np.int16),
            f.sample_rate,
        )

    def excerpt(f: Frame) -> Frame:
        n = 3 * f.sample_rate
        start = int(rng.integers(0, max(1, len(f) - n)))
        return Frame(f.samples[start : start + n], f.sample_rate)

    def mix(f: Frame) -> Frame:
        x = f.samples.astype(np.float64)
        other = _recording(len(x), rng)
        gain = np.sqrt(np.mean(other**2) / np.mean(x**2)) * 10 ** (-6 / 20)
        y = other + gain * x
        return Frame(np.clip(np.rint(y), -32768, 32767).astype(np.int16), f.sample_rate)

    return {
        "none": lambda f: f,
        "8 kHz mu-law": lambda f: Frame(ulaw_decode(ulaw_encode(_narrow(f))), 8000),
        "8 kHz A-law": lambda f: Frame(alaw_decode(alaw_encode(_narrow(f))), 8000),
        "Opus 16 kbps": lambda f: _codec(f, "ogg", "libopus", 16000, 48000),
        "MP3 64 kbps": lambda f: _codec(f, "mp3", "libmp3lame", 64000, 24000),
        "AAC 64 kbps": lambda f: _codec(f, "adts", "aac", 64000, 24000),
        "resample 16 kHz": lambda f: Frame(
            np.asarray(soxr.resample(f.samples, f.sample_rate, 16000), np.int16), 16000
        ),
        "white noise 20 dB SNR": noise,
        "random 3 s excerpt": excerpt,
        "gain +6 dB": lambda f: _scaled(f, 10 ** (6 / 20)),
        "gain -6 dB": lambda f: _scaled(f, 10 ** (-6 / 20)),
        "speed +5%": lambda f: _speed(f, 1.05),
        "speed -5%": lambda f: _speed(f, 0.95),
        "mixed 6 dB under a recording": mix,
    }


async def synthesise(texts: tuple[str, ...]) -> list[list[Frame]]:
    tts = build_tts(load_settings().tts)
    options = SpeechOptions(sample_rate=RATE)
    return [[f async for f in tts.synthesize(t, options)] for t in texts]


def mark(chunks: list[Frame], key: WatermarkKey, payload: int) -> Frame:
    embedder = Embedder(key, payload, RATE)
    out = [embedder.process(c).samples for c in chunks] + [embedder.flush().samples]
    return Frame(np.concatenate(out), RATE)


def false_positives(key: WatermarkKey, unmarked: list[Frame], want: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    sources: list[tuple[str, Frame]] = []
    for path in sorted(SPEECH.glob("*.wav")):
        sources.append(("speech", read_audio(path)))
    sources.append(("tts", Frame(np.concatenate([u.samples for u in unmarked]), RATE)))
    excerpts: list[tuple[str, Frame]] = []
    for kind, f in sources:
        n, hop = 3 * f.sample_rate, f.sample_rate // 4
        for start in range(0, len(f) - n + 1, hop):
            excerpts.append((kind, Frame(f.samples[start : start + n], f.sample_rate)))
    excerpts += [("silence", Frame(np.zeros(3 * RATE, np.int16), RATE))] * 20
    while len(excerpts) < want:
        white = rng.normal(0, rng.uniform(100, 8000), 3 * 16000)
        pink = np.cumsum(rng.normal(0, 300, 3 * 16000))
        pink -= np.convolve(pink, np.ones(64) / 64, mode="same")
        excerpts.append(("noise", Frame(np.clip(white, -32768, 32767).astype(np.int16), 16000)))
        excerpts.append(("noise", Frame(np.clip(pink, -32768, 32767).astype(np.int16), 16000)))
    hits: dict[str, list[int]] = {}
    worst = 1.0
    for kind, f in excerpts:
        d = detect(key, f)
        worst = min(worst, d.p_value)
        counts = hits.setdefault(kind, [0, 0])
        counts[0] += int(d.detected)
        counts[1] += 1
    total = sum(c[1] for c in hits.values())
    found = sum(c[0] for c in hits.values())
    return {
        "excerpts": total,
        "detected": found,
        "rate": found / total,
        "by_kind": hits,
        "lowest_p": worst,
    }


def pesq_wb(ref: Frame, deg: Frame) -> float:
    from pesq import pesq

    r = soxr.resample(ref.samples.astype(np.float32) / 32768, ref.sample_rate, 16000)
    d = soxr.resample(deg.samples.astype(np.float32) / 32768, deg.sample_rate, 16000)
    return float(pesq(16000, r, d, "wb"))


async def wer(frames: list[Frame], texts: tuple[str, ...]) -> float:
    asr = build_asr(load_settings().asr)
    edits = words = 0
    for f, t in zip(frames, texts, strict=True):
        hyp = (await asr.transcribe(f)).text
        ref = _words(t)
        edits += word_edits(ref, _words(hyp))
        words += len(ref)
    return edits / words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=len(SENTENCES))
    parser.add_argument("--fp", type=int, default=3000, help="unmarked 3 s excerpts, at least")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    texts = SENTENCES[: args.sentences]
    key = WatermarkKey.generate()
    rng = np.random.default_rng(2026)
    began = time.perf_counter()
    chunked = asyncio.run(synthesise(texts))
    unmarked = [Frame(np.concatenate([c.samples for c in cs]), RATE) for cs in chunked]
    payloads = [int(p) for p in rng.integers(0, 2**32, len(texts))]
    marked = [mark(cs, key, p) for cs, p in zip(chunked, payloads, strict=True)]
    audio_s = sum(f.duration_s for f in unmarked)
    print(f"{len(texts)} sentences, {audio_s:.0f} s of speech synthesised", file=sys.stderr)

    rows = []
    for name, attack in attacks(rng).items():
        detected = exact = bits_right = bits_read = 0
        spent = 0.0
        for f, p in zip(marked, payloads, strict=True):
            attacked = attack(f)
            t0 = time.perf_counter()
            d = detect(key, attacked)
            spent += time.perf_counter() - t0
            if d.detected:
                detected += 1
                exact += int(d.payload == p)
                bits = decode_bits(key, attacked)
                truth = np.array([(p >> (31 - i)) & 1 for i in range(32)], bool)
                bits_right += int(np.sum(bits == truth)) if bits is not None else 0
                bits_read += 32
        n = len(marked)
        rows.append(
            {
                "attack": name,
                "detected": detected / n,
                "bit_accuracy": bits_right / bits_read if bits_read else None,
                "payload_exact": exact / n,
                "detect_ms": 1000 * spent / n,
            }
        )
        print(rows[-1], file=sys.stderr)
    fp = false_positives(key, unmarked, args.fp)
    print(fp, file=sys.stderr)
    pesqs = [pesq_wb(u, m) for u, m in zip(unmarked, marked, strict=True)]
    wer_clean = asyncio.run(wer(unmarked, texts))
    wer_marked = asyncio.run(wer(marked, texts))
    results = {
        "rows": rows,
        "false_positives": fp,
        "pesq_mean": float(np.mean(pesqs)),
        "pesq_min": float(np.min(pesqs)),
        "wer_unmarked": wer_clean,
        "wer_marked": wer_marked,
        "sentences": len(texts),
        "audio_s": audio_s,
        "wall_s": time.perf_counter() - began,
        "machine": platform.processor(),
    }
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(r: dict[str, Any]) -> str:
    lines = [
        "| attack | detected (>= 0.95) | bit accuracy where detected (>= 0.99) | "
        "payload exact (CRC ok) | detect ms / reply |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        acc = "-" if row["bit_accuracy"] is None else f"{row['bit_accuracy']:.3f}"
        lines.append(
            f"| {row['attack']} | {row['detected']:.2f} | {acc} | "
            f"{row['payload_exact']:.2f} | {row['detect_ms']:.0f} |"
        )
    fp = r["false_positives"]
    lines += [
        "",
        f"False positives: {fp['detected']} of {fp['excerpts']} unmarked 3 s excerpts "
        f"({fp['rate']:.4f}; target <= 0.001); by kind {fp['by_kind']}; lowest p "
        f"{fp['lowest_p']:.2g}.",
        f"PESQ-WB marked vs unmarked: mean {r['pesq_mean']:.2f}, min {r['pesq_min']:.2f} "
        "(target >= 4.0).",
        f"Whisper round-trip WER: unmarked {r['wer_unmarked']:.3f}, marked {r['wer_marked']:.3f}.",
        f"{r['sentences']} sentences, {r['audio_s']:.0f} s of Piper speech; "
        f"{r['wall_s']:.0f} s wall.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
