"""PocketSphinx worker processes on real speech: a killed worker fails only the recognition in
flight, is reaped and replaced, and health says so meanwhile; memory stays bounded however fast
the audio comes and however long an utterance is. Also the engines' optional health hook."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parley.audio.frames import Frame
from parley.engines.base import EngineHealth, Transcript, engine_health
from parley.engines.instrumented import instrument
from parley.engines.pocketsphinx import PocketsphinxASR
from parley.engines.pocketsphinx_decoder import BLOCK_BYTES, Segmenter
from parley.engines.registry import Engines
from parley.errors import EngineError
from tests.fakes.engines import (
    FakeEnergyVAD,
    FakeScriptedASR,
    FakeScriptedLLM,
    FakeToneTTS,
    fake_engines,
)

SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"
GO_FORWARD = "go forward ten meters"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").is_file(), reason="watches processes through /proc"
)


def _clip(name: str) -> Frame:
    samples, rate = sf.read(SPEECH / f"{name}.wav", dtype="int16")
    return Frame(samples, rate)


def _speech(seconds: float) -> Frame:
    """The English clips of the shared folder, one after another, looped to ``seconds``."""
    manifest = [json.loads(line) for line in (SPEECH / "manifest.jsonl").read_text().splitlines()]
    clips = [_clip(m["id"]).samples for m in manifest if m["language"] == "en"]
    one = np.concatenate(clips)
    n = round(seconds * 16000)
    return Frame(np.tile(one, -(-n // len(one)))[:n], 16000)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def _frames(clip: Frame, ms: int = 100) -> AsyncIterator[Frame]:
    """``clip`` in ``ms`` frames, as fast as they can be taken."""
    size = clip.sample_rate * ms // 1000
    for i in range(0, len(clip), size):
        yield Frame(clip.samples[i : i + size], clip.sample_rate)


async def _final(transcripts: AsyncGenerator[Transcript, None]) -> Transcript:
    results = [t async for t in transcripts]
    assert results[-1].is_final
    return results[-1]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, value in (line.split(":", 1) for line in lines)}


def _mib(pid: int, field: str = "VmRSS") -> float:
    return int(_status(pid)[field].split()[0]) / 1024


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is dead: a zombie whose threads have all gone (until
    then its files, its end of the pipe among them, are still open), or already reaped."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        try:
            status = _status(pid)
        except (FileNotFoundError, ProcessLookupError):
            return  # the engine noticed and reaped it already (ESRCH: while we read its status)
        if status["State"].startswith("Z") and status["Threads"] == "1":
            return
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if fields[0] == "Z" and fields[1] == me:
                zombies.append(int(entry.name))
    return zombies


async def _until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait until ``check()`` is true."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still false after {seconds} s")


# --- the health hook ----------------------------------------------------------------------------


@dataclass
class _SickASR(FakeScriptedASR):
    def health(self) -> EngineHealth:
        return EngineHealth("degraded", "1 of 2 recogniser workers restarting")


class _BrokenHealthASR(FakeScriptedASR):
    def health(self) -> EngineHealth:
        raise RuntimeError("no idea")


def test_engine_health_defaults_to_ok_and_reads_the_hook() -> None:
    assert engine_health(FakeScriptedASR()) == EngineHealth("ok")
    assert engine_health(_SickASR()).status == "degraded"
    broken = engine_health(_BrokenHealthASR())
    assert broken.status == "degraded"
    assert "RuntimeError: no idea" in broken.detail


def test_instrumented_engines_pass_health_through() -> None:
    engines = Engines(vad=FakeEnergyVAD(), asr=_SickASR(), llm=FakeScriptedLLM(), tts=FakeToneTTS())
    wrapped = instrument(engines, lambda kind, name: None, lambda kind, name: None)
    assert engine_health(wrapped.asr) == _SickASR().health()
    plain, *_ = fake_engines()
    wrapped = instrument(plain, lambda kind, name: None, lambda kind, name: None)
    for engine in (wrapped.vad, wrapped.asr, wrapped.llm, wrapped.tts):
        assert engine_health(engine) == EngineHealth("ok")


def test_pocketsphinx_in_process_is_always_ok() -> None:
    assert PocketsphinxASR(processes=0).health() == EngineHealth("ok")


# --- a worker dies ------------------------------------------------------------------------------


async def test_pocketsphinx_worker_killed_mid_transcription_fails_that_call_and_recovers() -> None:
    asr = PocketsphinxASR(processes=2)
    clip = _clip("en_sr_one_two_three")
    await asyncio.gather(asr.transcribe(clip), asr.transcribe(clip))  # both workers ready
    assert asr.health() == EngineHealth("ok")
    victim = asr.worker_pids()[0]  # the least busy worker: the first of two idle ones
    ticks = _cpu_ticks(victim)
    call = asyncio.create_task(asr.transcribe(_speech(40)))
    await _until(lambda: _cpu_ticks(victim) > ticks + 10)  # decoding it (0.1 s of CPU so far)
    assert not call.done()
    _kill(victim)

    with pytest.raises(EngineError, match="ended") as caught:
        await call
    assert isinstance(caught.value.__cause__, EOFError | OSError)  # the broken pipe
    assert asr.health() == EngineHealth("degraded", "1 of 2 recogniser workers restarting")
    assert _reaped(victim)
    assert not _zombie_children()
    assert victim not in asr.worker_pids()

    result = await asr.transcribe(_clip("en_goforward_raw"))
    assert result.text == GO_FORWARD
    await _until(lambda: asr.health() == EngineHealth("ok"))


async def test_pocketsphinx_worker_killed_mid_stream_fails_that_stream_only() -> None:
    asr = PocketsphinxASR(processes=1)
    stream = asr.stream(_frames(_speech(20)))
    first = await anext(stream)  # a partial: the utterance lives on the worker
    assert not first.is_final
    [victim] = asr.worker_pids()
    _kill(victim)

    with pytest.raises(EngineError) as caught:
        async for _ in stream:
            pass
    assert isinstance(caught.value.__cause__, EOFError | OSError)
    assert asr.health() == EngineHealth("degraded", "1 of 1 recogniser workers restarting")
    assert _reaped(victim)
    assert not _zombie_children()

    final = await _final(asr.stream(_frames(_clip("en_goforward_raw"))))
    assert final.text == GO_FORWARD
    await _until(lambda: asr.health() == EngineHealth("ok"))


async def test_pocketsphinx_worker_killed_between_requests_costs_no_request() -> None:
    asr = PocketsphinxASR(processes=1)
    await asr.transcribe(_clip("en_sr_one_two_three"))
    [victim] = asr.worker_pids()
    _kill(victim)
    result = await asr.transcribe(_clip("en_goforward_raw"))
    assert result.text == GO_FORWARD
    assert asr.worker_pids() != [victim]
    assert _reaped(victim)
    assert asr.health() == EngineHealth("ok")


async def test_pocketsphinx_health_reaps_and_replaces_an_idle_dead_worker() -> None:
    asr = PocketsphinxASR(processes=1)
    await asr.transcribe(_clip("en_sr_one_two_three"))
    [victim] = asr.worker_pids()
    _kill(victim)
    # No request comes: the health check finds the dead worker, reaps it, starts another.
    assert asr.health() == EngineHealth("degraded", "1 of 1 recogniser workers restarting")
    assert _reaped(victim)
    assert not _zombie_children()
    await _until(lambda: asr.health() == EngineHealth("ok"))  # the replacement is ready
    assert (await asr.transcribe(_clip("en_goforward_raw"))).text == GO_FORWARD


# --- bounded memory -----------------------------------------------------------------------------


async def test_pocketsphinx_burst_of_fast_streams_keeps_worker_memory_bounded() -> None:
    """A client far faster than real time: a dozen turns recognised at once. Each stream in
    flight holds a decoder (~90 MB); unbounded, the worker grew by ~1.1 GB here and kept it."""
    asr = PocketsphinxASR(processes=1)  # defaults: 4 streams at once, 2 idle decoders kept
    await asr.transcribe(_clip("en_sr_one_two_three"))
    [pid] = asr.worker_pids()
    before = _mib(pid)
    clip = _clip("en_goforward_raw")
    finals = await asyncio.gather(*(_final(asr.stream(_frames(clip))) for _ in range(12)))
    assert all(f.text == GO_FORWARD for f in finals)
    assert _mib(pid, "VmHWM") - before < 4 * 100  # 4 decoders at most, never 12
    # Decoders past the 2 kept are freed, and the heap given back (after the last reply).
    await _until(lambda: _mib(pid) - before < 150, 5)


async def test_pocketsphinx_long_fast_stream_keeps_worker_memory_bounded() -> None:
    """One long utterance as fast as it can be sent, in 10 s segments: the decoder's search
    state would otherwise grow with the utterance (a 600 s one grew a worker by 138 MB)."""
    asr = PocketsphinxASR(processes=1, segment_s=10)
    await asr.transcribe(_clip("en_sr_one_two_three"))
    [pid] = asr.worker_pids()
    before = _mib(pid)
    audio = _speech(90)
    final = await _final(asr.stream(_frames(audio)))
    assert _mib(pid, "VmHWM") - before < 150
    assert len(final.words) > 100
    starts = [w.start_s for w in final.words]
    assert starts == sorted(starts)
    assert 80 < final.words[-1].end_s <= audio.duration_s  # every segment's words, in place
    assert final.text == " ".join(w.text for w in final.words)


async def test_pocketsphinx_worker_over_its_memory_limit_is_replaced_when_idle() -> None:
    asr = PocketsphinxASR(processes=1, max_rss_mb=64)  # below any loaded worker
    await asr.transcribe(_clip("en_sr_one_two_three"))  # the first worker is replaced after it
    [second] = asr.worker_pids()
    assert (await asr.transcribe(_clip("en_goforward_raw"))).text == GO_FORWARD
    await _until(lambda: asr.worker_pids() != [second] and _reaped(second))
    assert asr.health() == EngineHealth("ok")  # a planned replacement is no fault
    assert not _zombie_children()


async def test_pocketsphinx_streams_beyond_capacity_wait_their_turn() -> None:
    asr = PocketsphinxASR(processes=0, streams_per_process=1)
    clip = _clip("en_goforward_raw")
    first = asr.stream(_frames(clip))
    await anext(first)  # admitted: it holds the only place
    pulled = asyncio.Event()

    async def watched() -> AsyncIterator[Frame]:
        pulled.set()
        async for frame in _frames(clip):
            yield frame

    waiting = asyncio.create_task(_final(asr.stream(watched())))
    given_up = asyncio.create_task(_final(asr.stream(_frames(clip))))
    await asyncio.sleep(0.3)
    assert not pulled.is_set()  # waits holding nothing; its audio is not taken
    given_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await given_up
    assert (await _final(first)).text == GO_FORWARD
    assert (await waiting).text == GO_FORWARD
    assert pulled.is_set()
    assert (await _final(asr.stream(_frames(clip)))).text == GO_FORWARD


# --- segments -----------------------------------------------------------------------------------


def _blocks(*energies: int) -> bytes:
    """100 ms blocks of a constant-amplitude square wave, one per amplitude."""
    return b"".join(
        np.tile(np.array([a, -a], np.int16), BLOCK_BYTES // 4).tobytes() for a in energies
    )


def test_segmenter_cuts_at_the_first_pause_after_segment_s_whatever_the_chunking() -> None:
    audio = _blocks(*[8000] * 12, 100, *[8000] * 30)
    whole = Segmenter(1.0).cuts(audio)
    assert whole == [13 * BLOCK_BYTES]  # after the quiet block, not at 1 s (10 blocks)
    segmenter, cuts = Segmenter(1.0), []
    for i in range(0, len(audio), BLOCK_BYTES):
        cuts += [i + c for c in segmenter.cuts(audio[i : i + BLOCK_BYTES])]
    assert cuts == whole


def test_segmenter_cuts_without_a_pause_five_seconds_later() -> None:
    assert Segmenter(1.0).cuts(_blocks(*[8000] * 130)) == [60 * BLOCK_BYTES, 120 * BLOCK_BYTES]


async def test_pocketsphinx_segments_keep_the_words_and_their_times() -> None:
    """8.3 s in 2 s segments: every segment's words, timed from the utterance's first sample."""
    parts = [_clip(n).samples for n in ("en_goforward_raw", "en_sr_one_two_three")]
    clip = Frame(np.concatenate([*parts, parts[0]]), 16000)
    asr = PocketsphinxASR(processes=0, segment_s=2)
    for final in (await _final(asr.stream(_frames(clip))), await asr.transcribe(clip)):
        assert final.text.startswith(GO_FORWARD)
        assert final.text.endswith("ten meters")
        assert "three" in _words(final.text)
        starts = [w.start_s for w in final.words]
        assert starts == sorted(starts)
        assert starts[-4] > 5.5  # the second "go", in the third clip
        assert final.words[-1].end_s <= clip.duration_s
