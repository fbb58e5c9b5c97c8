"""parley's engines as Ray Serve deployments, on a real one-node Ray cluster on loopback.

The cluster comes from ``.ci/ray.sh`` (``PARLEY_TEST_RAY_ADDRESS``); without it these tests are
skipped, except in CI (``CI`` set), where they fail. The module deploys one application (espeak
TTS and pocketsphinx ASR, the fast profile) under a name of its own, and deletes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from parley.audio.frames import Frame
from parley.config import Settings, load_settings
from parley.engines.base import SpeechOptions, Transcript
from parley.engines.ray_serve import (
    RemoteASR,
    RemoteTTS,
    close_remote_engines,
    connect,
    deploy,
    engine_config,
    remote_engines,
)
from tests.conftest import shared_words

ADDRESS_VARIABLE = "PARLEY_TEST_RAY_ADDRESS"
SENTENCE = "The quick brown fox jumps over the lazy dog."
# About twenty minutes of speech: espeak-ng speaks some 400 times faster than real time here,
# so this keeps the replica busy for seconds, long enough to queue behind.
LONG = " ".join(f"Sentence {i} of a long answer that nobody wants to hear." for i in range(400))

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def settings() -> Iterator[Settings]:
    address = os.environ.get(ADDRESS_VARIABLE)
    if not address:
        reason = f"{ADDRESS_VARIABLE} is not set: start a Ray head with .ci/ray.sh"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Ray Serve tests; {reason}")
        pytest.skip(reason)

    s = load_settings(
        env={},
        overrides={
            "profile": "fast",
            # One decoding process: the replica's own event loop stays free to take requests
            # and cancellations while it decodes.
            "asr.options": {"processes": 1},
            "engines.backend": "ray",
            "engines.address": address,
            "engines.app_name": f"parley-test-{uuid.uuid4().hex[:8]}",
            "engines.max_batch_size": 4,
            "engines.batch_wait_timeout_s": 0.05,
            "engines.replica_cpus": 0.5,
            "engines.deploy_timeout_s": 120,
        },
    )
    assert deploy(s) is True
    try:
        yield s
    finally:
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            connect(s.engines)  # again, if a test left the cluster
            serve.delete(s.engines.app_name)
        ray.shutdown()  # the rest of the suite runs without a Ray driver in its process


def test_replicas_get_the_engine_settings_and_no_secrets() -> None:
    fast = {"profile": "fast", "llm.api_key": "sk-secret", "trust.watermark_key": "ab" * 32}
    config = engine_config(load_settings(env={}, overrides=fast))
    assert "sk-secret" not in json.dumps(config) and "abab" not in json.dumps(config)
    assert config["settings"]["tts"]["engine"] == "espeak"
    again = engine_config(load_settings(env={}, overrides=fast))
    other = engine_config(load_settings(env={}, overrides={**fast, "tts.voice": "en-gb"}))
    assert again["version"] == config["version"] != other["version"]


def test_the_application_builder_takes_serve_args() -> None:
    from parley.engines.ray_serve import app
    from parley.errors import ConfigError

    built = app({"profile": "fast", "engines": {"kinds": ["tts"], "max_replicas": 3}})
    from ray.serve import Application  # after parley's import of Ray, which quiets its warnings

    assert isinstance(built, Application)
    with pytest.raises(ConfigError, match="not parley settings"):
        app({"engines": {"min_replicas": 4, "max_replicas": 2}})


@pytest.fixture
async def tts(settings: Settings) -> AsyncIterator[RemoteTTS]:

    engine = await RemoteTTS.connect(settings.engines)
    yield engine
    await engine.aclose()


@pytest.fixture
async def asr(settings: Settings) -> AsyncIterator[RemoteASR]:

    engine = await RemoteASR.connect(settings.engines)
    yield engine
    await engine.aclose()


async def _speak(tts: object, text: str, options: SpeechOptions) -> list[Frame]:
    return [frame async for frame in tts.synthesize(text, options)]  # type: ignore[attr-defined]


def test_a_second_gateway_finds_the_application_by_name(settings: Settings) -> None:

    assert deploy(settings) is False


async def test_remote_tts_speaks_as_the_local_engine_does(tts: RemoteTTS) -> None:
    from parley.engines.espeak import EspeakTTS

    assert tts.name == "espeak"
    assert any(v.id == "en-us" for v in tts.voices())
    for rate in (24000, 16000):
        frames = await _speak(tts, SENTENCE, SpeechOptions(sample_rate=rate))
        assert frames and all(f.sample_rate == rate for f in frames)
        audio = np.concatenate([f.samples for f in frames])
        assert 1.0 < len(audio) / rate < 6.0
        assert np.abs(audio.astype(np.float32)).max() > 1000
        local = await _speak(EspeakTTS(), SENTENCE, SpeechOptions(sample_rate=rate))
        # The same engine: the same speech, give or take the resampler's edges.
        assert abs(len(audio) - sum(len(f) for f in local)) < rate // 100
    assert tts.health().status == "ok"


async def test_remote_tts_raises_the_engines_own_error(tts: RemoteTTS) -> None:
    from parley.errors import ClientError

    with pytest.raises(ClientError, match="unknown voice") as caught:
        await _speak(tts, "Hello.", SpeechOptions(voice="no-such-voice"))
    assert caught.value.param == "voice"
    assert tts.health().status == "ok"  # the engine's answer, not the cluster's fault


async def test_remote_asr_transcribes_a_real_clip(asr: RemoteASR, speech_dir: Path) -> None:

    assert (asr.name, asr.sample_rate, "en" in asr.languages) == ("pocketsphinx", 16000, True)
    samples, rate = soundfile.read(speech_dir / "en_ldc93s1.wav", dtype="int16")
    reference = "She had your dark suit in greasy wash water all year."
    clip = Frame(samples, rate)
    whole = await asr.transcribe(clip)
    assert whole.is_final and len(shared_words(whole.text, reference)) >= 3, whole.text

    async def turn() -> AsyncIterator[Frame]:
        step = rate // 10
        for i in range(0, len(samples), step):
            yield Frame(samples[i : i + step], rate)
        yield Frame(np.zeros(0, np.int16), rate)  # a pause mark: transcription starts here

    finals: list[Transcript] = [t async for t in asr.stream(turn())]
    assert len(finals) == 1 and finals[0].is_final
    assert finals[0].text == whole.text


_OTHER_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from parley.config import Settings
    from parley.engines.base import SpeechOptions
    from parley.engines.ray_serve import RemoteTTS, deploy

    settings = Settings.model_validate_json(sys.argv[1])
    if sys.argv[2]:  # through Ray Client, which streams no responses: the audio comes whole
        settings.engines.address = sys.argv[2]

    async def main():
        assert deploy(settings) is False  # found by name, not deployed again
        tts = await RemoteTTS.connect(settings.engines)
        assert (tts._stream is None) == bool(sys.argv[2])
        print("ready", flush=True)
        sys.stdin.readline()

        async def one(i):
            options = SpeechOptions(sample_rate=16000, stream=f"b-{i}")
            return sum([len(f) async for f in tts.synthesize(f"Gateway B says {i}.", options)])

        for round in range(4):
            sizes = await asyncio.gather(*(one(round * 10 + i) for i in range(3)))
            assert all(sizes), sizes
        print("done", flush=True)

    asyncio.run(main())
    """
)


async def test_two_gateways_share_batches(settings: Settings, tts: RemoteTTS) -> None:

    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_GATEWAY,
        settings.model_dump_json(),
        # Gateway B connects through Ray Client where .ci/ray.sh says where that is.
        os.environ.get("PARLEY_TEST_RAY_CLIENT_ADDRESS", ""),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        line = await asyncio.wait_for(other.stdout.readline(), 90)
        assert line.strip() == b"ready", line
        before = await tts.stats()
        other.stdin.write(b"go\n")
        await other.stdin.drain()

        async def one(i: int) -> int:
            options = SpeechOptions(sample_rate=16000, stream=f"a-{i}")
            return sum([len(f) for f in await _speak(tts, f"Gateway A says {i}.", options)])

        for round in range(4):
            assert all(await asyncio.gather(*(one(round * 10 + i) for i in range(3))))
        assert (await asyncio.wait_for(other.stdout.readline(), 60)).strip() == b"done"
        assert await asyncio.wait_for(other.wait(), 30) == 0
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    after = await tts.stats()
    new = after["recent_batches"][len(before["recent_batches"]) :]
    assert after["max_batch"] > 1
    mixed = [
        b for b in new if any(t.startswith("a-") for t in b) and any(t.startswith("b-") for t in b)
    ]
    assert mixed, f"no batch held requests of both gateways: {new}"
    assert after["failed"] == before["failed"]


async def test_a_cancelled_queued_request_is_never_synthesised(tts: RemoteTTS) -> None:

    before = await tts.stats()
    tag = f"queued-{uuid.uuid4().hex[:6]}"
    long_frames = tts.synthesize(LONG, SpeechOptions(sample_rate=8000, stream="long-1"))
    first = await anext(long_frames)  # the long batch is running on the replica
    assert len(first)

    async def queued() -> None:
        await _speak(tts, "You will never hear this.", SpeechOptions(stream=tag))

    waiting = asyncio.create_task(queued())
    await asyncio.sleep(0.3)  # it reaches the replica and waits for the next batch
    waiting.cancel()  # the caller barges in
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    cancelled = time.monotonic()
    rest = 0
    async for frame in long_frames:  # the long one still runs to its end
        rest += len(frame)
    assert time.monotonic() > cancelled + 0.2, "the long batch ended before the cancel"
    assert rest > 8000 * 60
    after = await tts.stats()
    assert tag not in after["recent_streams"]
    assert after["dropped"] == before["dropped"] + 1
    assert after["completed"] == before["completed"] + 1  # the long one, and nothing else


async def test_a_barge_in_stops_synthesis_on_the_replica(tts: RemoteTTS) -> None:

    before = await tts.stats()
    frames = tts.synthesize(LONG, SpeechOptions(sample_rate=8000, stream="long-2"))
    assert len(await anext(frames))
    await frames.aclose()  # the listener stops listening after the first frame
    started = time.monotonic()
    quick = await _speak(tts, "Next.", SpeechOptions(sample_rate=16000))
    waited = time.monotonic() - started
    assert quick
    after = await tts.stats()
    assert after["aborted"] == before["aborted"] + 1
    assert after["completed"] == before["completed"] + 1  # "Next." only
    # With one batch at a time, "Next." waited for the long batch: it ended at the barge-in.
    assert waited < 2.0, waited


async def test_a_cancelled_transcription_is_dropped_from_the_queue(
    asr: RemoteASR, speech_dir: Path
) -> None:

    before = await asr.stats()
    samples, rate = soundfile.read(speech_dir / "en_jfk_wav.wav", dtype="int16")
    long_clip = Frame(np.tile(samples, 3), rate)  # half a minute: a second or more to decode
    running = asyncio.create_task(asr.transcribe(long_clip))
    await asyncio.sleep(0.3)  # its batch runs
    queued = asyncio.create_task(asr.transcribe(Frame(samples, rate)))
    await asyncio.sleep(0.3)  # it waits on the replica for the next batch
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    assert (await running).text  # the one that kept listening got its transcript
    after = await asr.stats()
    assert after["dropped"] == before["dropped"] + 1  # it never reached the recogniser
    assert after["started"] == before["started"] + 1
    assert after["completed"] == before["completed"] + 1
    assert after["batches"] == before["batches"] + 1


async def test_remote_engines_replaces_asr_and_tts(settings: Settings) -> None:
    from parley.engines.registry import Engines

    local = Engines(vad=object(), asr=object(), llm=object(), tts=object())  # type: ignore[arg-type]
    engines = await remote_engines(settings, local)
    assert isinstance(engines.tts, RemoteTTS) and isinstance(engines.asr, RemoteASR)
    assert engines.vad is local.vad and engines.llm is local.llm
    assert [f async for f in engines.tts.synthesize("Hi.", SpeechOptions())]
    await close_remote_engines(engines)  # the server's shutdown: handles closed, Ray left
    import ray

    assert not ray.is_initialized()
    off = settings.model_copy(
        update={"engines": settings.engines.model_copy(update={"backend": "local"})}
    )
    assert await remote_engines(off, local) is local
