"""The shared speech stages: clauses -> audio with clause marks, recording -> utterances -> text,
on the engine doubles; the recording side against the whole-recording cut it replaces."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from parley.audio.containers import open_upload
from parley.audio.files import encode_audio
from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.engines.base import SpeechOptions, Transcript, Word
from parley.pipeline.segments import find_speech
from parley.pipeline.speech import (
    Recognised,
    RecordingEnd,
    Spoken,
    clauses_of,
    speak,
    speak_text,
    transcribe_recording,
)
from tests.fakes.engines import FakeEnergyVAD, FakeScriptedASR, FakeToneTTS, silence, tone

# --- Out: clauses -> audio -------------------------------------------------------------------


@dataclass
class RecordingTTS(FakeToneTTS):
    """:class:`FakeToneTTS` that remembers the options of each call and says nothing for
    clauses in ``mute``."""

    options: list[SpeechOptions] = field(default_factory=list)
    mute: frozenset[str] = frozenset()

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        self.options.append(options)
        if text in self.mute:
            yield Frame(np.zeros(0, np.int16), options.sample_rate)
            return
        async for frame in super().synthesize(text, options):
            yield frame


async def each(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_speak_marks_where_each_clause_ends() -> None:
    tts = RecordingTTS()
    options = SpeechOptions(voice="v", sample_rate=24000, stream="resp_1")
    out = [x async for x in speak(tts, each("One two.", "Three."), options)]
    frames = [x for x in out if isinstance(x, Frame)]
    marks = [x for x in out if isinstance(x, Spoken)]
    per_word = 5 * 480  # five 20 ms frames at 24 kHz
    assert marks == [
        Spoken("One two.", 0, 2 * per_word),
        Spoken("Three.", 2 * per_word, 3 * per_word),
    ]
    assert out.index(marks[0]) == 10 and out[-1] == marks[1]  # after its clause's frames
    assert sum(len(f) for f in frames) == marks[-1].end
    assert [o.continuation for o in tts.options] == [False, True]
    assert {(o.voice, o.stream, o.sample_rate) for o in tts.options} == {("v", "resp_1", 24000)}


async def test_speak_skips_empty_frames_and_a_silent_clause_is_no_start() -> None:
    tts = RecordingTTS(mute=frozenset({"Hm."}))
    out = [x async for x in speak(tts, each("Hm.", "Yes."), SpeechOptions())]
    assert all(len(x) for x in out if isinstance(x, Frame))
    assert [x for x in out if isinstance(x, Spoken)] == [
        Spoken("Hm.", 0, 0),
        Spoken("Yes.", 0, 2400),
    ]
    # Nothing was heard before "Yes.": it is still the stream's first audio.
    assert [o.continuation for o in tts.options] == [False, False]


async def test_closing_speak_closes_the_engine_stream() -> None:
    tts = FakeToneTTS()
    async with contextlib.aclosing(
        speak(tts, each("one two three four", "five"), SpeechOptions())
    ) as out:
        assert isinstance(await anext(out), Frame)
    assert tts.closed_early == 1
    assert tts.texts == ["one two three four"]


def test_clauses_of_cuts_a_whole_text() -> None:
    text = "Hello there, my friend. This is the second sentence! And a tail without an end"
    clauses = clauses_of(text)
    assert clauses == [
        "Hello there,",
        "my friend.",
        "This is the second sentence!",
        "And a tail without an end",
    ]
    assert clauses_of("") == [] and clauses_of("   ") == []


async def test_speak_text_speaks_every_clause() -> None:
    tts = FakeToneTTS()
    out = [x async for x in speak_text(tts, "One, two three. Four.", SpeechOptions())]
    assert [x.clause for x in out if isinstance(x, Spoken)] == tts.texts
    assert " ".join(tts.texts) == "One, two three. Four."


# --- In: recording -> text -------------------------------------------------------------------


@dataclass
class HeardASR(FakeScriptedASR):
    """Remembers the audio of each ``transcribe``; says ``text`` with one word per 100 ms."""

    heard: list[Frame] = field(default_factory=list)

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        self.heard.append(audio)
        words = tuple(Word(f"w{i}", i * 0.1, i * 0.1 + 0.05) for i in range(2))
        return Transcript(self.text, is_final=True, words=words)


def blocks_of(frame: Frame, size: int) -> Iterator[Frame]:
    for i in range(0, len(frame), size):
        yield Frame(frame.samples[i : i + size], frame.sample_rate)


def joined(*parts: Frame) -> Frame:
    return Frame(np.concatenate([p.samples for p in parts]), parts[0].sample_rate)


async def collect(
    recording: Iterator[Frame], asr: FakeScriptedASR | None = None, **kw: int
) -> tuple[list[Recognised], float]:
    out = [
        x async for x in transcribe_recording(recording, FakeEnergyVAD(), asr or HeardASR(), **kw)
    ]
    end = out.pop()
    assert isinstance(end, RecordingEnd)
    assert all(isinstance(x, Recognised) for x in out)
    return out, end.duration_s  # type: ignore[return-value]


async def test_transcribe_recording_recognises_each_utterance_with_its_times() -> None:
    recording = joined(silence(1000), tone(800), silence(2000), tone(600), silence(400))
    asr = HeardASR()
    pieces, duration = await collect(blocks_of(recording, 4000), asr)
    assert duration == pytest.approx(4.8)
    assert [p.text for p in pieces] == ["hello parley", "hello parley"]
    first, second = pieces
    assert first.start_s == pytest.approx(1.0 - 0.3, abs=0.04)  # 300 ms of prefix padding
    assert first.end_s == pytest.approx(1.8 + 0.2, abs=0.04)  # 200 ms of tail
    assert second.start_s == pytest.approx(3.8 - 0.3, abs=0.04)
    assert second.end_s == pytest.approx(4.4 + 0.2, abs=0.04)  # the end stops the speech
    assert [w.start_s for w in second.words] == [second.start_s, round(second.start_s + 0.1, 3)]
    assert [round(f.duration_s, 2) for f in asr.heard] == [
        round(first.end_s - first.start_s, 2),
        round(second.end_s - second.start_s, 2),
    ]


async def test_transcribe_recording_of_silence_is_nothing() -> None:
    pieces, duration = await collect(blocks_of(silence(3000), 1000))
    assert pieces == [] and duration == pytest.approx(3.0)


async def test_transcribe_recording_leaves_out_empty_texts() -> None:
    recording = joined(silence(500), tone(500), silence(600))
    pieces, _ = await collect(blocks_of(recording, 2048), HeardASR(text="  "))
    assert pieces == []


async def test_transcribe_recording_at_other_rates() -> None:
    recording = resample(joined(silence(1000), tone(800), silence(1000)), 48000)
    asr = HeardASR(sample_rate=24000)
    pieces, duration = await collect(blocks_of(recording, 48000), asr)
    assert duration == pytest.approx(2.8)
    assert len(pieces) == 1 and pieces[0].start_s == pytest.approx(0.7, abs=0.05)
    assert asr.heard[0].sample_rate == 24000


def whole_recording_cuts(
    segments: list[tuple[float, float]], length: int, rate: int, prefix_ms: int, tail_ms: int
) -> list[tuple[int, int]]:
    """What the REST endpoint used to cut from the VAD's segments of the whole recording."""
    spans: list[list[int]] = []
    for start_ms, end_ms in segments:
        start = max(0, int((start_ms - prefix_ms) * rate / 1000))
        end = min(length, math.ceil((end_ms + tail_ms) * rate / 1000))
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        elif end > start:
            spans.append([start, end])
    return [(a, b) for a, b in spans]


@pytest.mark.parametrize("seed", range(8))
async def test_transcribe_recording_cuts_as_the_whole_recording_would(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [silence(float(rng.integers(0, 1500)))]
    for _ in range(int(rng.integers(1, 6))):
        parts += [tone(float(rng.integers(100, 1500))), silence(float(rng.integers(50, 1500)))]
    recording = joined(*parts)
    silence_ms, prefix_ms, tail_ms = (int(rng.choice(v)) for v in ([200, 500], [0, 300], [0, 200]))
    segments = await find_speech(FakeEnergyVAD(), recording, silence_duration_ms=silence_ms)
    expected = whole_recording_cuts(
        [(s.start_ms, s.end_ms) for s in segments], len(recording), 16000, prefix_ms, tail_ms
    )
    asr = HeardASR()
    block = int(rng.integers(300, 20000))
    pieces, _ = await collect(
        blocks_of(recording, block),
        asr,
        silence_duration_ms=silence_ms,
        prefix_padding_ms=prefix_ms,
        tail_padding_ms=tail_ms,
    )
    got = [
        (round(p.start_s * 16000), round(p.start_s * 16000) + len(f))
        for p, f in zip(pieces, asr.heard, strict=True)
    ]
    assert len(got) == len(expected)
    for (a, b), (c, d) in zip(got, expected, strict=True):
        assert abs(a - c) <= 16 and abs(b - d) <= 16  # a millisecond of rounding
    for (_, b), heard in zip(got, asr.heard, strict=True):
        start = b - len(heard)
        assert np.array_equal(heard.samples, recording.samples[start:b])


async def test_transcribe_recording_of_a_long_upload_in_bounded_memory() -> None:
    seconds = 15 * 60
    flac = encode_audio(silence(seconds * 1000), "flac")
    int16_whole = seconds * 16000 * 2  # 29 MB; the whole recording at float64: 115 MB
    tracemalloc.start()
    try:
        with contextlib.closing(open_upload(flac, name="long.flac")) as upload:
            pieces, duration = await collect(upload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pieces == [] and duration == pytest.approx(seconds)
    assert peak < int16_whole / 10, f"peak {peak / 2**20:.1f} MiB"


async def test_transcribe_recording_keeps_only_an_utterance_in_memory() -> None:
    # Five minutes of talk in 20 s utterances: what is held is one utterance, not five minutes.
    said = joined(tone(20_000), silence(1000))

    def talk() -> Iterator[Frame]:
        for _ in range(15):
            yield from blocks_of(said, 16000)

    tracemalloc.start()
    try:
        pieces, _ = await collect(talk(), FakeScriptedASR())  # which keeps no audio
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pieces) == 15
    utterance = 21 * 16000 * 2  # bytes of one utterance at int16
    assert peak < 6 * utterance, f"peak {peak / 2**20:.1f} MiB"


class SlowBlocks:
    """A blocking source whose every block takes ``delay_s``; notes when a read is running."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.reading = threading.Event()
        self.started = threading.Event()

    def __iter__(self) -> SlowBlocks:
        return self

    def __next__(self) -> Frame:
        self.reading.set()
        self.started.set()
        time.sleep(self.delay_s)
        self.reading.clear()
        return silence(100)


async def test_cancelling_waits_for_the_block_being_read() -> None:
    source = SlowBlocks(0.3)

    async def consume() -> None:
        async for _ in transcribe_recording(source, FakeEnergyVAD(), FakeScriptedASR()):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(source.started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The read in flight finished before the cancellation went on: the source may be closed.
    assert not source.reading.is_set()
