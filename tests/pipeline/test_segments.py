import itertools

import numpy as np

from parley.audio.files import read_audio
from parley.audio.frames import Frame
from parley.bench.clips import Clip
from parley.engines.silero import SileroVAD
from parley.pipeline.segments import find_speech


async def test_find_speech_in_real_speech_and_none_in_silence(clips: dict[str, Clip]) -> None:
    vad = SileroVAD()
    clip = clips["en_jfk_wav"]
    audio = read_audio(clip.path)
    segments = await find_speech(vad, audio)
    assert segments
    assert all(0 <= s.start_ms < s.end_ms <= clip.duration_s * 1000 + 50 for s in segments)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(segments))
    # JFK pauses between phrases: more than one segment at a 300 ms silence window.
    assert len(await find_speech(vad, audio, silence_duration_ms=300)) >= 2
    assert await find_speech(vad, Frame(np.zeros(32000, np.int16), 16000)) == []
    noise = (np.random.default_rng(0).normal(0, 200, 32000)).astype(np.int16)
    assert await find_speech(vad, Frame(noise, 16000)) == []


async def test_find_speech_other_rates(clips: dict[str, Clip]) -> None:
    from parley.audio.resample import resample

    audio = resample(read_audio(clips["en_goforward_raw"].path), 8000)
    segments = await find_speech(SileroVAD(), audio)
    assert len(segments) == 1
    assert 200 < segments[0].start_ms < 900
