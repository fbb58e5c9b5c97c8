"""``parley say``, ``parley transcribe`` and ``parley voices``: one speech engine at a time (text
to an audio file, a recording to its words, the voices on offer), with no pipeline around it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from rich.console import Console

from parley.audio.files import read_audio, write_audio
from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.bench.report import print_table
from parley.commands.options import settings_from
from parley.config import Settings
from parley.engines.base import SpeechOptions
from parley.engines.registry import build_asr, build_tts, build_vad
from parley.errors import ClientError, InputTooLargeError, SilentAudioError
from parley.pipeline.segments import find_speech

__all__ = ["run_say", "run_transcribe", "run_voices"]


async def run_say(args: argparse.Namespace, console: Console) -> int:
    settings = settings_from(args)
    text = args.text.strip()
    if not text:
        raise ClientError("nothing to say: the text is empty")
    limit = settings.pipeline.max_speech_chars
    if len(text) > limit:
        raise InputTooLargeError(f"text is {len(text)} characters; the limit is {limit}")
    tts = build_tts(settings.tts)
    options = SpeechOptions(
        voice=args.voice or settings.tts.voice,
        speed=args.speed or settings.tts.speed,
        sample_rate=args.rate,
    )
    chunks = [frame.samples async for frame in tts.synthesize(text, options)]
    if not chunks:
        raise ClientError("the voice produced no audio for this text")
    frame = Frame(np.concatenate(chunks), args.rate)
    mark = ""
    if settings.trust.watermark:  # as the server does: a payload id of its own, resolvable
        frame, mark = _watermarked(settings, frame)
    write_audio(args.output, frame)
    console.print(f"wrote {args.output} ({frame.duration_s:.2f} s at {args.rate} Hz{mark})")
    return 0


def _watermarked(settings: Settings, frame: Frame) -> tuple[Frame, str]:
    from parley.ids import new_id
    from parley.store import Database
    from parley.trust.marks import MarkRegistry
    from parley.trust.watermark import WatermarkKey, embed

    trust = settings.trust
    key = (
        WatermarkKey.from_hex(trust.watermark_key)
        if trust.watermark_key
        else WatermarkKey.load_or_create(trust.watermark_key_file)
    )
    with Database(settings.server.database) as database:
        mark = MarkRegistry(database).issue("", new_id("say"))
    return embed(key, mark, frame), f", watermark {mark}"


async def run_transcribe(args: argparse.Namespace, console: Console) -> int:
    settings = settings_from(args)
    recording = read_audio(args.input)
    speech = await find_speech(
        build_vad(settings.vad), recording, threshold=settings.turn_detection.threshold
    )
    if not speech:
        raise SilentAudioError(f"no speech found in {args.input}")
    asr = build_asr(settings.asr)
    transcript = await asr.transcribe(
        resample(recording, asr.sample_rate), language=settings.asr.language
    )
    if not transcript.text.strip():
        raise SilentAudioError(f"no speech recognised in {args.input}")
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "text": transcript.text,
                    "language": transcript.language or settings.asr.language,
                    "duration_s": round(recording.duration_s, 3),
                    "words": [
                        {"word": w.text, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
                        for w in transcript.words
                    ],
                }
            )
        )
    else:
        console.print(transcript.text, markup=False)
    return 0


async def run_voices(args: argparse.Namespace, console: Console) -> int:
    tts = build_tts(settings_from(args).tts)
    rows = [[voice.id, voice.name, voice.language] for voice in tts.voices()]
    print_table(console, ["id", "name", "language"], rows, wrap={1})
    return 0
