"""PocketSphinx on real speech: streaming partials and finals, pooling, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import soundfile as sf

from parley.audio.frames import Frame
from parley.engines.base import ASR, Transcript
from parley.engines.pocketsphinx import PocketsphinxASR
from parley.errors import BadAudioError, ConfigError

SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"


def _clip(name: str) -> Frame:
    samples, rate = sf.read(SPEECH / f"{name}.wav", dtype="int16")
    return Frame(samples, rate)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def _frames(
    clip: Frame, ms: int = 100, *, stalled: asyncio.Event | None = None
) -> AsyncIterator[Frame]:
    """``clip`` in ``ms`` frames; with ``stalled``, the audio stops for good after one frame."""
    size = clip.sample_rate * ms // 1000
    for i in range(0, len(clip), size):
        if stalled is not None and i:
            # Asked for a second frame: the first has been decoded and a decoder is held.
            stalled.set()
            await asyncio.Event().wait()
        yield Frame(clip.samples[i : i + size], clip.sample_rate)


async def _collect(asr: PocketsphinxASR, clip: Frame) -> list[Transcript]:
    return [t async for t in asr.stream(_frames(clip))]


@pytest.fixture(scope="module")
def asr() -> PocketsphinxASR:
    # In-process decoding, so the tests can watch the decoder pool.
    return PocketsphinxASR(warm=2, max_idle=4, processes=0)


def test_pocketsphinx_satisfies_protocol(asr: PocketsphinxASR) -> None:
    assert isinstance(asr, ASR)
    assert asr.sample_rate == 16000


def test_pocketsphinx_speech_folder_exists() -> None:
    assert (SPEECH / "manifest.jsonl").is_file()


@pytest.mark.parametrize(
    ("name", "reference", "at_least"),
    [
        ("en_sr_one_two_three", "one two three", 1),
        ("en_goforward_raw", "go forward ten meters", 4),
        (
            "en_librivox_0870",
            "and mister john dashwood had then leisure to consider how much there might be "
            "prudently in his power to do for them",
            5,
        ),
    ],
)
async def test_pocketsphinx_stream_recognises_reference_words(
    asr: PocketsphinxASR, name: str, reference: str, at_least: int
) -> None:
    clip = _clip(name)
    results = await _collect(asr, clip)
    *partials, final = results
    assert final.is_final
    assert not any(t.is_final for t in partials)
    assert partials, "partials arrive before the end"
    assert len(_words(final.text) & _words(reference)) >= at_least
    assert final.language == "en"
    assert final.text == " ".join(w.text for w in final.words)


async def test_pocketsphinx_final_words_timed_in_order(asr: PocketsphinxASR) -> None:
    clip = _clip("en_librivox_0870")
    final = (await _collect(asr, clip))[-1]
    assert len(final.words) >= 5
    previous_end = 0.0
    for word in final.words:
        assert previous_end <= word.start_s <= word.end_s <= clip.duration_s
        assert not re.search(r"[<>\[\]()]", word.text)
        previous_end = word.end_s


async def test_pocketsphinx_partials_throttled_and_changing() -> None:
    asr = PocketsphinxASR(partial_interval_ms=500)
    clip = _clip("en_librivox_0870")
    *partials, _ = [t async for t in asr.stream(_frames(clip, 20))]
    assert 1 <= len(partials) <= clip.duration_s / 0.5 + 1
    texts = [p.text for p in partials]
    assert all(a != b for a, b in itertools.pairwise(texts))


async def test_pocketsphinx_aclose_mid_stream_returns_decoder(asr: PocketsphinxASR) -> None:
    idle = asr.idle
    stream = asr.stream(_frames(_clip("en_librivox_0870")))
    first = await anext(stream)
    assert not first.is_final
    assert asr.idle == idle - 1
    await stream.aclose()
    assert asr.idle == idle


async def test_pocketsphinx_cancel_mid_stream_returns_decoder(asr: PocketsphinxASR) -> None:
    idle = asr.idle
    stalled = asyncio.Event()

    async def consume() -> None:
        async for _ in asr.stream(_frames(_clip("en_goforward_raw"), stalled=stalled)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(stalled.wait(), 5)
    assert asr.idle == idle - 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asr.idle == idle


async def test_pocketsphinx_two_concurrent_streams(asr: PocketsphinxASR) -> None:
    a, b = await asyncio.gather(
        _collect(asr, _clip("en_goforward_raw")), _collect(asr, _clip("en_sr_one_two_three"))
    )
    assert len(_words(a[-1].text) & {"go", "forward", "ten", "meters"}) >= 3
    assert "three" in _words(b[-1].text)


async def test_pocketsphinx_transcribe_whole_recording(asr: PocketsphinxASR) -> None:
    result = await asr.transcribe(_clip("en_goforward_raw"))
    assert result.is_final
    assert len(_words(result.text) & {"go", "forward", "ten", "meters"}) >= 3


async def test_pocketsphinx_empty_input_gives_empty_final(asr: PocketsphinxASR) -> None:
    async def nothing() -> AsyncIterator[Frame]:
        return
        yield

    results = [t async for t in asr.stream(nothing())]
    assert results == [Transcript(text="", is_final=True, language="en")]


async def test_pocketsphinx_wrong_rate_raises_and_returns_decoder(asr: PocketsphinxASR) -> None:
    idle = asr.idle

    async def mixed() -> AsyncIterator[Frame]:
        yield Frame.silence(100, 16000)
        yield Frame.silence(100, 8000)

    with pytest.raises(BadAudioError):
        async for _ in asr.stream(mixed()):
            pass
    assert asr.idle == idle
    with pytest.raises(BadAudioError):
        await asr.transcribe(Frame.silence(100, 8000))


def test_pocketsphinx_unsupported_language_is_config_error() -> None:
    with pytest.raises(ConfigError, match="English"):
        PocketsphinxASR(language="fr")


async def test_pocketsphinx_unsupported_stream_language_is_config_error(
    asr: PocketsphinxASR,
) -> None:
    with pytest.raises(ConfigError):
        await asr.transcribe(Frame.silence(100, 16000), language="de")


def test_pocketsphinx_bad_decoder_option_is_config_error() -> None:
    with pytest.raises(ConfigError):
        PocketsphinxASR(no_such_option=1)


async def test_pocketsphinx_result_independent_of_previous_streams() -> None:
    # One pooled decoder serves every stream: what it heard before must not change the result.
    asr = PocketsphinxASR(warm=1, max_idle=1, processes=0)
    clip = _clip("en_goforward_raw")
    before = (await _collect(asr, clip))[-1]
    await _collect(asr, _clip("en_jfk_wav"))
    after = (await _collect(asr, clip))[-1]
    assert asr.idle == 1
    assert after == before
    assert before.text == "go forward ten meters"


@pytest.fixture(scope="module")
def asr_processes() -> PocketsphinxASR:
    return PocketsphinxASR(processes=2)


async def test_pocketsphinx_processes_match_in_process(
    asr: PocketsphinxASR, asr_processes: PocketsphinxASR
) -> None:
    clip = _clip("en_librivox_0870")
    in_process = (await _collect(asr, clip))[-1]
    streamed = await _collect(asr_processes, clip)
    assert streamed[-1] == in_process
    assert any(not t.is_final for t in streamed)
    assert (await asr_processes.transcribe(clip)).text == (await asr.transcribe(clip)).text


async def test_pocketsphinx_processes_keep_the_event_loop_free(
    asr_processes: PocketsphinxASR,
) -> None:
    """Decoding in a thread would hold the GIL: the loop would stop for the whole decode."""
    await asr_processes.transcribe(_clip("en_sr_one_two_three"))  # workers started and warm
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.gather(*(asr_processes.transcribe(_clip("en_jfk_wav")) for _ in range(2)))
    task.cancel()
    assert len(gaps) > 20
    assert max(gaps) < 0.25  # one decode of the 11 s clip takes ~1 s of CPU


async def test_pocketsphinx_processes_cancel_and_concurrency(
    asr_processes: PocketsphinxASR,
) -> None:
    clip = _clip("en_goforward_raw")
    stream = asr_processes.stream(_frames(clip))
    await anext(stream)
    await stream.aclose()
    results = await asyncio.gather(*(_collect(asr_processes, clip) for _ in range(3)))
    assert all(r[-1].text == "go forward ten meters" for r in results)


async def test_pocketsphinx_result_does_not_depend_on_chunking(asr: PocketsphinxASR) -> None:
    """A loaded server coalesces packets; the same audio must give the same transcript."""
    clip = _clip("en_librivox_0870")

    async def chunks(sizes: list[int]) -> AsyncIterator[Frame]:
        i = 0
        for size in itertools.cycle(sizes):
            if i >= len(clip):
                return
            yield Frame(clip.samples[i : i + size], clip.sample_rate)
            i += size

    results = []
    for sizes in ([320], [4800, 320, 960], [16000]):
        results.append([t async for t in asr.stream(chunks(sizes))][-1])
    assert results[0] == results[1] == results[2]
