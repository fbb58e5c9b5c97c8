"""The reply track alone: 20 ms Opus-clock frames of the queued reply, playout events, and the
playout position that barge-in truncates at."""

from __future__ import annotations

from typing import Any

import numpy as np

from parley.audio.frames import Frame
from parley.transports.webrtc import RATE, SAMPLES, ReplyTrack


def _tone(ms: int, rate: int = 24000) -> Frame:
    t = np.arange(rate * ms // 1000) / rate
    return Frame((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), rate)


def _track() -> tuple[ReplyTrack, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return ReplyTrack(events.append), events


async def test_a_reply_plays_in_20_ms_frames_then_stops() -> None:
    track, events = _track()
    assert track.played_ms("resp_1") is None
    track.play("resp_1", _tone(100))
    track.finish("resp_1")
    frames = [await track.recv() for _ in range(7)]
    assert all(f.sample_rate == RATE and f.samples == SAMPLES for f in frames)
    assert [f.pts for f in frames] == [i * SAMPLES for i in range(7)]
    levels = [np.abs(f.to_ndarray()).max() for f in frames]
    assert all(level > 1000 for level in levels[:4]) and levels[-1] == 0  # then silence
    assert track.played_ms("resp_1") == 100.0
    assert [e["type"] for e in events] == [
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
    ]
    assert {e["response_id"] for e in events} == {"resp_1"}


async def test_a_cleared_reply_stops_where_it_was_sent() -> None:
    track, events = _track()
    track.play("resp_1", _tone(1000))
    for _ in range(3):
        await track.recv()
    track.clear("resp_1")
    assert track.played_ms("resp_1") == 60.0  # three packets went out, no more
    after = await track.recv()
    assert not after.to_ndarray().any()
    assert [e["type"] for e in events] == [
        "output_audio_buffer.started",
        "output_audio_buffer.cleared",
    ]
    track.clear("resp_other")  # nothing of it was queued: no event
    assert len(events) == 2


async def test_the_next_reply_follows_the_last() -> None:
    track, events = _track()
    track.play("resp_1", _tone(20))
    track.finish("resp_1")
    track.play("resp_2", _tone(40))
    for _ in range(4):
        await track.recv()
    track.finish("resp_2")
    await track.recv()
    assert [(e["type"], e["response_id"]) for e in events] == [
        ("output_audio_buffer.started", "resp_1"),
        ("output_audio_buffer.stopped", "resp_1"),
        ("output_audio_buffer.started", "resp_2"),
        ("output_audio_buffer.stopped", "resp_2"),
    ]
