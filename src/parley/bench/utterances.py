"""The speech a simulated caller says: shared clips as 24 kHz pcm16 in 20 ms
``input_audio_buffer.append`` events, trimmed so that a turn starts at the first loud frame and its
speech ends at the VAD's last voiced sample.

The one engine the load test uses, the VAD, only marks offline where each clip's speech ends, so
that the turn gap starts at the last voiced sample by the same definition the server's timeline
uses rather than at a recording's trailing room tone. Nothing here opens a socket.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parley.audio.files import read_audio
from parley.audio.resample import resample
from parley.bench.clips import load_clips
from parley.errors import ConfigError

__all__ = [
    "PACKET",
    "PACKET_MS",
    "RATE",
    "SILENCE",
    "Utterance",
    "load_utterances",
    "prepare_utterance",
]

RATE = 24000
PACKET_MS = 20
PACKET = RATE * PACKET_MS // 1000
# Trailing and leading frames this far below the clip's loudest 20 ms frame count as silence: the
# turn gap starts at the last speech sample, not at the end of a recording's room tone.
TRIM_DB = 35.0
# A clip whose speech has pauses longer than this many ms would be several turns, not one.
CLIP_MAX_PAUSE_MS = 500


@dataclass(frozen=True, slots=True)
class Utterance:
    """A clip ready to stream: 24 kHz pcm16 in 20 ms ``input_audio_buffer.append`` events."""

    id: str
    packets: tuple[str, ...]
    speech_ms: float  # where the speech ends, from the first packet's start
    end_packet: int  # the packet holding the last voiced sample
    end_offset_ms: float  # how long before the end of that packet the speech ends


def _loud_span(samples: np.ndarray) -> tuple[int, int]:
    """First and end sample of the 20 ms frames within ``TRIM_DB`` of the loudest one."""
    frames = len(samples) // PACKET
    if frames == 0:
        return 0, len(samples)
    power = (samples[: frames * PACKET].astype(np.float64).reshape(frames, PACKET) ** 2).mean(1)
    db = 10 * np.log10(power + 1e-9)
    voiced = np.flatnonzero(db > db.max() - TRIM_DB)
    return int(voiced[0]) * PACKET, (int(voiced[-1]) + 1) * PACKET


def _append_event(pcm: np.ndarray) -> str:
    audio = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


SILENCE = _append_event(np.zeros(PACKET, np.int16))


def prepare_utterance(clip_id: str, samples: np.ndarray, speech_end_ms: float) -> Utterance:
    """24 kHz samples cut into 20 ms append events: from the first loud frame to the later of
    the last loud frame and ``speech_end_ms`` (the VAD's last voiced sample, in ``samples``)."""
    first, last = _loud_span(samples)
    speech_end = min(len(samples), max(first + 1, round(speech_end_ms * RATE / 1000)))
    audio = samples[first : max(last, speech_end)]
    audio = np.concatenate([audio, np.zeros(-len(audio) % PACKET, np.int16)])
    packets = tuple(_append_event(audio[i : i + PACKET]) for i in range(0, len(audio), PACKET))
    end = speech_end - first  # samples of speech from the start of the first packet
    end_packet = (end - 1) // PACKET
    return Utterance(
        clip_id,
        packets,
        speech_ms=end * 1000 / RATE,
        end_packet=end_packet,
        end_offset_ms=((end_packet + 1) * PACKET - end) * 1000 / RATE,
    )


async def load_utterances(
    folder: Path | None, max_clip_s: float, silence_ms: int = CLIP_MAX_PAUSE_MS
) -> tuple[list[Utterance], list[str]]:
    """The English clips of at most ``max_clip_s`` that are one turn each (no pause the server
    would end a turn at); also the ids of those skipped for pausing."""
    from parley.config import VADSettings
    from parley.engines.registry import build_vad
    from parley.pipeline.segments import find_speech

    clips = [c for c in load_clips(folder, language="en") if c.duration_s <= max_clip_s]
    vad = build_vad(VADSettings())
    utterances: list[Utterance] = []
    skipped: list[str] = []
    for clip in clips:
        frame = resample(read_audio(clip.path), RATE)
        segments = await find_speech(vad, frame, silence_duration_ms=silence_ms)
        if len(segments) != 1:
            skipped.append(clip.id)
            continue
        utterances.append(prepare_utterance(clip.id, frame.samples, segments[0].end_ms))
    if not utterances:
        raise ConfigError(
            f"no English clip of at most {max_clip_s:g} s with one stretch of speech in "
            f"{folder or 'the shared clips'}"
        )
    return utterances, skipped
