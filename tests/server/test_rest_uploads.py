"""``POST /v1/audio/transcriptions`` against hostile and oversized uploads, in process.

The app runs on the engine doubles behind ``httpx.ASGITransport`` (no socket, one event loop),
so concurrency and limits can be driven exactly: every undecodable upload is a 400 naming the
``file``, a recording past the duration limit a 413, a request past the concurrency cap a 503
with ``Retry-After``; none is ever a 500 or an endless wait.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from starlette.applications import Starlette

from parley.audio.files import encode_audio
from parley.audio.frames import Frame
from parley.engines.base import Transcript
from parley.engines.registry import Engines
from parley.server.rest import rest_routes
from tests.fakes.engines import FakeScriptedASR, fake_engines, fake_settings, silence, tone


def wav_of(frame: Frame) -> bytes:
    return encode_audio(frame, "wav")


def with_fmt_field(wav: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``wav`` with one field of its ``fmt `` chunk (``offset`` bytes into the chunk) replaced."""
    at = wav.index(b"fmt ") + 8 + offset
    return wav[:at] + struct.pack(fmt, value) + wav[at + struct.calcsize(fmt) :]


SPEECH = Frame(np.concatenate([silence(300).samples, tone(800).samples]), 16000)
GOOD_WAV = wav_of(SPEECH)

# Uploads that are no audio parley can decode: (file name, bytes).
BAD_UPLOADS: dict[str, tuple[str, bytes]] = {
    "unknown format code": ("odd.wav", with_fmt_field(GOOD_WAV, 0, "<H", 0x1234)),
    "zero channels": ("mute.wav", with_fmt_field(GOOD_WAV, 2, "<H", 0)),
    "sample rate 0xFFFFFFFF": ("fast.wav", with_fmt_field(GOOD_WAV, 4, "<I", 0xFFFFFFFF)),
    "sample rate 1 Hz": ("slow.wav", with_fmt_field(GOOD_WAV, 4, "<I", 1)),
    "sample rate 0": ("none.wav", with_fmt_field(GOOD_WAV, 4, "<I", 0)),
    "truncated in the header": ("cut.wav", GOOD_WAV[:30]),
    "header without samples": ("bare.wav", GOOD_WAV[:44]),
    "zero length": ("empty.wav", b""),
    "garbage named wav": ("junk.wav", bytes(range(256)) * 8),
    "garbage named flac": ("junk.flac", b"\x00\x11\x22" * 500),
    "garbage named mp3": ("junk.mp3", b"not an mp3 at all" * 50),
    "flac magic then garbage": ("bad.flac", b"fLaC" + b"\xde\xad\xbe\xef" * 100),
    "id3 magic then garbage": ("bad.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x55" * 400),
    "mpeg sync then garbage": ("bad.mp3", b"\xff\xfb\x90\x00" + b"\x00\x13" * 400),
    "riff without wave": ("riff.wav", b"RIFF\x24\x00\x00\x00WAVX" + b"\x00" * 64),
}


def app_of(engines: Engines, **limits: Any) -> Starlette:
    return Starlette(routes=rest_routes(fake_settings(), engines, **limits))


def client_of(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://parley/v1", timeout=30
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    engines, *_ = fake_engines()
    async with client_of(app_of(engines)) as client:
        yield client


async def transcribe(http: httpx.AsyncClient, name: str, data: bytes, **fields: str) -> Any:
    return await http.post(
        "/audio/transcriptions", files={"file": (name, data)}, data={"model": "whisper-1", **fields}
    )


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["param"] == param
    assert error["message"] and "\n" not in error["message"]
    for word in words:
        assert word in error["message"], error["message"]


async def test_transcription_of_a_good_upload(http: httpx.AsyncClient) -> None:
    response = await transcribe(http, "a.wav", GOOD_WAV)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "hello parley"


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
@pytest.mark.parametrize("stream", ["false", "true"])
async def test_transcription_of_undecodable_audio_is_a_400_about_the_file(
    http: httpx.AsyncClient, case: str, stream: str
) -> None:
    name, data = BAD_UPLOADS[case]
    response = await transcribe(http, name, data, stream=stream)
    assert_error(response, 400, "file", name)
    assert response.json()["error"]["code"] == "invalid_audio"


async def test_transcription_of_a_float_wav_with_nan_and_inf(http: httpx.AsyncClient) -> None:
    samples = np.array([np.nan, np.inf, -np.inf, 0.5] * 4000, np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="FLOAT")
    response = await transcribe(http, "nan.wav", buf.getvalue())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("seed", range(6))
async def test_transcription_of_a_corrupted_wav_never_fails_the_server(
    http: httpx.AsyncClient, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    data = bytearray(GOOD_WAV)
    for at in rng.integers(0, 64, size=6):  # the header and the first samples
        data[at] = int(rng.integers(0, 256))
    response = await transcribe(http, "fuzz.wav", bytes(data))
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert response.json()["error"]["param"] == "file"


class GatedASR(FakeScriptedASR):
    """Holds every ``transcribe`` until ``gate`` is set: a recogniser that is slow on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.started = 0

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        self.started += 1
        self.entered.set()
        await self.gate.wait()
        return await super().transcribe(audio, language=language)


def silent_flac(seconds: float, rate: int = 16000, *, speech_at_s: float | None = None) -> bytes:
    """A FLAC of silence (with 800 ms of tone at ``speech_at_s``), written block by block."""
    buf = io.BytesIO()
    total = int(seconds * rate)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as snd:
        for start in range(0, total, rate * 10):
            block = np.zeros(min(rate * 10, total - start), np.int16)
            if speech_at_s is not None and start <= speech_at_s * rate < start + len(block):
                at = int(speech_at_s * rate) - start
                said = tone(800, rate).samples[: len(block) - at]
                block[at : at + len(said)] = said
            snd.write(block)
    return buf.getvalue()


def hiding_its_length(flac: bytes) -> bytes:
    """``flac`` with STREAMINFO's total samples set to 0 ("unknown"), as a decompression bomb
    would declare itself."""
    out = bytearray(flac)
    out[21] &= 0xF0
    out[22:26] = bytes(4)
    return bytes(out)


async def test_transcription_over_the_duration_limit_is_a_413_from_the_header() -> None:
    engines, *_ = fake_engines()
    bomb = silent_flac(24 * 60)
    assert len(bomb) < 100_000
    async with client_of(app_of(engines, max_audio_s=600)) as http:
        for stream in ("false", "true"):
            response = await transcribe(http, "bomb.flac", bomb, stream=stream)
            assert_error(response, 413, "file", "bomb.flac is 24 min long; the limit is 10 min")
            assert response.json()["error"]["code"] == "audio_too_long"


async def test_transcription_of_a_length_hidden_until_decoded_stops_at_the_limit() -> None:
    engines, *_ = fake_engines()
    bomb = hiding_its_length(silent_flac(60))
    async with client_of(app_of(engines, max_audio_s=5)) as http:
        response = await transcribe(http, "bomb.flac", bomb)
        assert_error(response, 413, "file", "bomb.flac is longer than the limit of 5 s")
        # Streamed, with an utterance before the limit: the stream has begun, so the limit
        # ends it with an error event.
        talk = hiding_its_length(silent_flac(60, speech_at_s=1.0))
        response = await transcribe(http, "talk.flac", talk, stream="true")
        assert response.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in response.text.split("\n\n")
            if line.startswith("data: ")
        ]
        assert [e["type"] for e in events] == ["transcript.text.delta", "error"]
        assert events[1]["error"]["code"] == "audio_too_long"


async def test_transcription_of_a_long_silent_upload_in_bounded_memory() -> None:
    engines, *_ = fake_engines()
    seconds = 24 * 60
    flac = silent_flac(seconds)
    async with client_of(app_of(engines)) as http:
        await transcribe(http, "warm.wav", GOOD_WAV)
        tracemalloc.start()
        try:
            response = await transcribe(http, "long.flac", flac, response_format="verbose_json")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == seconds
    assert response.json()["usage"] == {"type": "duration", "seconds": seconds}
    int16_whole = seconds * 16000 * 2  # 46 MB; at float64, 184 MB
    assert peak < int16_whole / 10, f"peak {peak / 2**20:.1f} MiB"


async def test_transcriptions_over_the_cap_wait_then_get_a_503() -> None:
    engines, *_ = fake_engines()
    asr = GatedASR()
    engines = Engines(engines.vad, asr, engines.llm, engines.tts)
    app = app_of(engines, max_transcriptions=1, transcription_wait_s=0.2)
    async with client_of(app) as http:
        first = asyncio.create_task(transcribe(http, "a.wav", GOOD_WAV))
        await asr.entered.wait()
        busy = await transcribe(http, "b.wav", GOOD_WAV)
        assert_error(busy, 503, None, "busy")
        assert busy.json()["error"]["code"] == "server_overloaded"
        assert busy.headers["retry-after"] == "1"
        busy = await transcribe(http, "b.wav", GOOD_WAV, stream="true")
        assert busy.status_code == 503
        asr.gate.set()
        assert (await first).status_code == 200
        assert (await transcribe(http, "c.wav", GOOD_WAV)).status_code == 200


async def test_transcription_waits_for_a_turn_that_frees_in_time() -> None:
    engines, *_ = fake_engines()
    asr = GatedASR()
    engines = Engines(engines.vad, asr, engines.llm, engines.tts)
    async with client_of(app_of(engines, max_transcriptions=1, transcription_wait_s=10)) as http:
        first = asyncio.create_task(transcribe(http, "a.wav", GOOD_WAV))
        second = asyncio.create_task(transcribe(http, "b.wav", GOOD_WAV))
        await asr.entered.wait()
        await asyncio.sleep(0.1)
        assert asr.started == 1  # the second waits for the first's turn
        asr.gate.set()
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]


async def test_failed_and_abandoned_transcriptions_give_their_turn_back() -> None:
    engines, *_ = fake_engines()
    app = app_of(engines, max_transcriptions=1, transcription_wait_s=0)
    async with client_of(app) as http:
        for name, data in BAD_UPLOADS.values():
            assert (await transcribe(http, name, data)).status_code == 400
        assert (await transcribe(http, "long.flac", silent_flac(60), stream="true")).is_success
    for fails_at in ("http.response.start", "http.response.body"):
        with pytest.raises(OSError, match="reset"):
            await abandon_a_stream(app, fails_at)
    async with client_of(app) as http:
        assert (await transcribe(http, "a.wav", GOOD_WAV)).status_code == 200


async def abandon_a_stream(app: Starlette, fails_at: str) -> None:
    """A streamed transcription whose client is gone as the response begins: sending the
    ``fails_at`` message fails (at the start, the body's generator is never started)."""
    request = httpx.Request(
        "POST",
        "http://parley/v1/audio/transcriptions",
        data={"model": "whisper-1", "stream": "true"},
        files={"file": ("a.wav", GOOD_WAV)},
    )
    body = request.read()
    bodies = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if bodies:
            return bodies.pop()
        await asyncio.Event().wait()  # no disconnect message: the send fails first
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == fails_at:
            raise OSError("connection reset by peer")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/transcriptions",
        "raw_path": b"/v1/audio/transcriptions",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("parley", 80),
    }
    try:
        await app(scope, receive, send)
    finally:
        assert sent[-1] == fails_at
