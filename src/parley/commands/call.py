"""``parley call``: a recording streamed through the conversation pipeline as a client would
stream it, the replies written to a file and printed turn by turn with each stage's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from parley.audio.files import read_audio, write_audio
from parley.audio.frames import Frame
from parley.commands.options import EXIT_ERROR, settings_from
from parley.engines.registry import build_engines, warm_up
from parley.errors import SilentAudioError
from parley.pipeline import (
    Pipeline,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    SpeechStarted,
    StageError,
    TranscriptFinal,
)

__all__ = ["run_call"]

# Frames the CLI feeds, as a client would stream them.
PACKET_MS = 20


@dataclass
class _Turn:
    transcript: str = ""
    reply: str = ""
    heard_text: str | None = None
    status: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    audio_ms: float = 0.0
    heard_ms: float | None = None
    timeline: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


async def run_call(args: argparse.Namespace, console: Console) -> int:
    settings = settings_from(args)
    recording = read_audio(args.input)
    engines = build_engines(settings)
    await warm_up(engines)
    pipeline = Pipeline(engines, settings, input_rate=recording.sample_rate)
    turns: dict[str, _Turn] = {}  # by response id
    transcripts: list[str] = []
    errors: list[str] = []
    heard_speech = False

    async def collect() -> None:
        nonlocal heard_speech
        async for event in pipeline.events():
            match event:
                case SpeechStarted():
                    heard_speech = True
                case TranscriptFinal(text=text):
                    transcripts.append(text)
                case ResponseAudio(response_id=rid, frame=frame):
                    turns.setdefault(rid, _Turn()).audio.append(frame.samples)
                case ResponseDone() as done:
                    turn = turns.setdefault(done.response_id, _Turn())
                    turn.transcript = transcripts[-1] if transcripts else ""
                    turn.reply, turn.status, turn.audio_ms = (
                        done.text.strip(),
                        done.status,
                        done.audio_ms,
                    )
                    turn.timeline = done.timeline.to_dict()
                    if done.error is not None:
                        turn.error = done.error.message
                case PlaybackInterrupted(response_id=rid) as cut:
                    turn = turns.setdefault(rid, _Turn())
                    turn.heard_ms, turn.heard_text = cut.heard_ms, cut.heard_text
                case StageError(stage=stage, error=error):
                    errors.append(f"{stage}: {error.message}")
                case _:
                    pass

    n = recording.sample_rate * PACKET_MS // 1000
    async with asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        async with pipeline:
            start = time.perf_counter()
            for i in range(0, len(recording), n):
                await pipeline.push(Frame(recording.samples[i : i + n], recording.sample_rate))
                if args.realtime:
                    due = start + (i + n) / recording.sample_rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                else:
                    await pipeline.settle()
            # Trailing silence lets the turn end as it would on a live line.
            tail = settings.turn_detection.silence_duration_ms + 2 * PACKET_MS
            for _ in range(tail // PACKET_MS):
                await pipeline.push(Frame.silence(PACKET_MS, recording.sample_rate))
                if args.realtime:
                    await asyncio.sleep(PACKET_MS / 1000)
                else:
                    await pipeline.settle()
            await pipeline.end_of_input()

    if not heard_speech:
        raise SilentAudioError(f"no speech found in {args.input}")
    replies = list(turns.values())
    audio = _reply_audio(replies, pipeline.output_rate)
    if args.output is not None and len(audio):
        write_audio(args.output, Frame(audio, pipeline.output_rate))
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "input": str(args.input),
                    "output": str(args.output) if args.output is not None and len(audio) else None,
                    "turns": [_turn_json(t) for t in replies],
                    "unanswered_transcripts": transcripts[len(replies) :],
                    "errors": errors,
                }
            )
        )
    else:
        _print_call(
            console,
            replies,
            errors,
            args.output if len(audio) else None,
            len(audio) / pipeline.output_rate,
        )
    return 0 if replies and not errors else EXIT_ERROR


def _reply_audio(replies: list[_Turn], rate: int) -> np.ndarray:
    """Each reply as it was heard (cut where the caller interrupted), 300 ms apart."""
    parts: list[np.ndarray] = []
    for turn in replies:
        if not turn.audio:
            continue
        samples = np.concatenate(turn.audio)
        if turn.heard_ms is not None:
            samples = samples[: int(turn.heard_ms * rate / 1000)]
        parts += [samples, np.zeros(rate * 3 // 10, np.int16)]
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.int16)


def _turn_json(turn: _Turn) -> dict[str, Any]:
    return {
        "transcript": turn.transcript,
        "reply": turn.reply,
        "status": turn.status,
        "interrupted": turn.heard_ms is not None,
        "heard_text": turn.heard_text if turn.heard_ms is not None else turn.reply,
        "audio_ms": round(turn.audio_ms, 1),
        "heard_ms": round(turn.heard_ms if turn.heard_ms is not None else turn.audio_ms, 1),
        "timeline": turn.timeline,
        "error": turn.error,
    }


def _print_call(
    console: Console, replies: list[_Turn], errors: list[str], output: Path | None, seconds: float
) -> None:
    for i, turn in enumerate(replies, 1):
        console.print(f"[bold]turn {i}[/bold]")
        console.print(f"  [cyan]you[/cyan]     {turn.transcript or '(nothing recognised)'}")
        console.print(f"  [green]parley[/green]  {turn.reply or '(no reply)'}")
        if turn.heard_ms is not None:
            console.print(
                f"  [yellow]interrupted after {turn.heard_ms:.0f} ms of "
                f"{turn.audio_ms:.0f} ms; heard:[/yellow] {turn.heard_text}"
            )
        if turn.error:
            console.print(f"  [red]error[/red]   {turn.error}")
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        table.add_column("stage")
        table.add_column("ms", justify="right")
        stages: dict[str, float] = turn.timeline.get("stages_ms", {})
        for name, value in stages.items():
            table.add_row(name, f"{value:.1f}")
        latency = turn.timeline.get("response_latency_ms")
        if latency is not None:
            table.add_row("[bold]end of turn -> first audio[/bold]", f"[bold]{latency:.1f}[/bold]")
        console.print(table)
    for error in errors:
        console.print(f"[red]error[/red] {error}")
    if output is not None:
        console.print(f"reply audio: {output} ({seconds:.1f} s)")
