"""Whisper through faster-whisper on a tiny random-weight model: loading, streaming, batching.

The model is built offline (tests/tinymodels/whisper.py) and loaded through the same code as a
real one, so everything but the text is real: its transcripts are meaningless, and the tests
check structure, ordering, determinism and cleanup rather than words.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from parley.audio.frames import Frame, float32_to_int16, int16_to_float32
from parley.audio.resample import resample
from parley.config import ASRSettings
from parley.engines.base import ASR, Transcript
from parley.engines.batching import Scheduler
from parley.engines.registry import build_asr
from parley.engines.whisper import WhisperASR, _log_mel
from parley.errors import ConfigError, EngineUnavailableError
from tests.tinymodels.whisper import build_tiny_whisper

SPEECH = Path(__file__).resolve().parents[2].parent / "shared" / "speech"
# Few tokens per window: the random model never says end-of-text, and 224 would only be slower.
FAST = {"max_new_tokens": 8}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper-en"))


@pytest.fixture(scope="session")
def multilingual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper-multi"), multilingual=True)


@pytest.fixture
async def make(model_dir: Path) -> AsyncIterator[Callable[..., WhisperASR]]:
    """Builds engines on the tiny model; their batch runners stop with the test."""
    built: list[WhisperASR] = []

    def build(**options: Any) -> WhisperASR:
        asr = WhisperASR(**{"model": str(model_dir), **FAST, **options})
        built.append(asr)
        return asr

    yield build
    for asr in built:
        await asr.scheduler.aclose()


def _clip(name: str) -> Frame:
    samples, rate = sf.read(SPEECH / f"{name}.wav", dtype="int16")
    return Frame(samples, rate)


def _noise(seconds: float, seed: int) -> Frame:
    """Distinct, deterministic audio (the random model tells inputs apart, not words)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * 16000)
    tone = np.sin(np.arange(n) * (0.02 + 0.03 * seed)) * 0.3
    return Frame(float32_to_int16(tone + rng.normal(0, 0.05, n)), 16000)


async def _frames(
    clip: Frame, ms: int = 100, *, pace_s: float = 0.0, stall: asyncio.Event | None = None
) -> AsyncIterator[Frame]:
    """``clip`` in ``ms`` frames, ``pace_s`` apart; with ``stall``, waits for it at the end."""
    size = clip.sample_rate * ms // 1000
    for i in range(0, len(clip), size):
        if pace_s:
            await asyncio.sleep(pace_s)
        yield Frame(clip.samples[i : i + size], clip.sample_rate)
    if stall is not None:
        await stall.wait()


def _other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this loop other than the test's own and the engines' batch runners."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and not t.get_name().endswith("-batch-runner")
    }


class _Gate:
    """Holds the engine's worker thread before each batch and records what each batch held."""

    def __init__(self, asr: WhisperASR, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.batches: list[list[str]] = []
        self.submitted: list[str] = []
        decode = asr._decode_batch
        submit = asr.scheduler.submit

        def held(windows: Sequence[Any]) -> list[str]:
            self.open.wait(10)
            self.batches.append([w.kind for w in windows])
            return decode(windows)

        async def counted(session: str, payload: Any, *, first: bool, cost: int = 1) -> object:
            self.submitted.append(payload.kind)
            return await submit(session, payload, first=first, cost=cost)

        monkeypatch.setattr(asr, "_decode_batch", held)
        monkeypatch.setattr(asr.scheduler, "submit", counted)

    async def until_submitted(self, n: int) -> None:
        for _ in range(500):
            if len(self.submitted) >= n:
                # Let the runner pick up what is due.
                await asyncio.sleep(0.03)
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {self.submitted} submitted")


class _Spy:
    """Records the windows of each batch the engine decodes: (kind, 16 kHz float samples)."""

    def __init__(self, asr: WhisperASR, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[tuple[str, np.ndarray]]] = []
        decode = asr._decode_batch

        def spied(windows: Sequence[Any]) -> list[str]:
            self.batches.append([(w.kind, w.samples.copy()) for w in windows])
            return decode(windows)

        monkeypatch.setattr(asr, "_decode_batch", spied)

    def windows(self, kind: str) -> list[np.ndarray]:
        return [samples for batch in self.batches for k, samples in batch if k == kind]


@pytest.fixture
def gate() -> Iterator[list[_Gate]]:
    gates: list[_Gate] = []
    yield gates
    for g in gates:  # never leave the worker thread blocked
        g.open.set()


# --- loading and configuration -----------------------------------------------------------------


async def test_whisper_loads_a_local_folder_and_satisfies_protocol(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make()
    assert isinstance(asr, ASR)
    assert asr.name == "whisper"
    assert asr.sample_rate == 16000
    assert isinstance(asr.scheduler, Scheduler)
    assert (asr.placement.kind, asr.placement.dtype) == ("cpu", "int8")


def test_whisper_builds_through_the_registry(model_dir: Path) -> None:
    asr = build_asr(ASRSettings(engine="whisper", options={"model": str(model_dir), **FAST}))
    assert isinstance(asr, WhisperASR)
    with pytest.raises(ConfigError, match="beam_width"):
        build_asr(ASRSettings(engine="whisper", options={"model": str(model_dir), "beam_width": 2}))


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_whisper_cuda_without_a_gpu_is_a_config_error(model_dir: Path, device: str) -> None:
    with pytest.raises(ConfigError, match="CUDA") as info:
        WhisperASR(model=str(model_dir), device=device)
    assert info.value.param == "asr.options.device"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"dtype": "float16"}, "not supported on cpu"),
        ({"dtype": "fp8"}, "not one of"),
        ({"device": "tpu"}, "not one of"),
        ({"partial_interval_ms": 0}, "partial_interval_ms"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_new_tokens": 447}, "at most 446"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
    ],
)
def test_whisper_rejects_bad_options(model_dir: Path, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WhisperASR(model=str(model_dir), **options)


def test_whisper_float32_on_cpu_loads(model_dir: Path) -> None:
    assert WhisperASR(model=str(model_dir), dtype="float32").placement.dtype == "float32"


def test_whisper_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ConfigError, match=str(missing)):
        WhisperASR(model=str(missing))


def test_whisper_folder_without_tokenizer_is_refused(model_dir: Path, tmp_path: Path) -> None:
    """faster-whisper would download a tokenizer for it at run time."""
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"no tokenizer\.json") as info:
        WhisperASR(model=str(copy))
    assert str(copy) in info.value.message


def test_whisper_corrupt_model_is_a_config_error(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="could not load") as info:
        WhisperASR(model=str(copy))
    assert str(copy) in info.value.message


def test_whisper_folder_that_is_not_a_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.bin"):
        WhisperASR(model=str(tmp_path))


def _empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads its environment once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", ["tiny.en", "Systran/faster-whisper-small"])
def test_whisper_hub_model_not_in_cache_names_the_pull_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    _empty_hub_cache(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=f"parley models pull whisper:{name}"):
        WhisperASR(model=name)


def test_whisper_failed_download_is_engine_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _empty_hub_cache(monkeypatch, tmp_path)  # offline: the hub client refuses to connect
    with pytest.raises(EngineUnavailableError, match="could not fetch"):
        WhisperASR(model="tiny.en", allow_download=True)


def test_whisper_unknown_model_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no Whisper model folder"):
        WhisperASR(model="tiny.fr")


def test_whisper_loads_a_size_name_from_the_hub_cache(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What ``parley models pull whisper:tiny.en`` leaves behind loads without a network."""
    cache = _empty_hub_cache(monkeypatch, tmp_path)
    repo = cache / "models--Systran--faster-whisper-tiny.en"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert WhisperASR(model="tiny.en", **FAST).placement.kind == "cpu"
    # The same through download_root, with the default cache empty again.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    assert WhisperASR(model="tiny.en", download_root=str(cache), **FAST).name == "whisper"


# --- features ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.1, 1.37, 12.0, 29.99, 30.0])
async def test_whisper_features_match_padding_the_audio_to_30s(
    make: Callable[..., WhisperASR], seconds: float
) -> None:
    extractor = make()._model.feature_extractor
    samples = np.random.default_rng(1).normal(0, 0.1, round(seconds * 16000)).astype(np.float32)
    reference = extractor(np.pad(samples, (0, 480000 - len(samples))))[:, :3000]
    np.testing.assert_allclose(_log_mel(extractor, samples), reference, atol=1e-6)


# --- transcribe ----------------------------------------------------------------------------------


async def test_whisper_transcribe_returns_a_final(make: Callable[..., WhisperASR]) -> None:
    asr = make()
    result = await asr.transcribe(_noise(2.0, 1))
    assert isinstance(result, Transcript)
    assert result.is_final
    assert isinstance(result.text, str) and result.text
    assert result.words == ()
    assert result.language == "en"
    assert asr.scheduler.stats.recent_sizes == (1,)  # 2 s: one window, one request
    # Deterministic: the same audio gives the same text; other audio, another.
    assert (await asr.transcribe(_noise(2.0, 1))).text == result.text
    assert (await asr.transcribe(_noise(2.0, 2))).text != result.text
    assert asr.scheduler.stats.recent_sizes == (1, 1, 1)


async def test_whisper_transcribe_empty_or_too_short_audio(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make()
    for audio in (Frame.silence(0, 16000), Frame.silence(50, 16000)):
        assert await asr.transcribe(audio) == Transcript("", True, language="en")
    # Below 100 ms nothing is decoded; from 100 ms on, the audio is.
    short = Frame(_noise(0.1, 1).samples[:1599], 16000)
    assert await asr.transcribe(short) == Transcript("", True, language="en")
    assert asr.scheduler.stats.requests == 0
    await asr.transcribe(_noise(0.1, 1))
    assert asr.scheduler.stats.requests == 1


async def test_whisper_transcribe_resamples(make: Callable[..., WhisperASR]) -> None:
    asr = make()
    clip = _noise(1.5, 2)
    at_8k = resample(clip, 8000)
    result = await asr.transcribe(at_8k)
    assert result.is_final
    assert result.text == (await asr.transcribe(resample(at_8k, 16000))).text


async def test_whisper_transcribe_long_audio_in_30s_windows_in_one_batch(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make(max_wait_ms=20)
    long = Frame(np.concatenate([_noise(30, 1).samples, _noise(30, 2).samples]), 16000)
    long = Frame(np.concatenate([long.samples, _noise(5, 3).samples]), 16000)
    result = await asr.transcribe(long)
    assert asr.scheduler.stats.recent_sizes == (3,)
    parts = [(await asr.transcribe(_noise(s, seed))).text for s, seed in ((30, 1), (30, 2), (5, 3))]
    assert result.text == " ".join(p for p in parts if p)


# --- stream --------------------------------------------------------------------------------------


async def test_whisper_stream_yields_partials_while_audio_flows(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make(partial_interval_ms=200)
    clip = _noise(2.0, 4)
    sent = 0

    async def audio() -> AsyncIterator[Frame]:
        nonlocal sent
        async for frame in _frames(clip, pace_s=0.03):
            sent += 1
            yield frame

    seen: list[tuple[Transcript, int]] = []
    async for transcript in asr.stream(audio()):
        seen.append((transcript, sent))
    transcripts = [t for t, _ in seen]
    assert [t.is_final for t in transcripts].count(True) == 1
    assert transcripts[-1].is_final
    partials = [(t, n) for t, n in seen if not t.is_final]
    assert partials, "no partial before the final"
    assert partials[0][1] < 20, "the first partial came only after the audio ended"
    assert all(t.text and t.language == "en" for t, _ in partials)
    # Only changes are yielded.
    assert all(a.text != b.text for a, b in itertools.pairwise(transcripts[:-1]))
    # The final decodes the same audio as transcribe does.
    assert transcripts[-1].text == (await asr.transcribe(clip)).text
    assert not _other_tasks()


async def test_whisper_stream_of_real_speech_completes(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=300)
    spy = _Spy(asr, monkeypatch)
    clip = _clip("en_goforward_raw")
    assert clip.sample_rate == 16000
    # 20 ms frames at twice real time: a partial decodes well within 300 ms of audio.
    transcripts = [t async for t in asr.stream(_frames(clip, 20, pace_s=0.01))]
    assert transcripts[-1].is_final and transcripts[-1].language == "en"
    assert all(not t.is_final for t in transcripts[:-1])
    # One final, of the whole clip; partials of ever longer prefixes, the first of the first
    # 300 ms and each at least 300 ms of audio after the one before.
    (final,) = spy.windows("final")
    np.testing.assert_array_equal(final, int16_to_float32(clip.samples))
    lengths = [len(w) for w in spy.windows("partial")]
    assert lengths[0] == 4800, lengths
    assert all(b - a >= 4800 for a, b in itertools.pairwise(lengths)), lengths
    assert len(lengths) <= len(clip) // 4800
    for window in spy.windows("partial"):
        np.testing.assert_array_equal(window, final[: len(window)])
    # The final decodes the same audio as transcribe does, so it says the same.
    assert transcripts[-1].text == (await asr.transcribe(clip)).text


async def test_whisper_stream_resamples_other_rates(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=300)
    spy = _Spy(asr, monkeypatch)
    clip = resample(_noise(1.0, 5), 8000)
    transcripts = [t async for t in asr.stream(_frames(clip))]
    assert transcripts[-1].is_final and transcripts[-1].text
    # What was decoded is the clip at 16 kHz: as long, and within 2 LSB of resampling it whole.
    (final,) = spy.windows("final")
    whole = int16_to_float32(resample(clip, 16000).samples)
    assert len(final) == len(whole) == 16000
    np.testing.assert_allclose(final, whole, atol=2.5 / 32768)

    tail = _noise(0.5, 7)

    async def mixed() -> AsyncIterator[Frame]:
        async for frame in _frames(clip):
            yield frame
        async for frame in _frames(resample(_noise(0.5, 6), 24000)):
            yield frame
        async for frame in _frames(tail):
            yield frame

    spy.batches.clear()
    transcripts = [t async for t in asr.stream(mixed())]
    assert transcripts[-1].is_final and transcripts[-1].text
    (final,) = spy.windows("final")
    # 1 s at 8 kHz, 0.5 s at 24 kHz and 0.5 s at 16 kHz make 2 s at 16 kHz (unresampled, the
    # samples would add up to 1.75 s); the 8 kHz part comes first, whole.
    assert len(final) == 32000
    np.testing.assert_allclose(final[:16000], whole, atol=2.5 / 32768)


async def test_whisper_stream_keeps_the_order_when_the_rate_returns_to_16k(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=300)
    spy = _Spy(asr, monkeypatch)
    tail = _noise(0.5, 7)

    async def mixed() -> AsyncIterator[Frame]:
        async for frame in _frames(resample(_noise(0.5, 6), 24000)):
            yield frame
        async for frame in _frames(tail):
            yield frame

    [t async for t in asr.stream(mixed())]
    (final,) = spy.windows("final")
    assert len(final) == 16000
    np.testing.assert_array_equal(final[-8000:], int16_to_float32(tail.samples))


async def test_whisper_stream_of_nothing_gives_an_empty_final(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make()
    transcripts = [t async for t in asr.stream(_frames(Frame.silence(0, 16000)))]
    assert transcripts == [Transcript("", True, language="en")]


async def test_whisper_stream_longer_than_30s_joins_its_windows(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=5000)
    spy = _Spy(asr, monkeypatch)
    first, rest = _noise(30, 6), _noise(4, 7)
    clip = Frame(np.concatenate([first.samples, rest.samples]), 16000)
    transcripts = [t async for t in asr.stream(_frames(clip, 1000))]
    # The full 30 s window is decoded once, as it fills; the final holds only what follows it.
    (window,) = spy.windows("window")
    (final,) = spy.windows("final")
    np.testing.assert_array_equal(window, int16_to_float32(first.samples))
    np.testing.assert_array_equal(final, int16_to_float32(rest.samples))
    expected = [(await asr.transcribe(part)).text for part in (first, rest)]
    assert transcripts[-1].text == " ".join(expected)
    assert not _other_tasks()


# --- batching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "float32"])
async def test_whisper_batched_results_equal_unbatched(
    make: Callable[..., WhisperASR], dtype: str
) -> None:
    """These windows all take the 10 s bucket, so a batch stacks equal shapes: greedy decoding
    gives each row the tokens it gets alone (int8 GEMMs accumulate exactly; float32 ones may
    sum in another order per batch size, ~1e-7 apart, which has not flipped a token here)."""
    batched = make(dtype=dtype, max_wait_ms=50)
    alone = make(dtype=dtype, max_batch_size=1)
    clips = [_noise(0.5 + i * 0.7, i) for i in range(6)]
    together = await asyncio.gather(*(batched.transcribe(c) for c in clips))
    assert batched.scheduler.stats.recent_sizes == (6,)  # submitted together: one batch
    one_by_one = [await alone.transcribe(c) for c in clips]
    assert set(alone.scheduler.stats.recent_sizes) == {1}
    assert [t.text for t in together] == [t.text for t in one_by_one]
    assert len({t.text for t in together}) > 1  # the inputs are told apart


async def test_whisper_concurrent_streams_share_batches(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch
) -> None:
    asr = make(partial_interval_ms=200, max_wait_ms=20)
    alone = make(max_batch_size=1)
    clips = [_noise(1.5, 10 + i) for i in range(4)]
    sizes: list[int] = []
    asr.scheduler.observe(sizes.append)

    async def run(clip: Frame) -> list[Transcript]:
        return [t async for t in asr.stream(_frames(clip, pace_s=0.02))]

    spy = _Spy(asr, monkeypatch)
    results = await asyncio.gather(*(run(c) for c in clips))
    assert asr.scheduler.stats.recent_sizes == tuple(sizes)
    assert sum(sizes) == asr.scheduler.stats.requests == sum(map(len, spy.batches))
    # Four streams paced alike share most batches (all four together when the machine is idle).
    assert max(sizes) == 4 and sum(sizes) >= 2 * len(sizes), sizes
    # One final per stream, no more: a final decode, or a partial of the whole clip reused.
    whole = [w for k in ("final", "partial") for w in spy.windows(k) if len(w) == 24000]
    assert len(spy.windows("final")) <= 4 <= len(whole)
    finals = [r[-1] for r in results]
    assert all(f.is_final for f in finals)
    assert [f.text for f in finals] == [(await alone.transcribe(c)).text for c in clips]


async def test_whisper_finals_go_ahead_of_partials(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch, gate: list[_Gate]
) -> None:
    asr = make(max_batch_size=1, partial_interval_ms=100)
    g = _Gate(asr, monkeypatch)
    gate.append(g)
    more = asyncio.Event()

    async def run(seed: int) -> list[Transcript]:
        clip = _noise(0.3, seed)
        return [t async for t in asr.stream(_frames(clip, stall=more))]

    streams = [asyncio.create_task(run(seed)) for seed in range(3)]
    await g.until_submitted(3)  # one partial each: one running (held), two queued
    final = asyncio.create_task(asr.transcribe(_noise(1.0, 9)))
    await g.until_submitted(4)
    g.open.set()
    assert (await final).is_final
    assert g.batches[:2] == [["partial"], ["final"]]
    more.set()
    results = await asyncio.gather(*streams)
    assert all(r[-1].is_final for r in results)


# --- cancellation --------------------------------------------------------------------------------


async def test_whisper_cancelled_streams_leave_nothing_behind(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch, gate: list[_Gate]
) -> None:
    """Barge-in: the consumer's task is cancelled while one partial runs and one is queued."""
    asr = make(max_batch_size=1, partial_interval_ms=100)
    g = _Gate(asr, monkeypatch)
    gate.append(g)
    never = asyncio.Event()

    async def run(seed: int) -> list[Transcript]:
        return [t async for t in asr.stream(_frames(_noise(0.3, seed), stall=never))]

    streams = [asyncio.create_task(run(seed)) for seed in range(2)]
    await g.until_submitted(2)
    started = time.monotonic()
    for task in streams:
        task.cancel()
    results = await asyncio.gather(*streams, return_exceptions=True)
    # Prompt although the engine is still busy with the running batch.
    assert time.monotonic() - started < 0.5
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert asr.scheduler.stats.aborted == 2  # the running partial and the queued one
    assert not _other_tasks()
    g.open.set()
    await asyncio.sleep(0.1)
    assert g.batches == [["partial"]]  # the queued partial never ran
    # The engine serves the next caller as usual.
    assert (await asr.transcribe(_noise(0.5, 1))).is_final


async def test_whisper_stream_closed_after_a_partial_leaves_nothing_behind(
    make: Callable[..., WhisperASR],
) -> None:
    asr = make(partial_interval_ms=100)
    never = asyncio.Event()
    stream = asr.stream(_frames(_noise(1.0, 3), pace_s=0.01, stall=never))
    first = await anext(stream)
    assert not first.is_final
    await stream.aclose()
    assert not _other_tasks()
    # Whatever was queued for the stream was aborted, not decoded later.
    before = asr.scheduler.stats.requests
    await asyncio.sleep(0.1)
    assert asr.scheduler.stats.requests == before


async def test_whisper_cancelled_transcribe_aborts_its_windows(
    make: Callable[..., WhisperASR], monkeypatch: pytest.MonkeyPatch, gate: list[_Gate]
) -> None:
    asr = make(max_batch_size=1)
    g = _Gate(asr, monkeypatch)
    gate.append(g)
    long = Frame(np.concatenate([_noise(30, 1).samples, _noise(10, 2).samples]), 16000)
    task = asyncio.create_task(asr.transcribe(long))
    await g.until_submitted(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asr.scheduler.stats.aborted == 2
    assert not _other_tasks()
    g.open.set()
    await asyncio.sleep(0.1)
    assert len(g.batches) == 1


# --- languages -----------------------------------------------------------------------------------


async def test_whisper_multilingual_model_decodes_the_language_asked_for(
    multilingual_dir: Path,
) -> None:
    asr = WhisperASR(model=str(multilingual_dir), language="de", max_wait_ms=50, **FAST)
    clip = _noise(1.0, 1)
    try:
        results = await asyncio.gather(
            asr.transcribe(clip),
            asr.transcribe(clip, language="fr-FR"),
            asr.transcribe(clip, language="EN"),
        )
        assert [r.language for r in results] == ["de", "fr", "en"]
        assert asr.scheduler.stats.recent_sizes == (3,)  # languages mix in one batch
        assert len({r.text for r in results}) > 1
        with pytest.raises(ConfigError, match="language"):
            await asr.transcribe(clip, language="klingon")
        streamed = [t async for t in asr.stream(_frames(clip), language="fr")]
        assert streamed[-1] == Transcript(results[1].text, True, language="fr")
    finally:
        await asr.scheduler.aclose()
    with pytest.raises(ConfigError, match="language"):
        WhisperASR(model=str(multilingual_dir), language="xx")


async def test_whisper_english_only_model_refuses_other_languages(
    make: Callable[..., WhisperASR],
) -> None:
    """It used to transcribe as English whatever was asked: now the caller hears why not."""
    with pytest.raises(ConfigError, match="English only") as configured:
        make(language="de")
    assert configured.value.param == "asr.language"
    asr = make()
    clip = _noise(1.0, 1)
    with pytest.raises(ConfigError, match="English only") as asked:
        await asr.transcribe(clip, language="fr")
    assert asked.value.param == "language"
    result = await asr.transcribe(clip, language="en-GB")
    assert result.language == "en"
    assert result.text == (await asr.transcribe(clip)).text


async def test_tokens_are_capped_by_audio_length(make: Callable[..., WhisperASR]) -> None:
    """The random model never ends its text: what it decodes is exactly the cap."""
    capped = make(max_new_tokens=64, max_tokens_per_second=4)
    uncapped = make(max_new_tokens=64, max_tokens_per_second=0)
    assert capped._token_cap(16000) == 12  # 8 + 1 s x 4
    assert capped._token_cap(30 * 16000) == 64  # never above max_new_tokens
    assert uncapped._token_cap(16000) == 64
    audio = _noise(1.0, seed=3)
    short = (await capped.transcribe(audio)).text
    long = (await uncapped.transcribe(audio)).text
    assert short and long.startswith(short)  # the same greedy decode, cut at 12 tokens
    assert len(long) > len(short)
