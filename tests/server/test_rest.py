"""The REST siblings driven by the official ``openai`` SDK against ``rest_routes`` on a loopback
port: real espeak-ng, Silero and pocketsphinx; the chat LLM is the ``FakeToolLLM`` double."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from starlette.applications import Starlette

from parley.audio import containers
from parley.audio.containers import decode_upload, encode_container
from parley.audio.files import encode_audio, read_audio
from parley.audio.frames import Frame
from parley.bench.clips import Clip
from parley.config import Settings
from parley.engines.base import SpeechOptions
from parley.engines.espeak import EspeakTTS
from parley.engines.pocketsphinx import PocketsphinxASR
from parley.engines.registry import Engines
from parley.engines.silero import SileroVAD
from parley.server.rest import rest_routes
from tests.conftest import shared_words
from tests.fakes.engines import FakeToneTTS
from tests.fakes.llm_http import free_port
from tests.fakes.tool_llm import FakeToolLLM

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
LONG_TEXT = " ".join(
    ["The quick brown fox jumps over the lazy dog, then it runs off into the forest."] * 10
)


@contextmanager
def serve(settings: Settings, engines: Engines, **limits: Any) -> Iterator[openai.OpenAI]:
    """``rest_routes`` in a Starlette app on a free loopback port, and an SDK client for it."""
    port = free_port()
    app = Starlette(routes=rest_routes(settings, engines, **limits))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "REST test server did not start"
        time.sleep(0.02)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60
    )
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def engines() -> Engines:
    return Engines(
        vad=SileroVAD(), asr=PocketsphinxASR(processes=0), llm=FakeToolLLM(), tts=EspeakTTS()
    )


@pytest.fixture(scope="module")
def client(engines: Engines) -> Iterator[openai.OpenAI]:
    settings = Settings.model_validate({"pipeline": {"max_speech_chars": 1000}})
    with serve(settings, engines) as c:
        yield c


@pytest.fixture(scope="module")
def http(client: openai.OpenAI) -> Iterator[httpx.Client]:
    """A plain HTTP client for what the SDK will not send (malformed bodies)."""
    with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def goforward(clips: dict[str, Clip]) -> tuple[Frame, str]:
    clip = clips["en_goforward_raw"]
    return read_audio(clip.path), clip.transcript


def in_format(frame: Frame, fmt: str) -> bytes:
    return encode_container(frame, fmt) if fmt in ("webm", "m4a") else encode_audio(frame, fmt)


def assert_openai_error(exc: openai.APIStatusError, status: int, param: str | None = None) -> None:
    assert exc.status_code == status
    body = exc.response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"] and "\n" not in error["message"]
    if param is not None:
        assert error["param"] == param


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: ") and block != "data: [DONE]":
            events.append(json.loads(block[len("data: ") :]))
    return events


# --- /v1/audio/speech ------------------------------------------------------------------------

MAGIC = {
    "mp3": lambda d: d[:3] == b"ID3" or (d[0] == 0xFF and d[1] & 0xE0 == 0xE0),
    "opus": lambda d: d[:4] == b"OggS",
    "aac": lambda d: d[0] == 0xFF and d[1] & 0xF6 == 0xF0,
    "flac": lambda d: d[:4] == b"fLaC",
    "wav": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WAVE",
}


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_speech_each_response_format(client: openai.OpenAI, fmt: Any) -> None:
    response = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input="Hello from parley.", response_format=fmt
    )
    data = response.content
    if fmt == "pcm":
        assert len(data) % 2 == 0
        samples = np.frombuffer(data, "<i2")
        assert len(samples) / 24000 > 0.5 and np.abs(samples.astype(np.int32)).max() > 1000
        return
    assert MAGIC[fmt](data), data[:12]
    frame = decode_upload(data)
    assert frame.duration_s > 0.5
    assert np.abs(frame.samples.astype(np.int32)).max() > 1000


def test_speech_streams_audio_before_synthesis_ends(client: openai.OpenAI) -> None:
    client.audio.speech.create(model="tts-1", voice="nova", input="Warm up.", response_format="pcm")
    start = time.monotonic()
    first: float | None = None
    chunks = 0
    size = 0
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="nova", input=LONG_TEXT, response_format="pcm"
    ) as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        for chunk in response.iter_bytes():
            if first is None:
                first = time.monotonic() - start
            chunks += 1
            size += len(chunk)
    total = time.monotonic() - start
    assert first is not None and chunks > 5
    assert first < total / 2, f"first audio after {first:.3f} s of {total:.3f} s"
    assert size / 2 / 24000 > 20  # ten long sentences


def test_speech_client_going_away_stops_synthesis(engines: Engines) -> None:
    tts = FakeToneTTS(delay_s=0.01)  # 100 ms of audio per word, 20 ms frames every 10 ms
    slow = Engines(engines.vad, engines.asr, engines.llm, tts)
    with serve(Settings(), slow) as c:
        with c.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG_TEXT, response_format="wav"
        ) as response:
            next(response.iter_bytes())
        deadline = time.monotonic() + 5
        while tts.closed_early == 0:
            assert time.monotonic() < deadline, "synthesis went on after the client left"
            time.sleep(0.02)
    assert len(tts.texts) < 3  # the later clauses were never synthesised


def test_speech_engine_bug_is_a_500_in_openai_shape(engines: Engines) -> None:
    class BrokenTTS(FakeToneTTS):
        async def synthesize(
            self, text: str, options: SpeechOptions
        ) -> AsyncGenerator[Frame, None]:
            raise RuntimeError("a bug")
            yield  # pragma: no cover

    broken = Engines(engines.vad, engines.asr, engines.llm, BrokenTTS())
    with serve(Settings(), broken) as c, pytest.raises(openai.InternalServerError) as info:
        c.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    error = info.value.response.json()["error"]
    assert error["type"] == "server_error" and "a bug" not in error["message"]


def test_speech_sse_events(client: openai.OpenAI) -> None:
    text = "Hello there. This is a second sentence."
    response = client.audio.speech.create(
        model="gpt-4o-mini-tts",
        voice="echo",
        input=text,
        response_format="pcm",
        stream_format="sse",
    )
    events = sse_events(response.content)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) > 2 and events[-1]["type"] == "speech.audio.done"
    assert set(deltas[0]) == {"type", "audio"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 24000 > 1.0
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_speech_sse_of_an_encoded_format(client: openai.OpenAI) -> None:
    response = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="alloy", input="One, two.", stream_format="sse"
    )
    events = sse_events(response.content)
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events if "audio" in e)
    assert MAGIC["mp3"](mp3) and decode_upload(mp3).duration_s > 0.3


def test_speech_voices_speeds_and_instructions(client: openai.OpenAI) -> None:
    def seconds(**kw: Any) -> float:
        data = client.audio.speech.create(
            model="tts-1", input="Testing one two three four five.", response_format="pcm", **kw
        ).content
        return len(data) / 2 / 24000

    normal = seconds(voice="alloy")
    assert seconds(voice="alloy", speed=2) < normal * 0.75
    assert seconds(voice="en-gb") > 0.5  # an espeak voice
    assert seconds(voice={"id": "fr-fr"}) > 0.5  # a voice object
    assert seconds(voice="onyx", instructions="Speak like a pirate.") > 0.5  # accepted


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"input": "x" * 1001}, "input"),
        ({"input": "hi", "voice": "no-such-voice"}, "voice"),
        ({"input": "hi", "response_format": "ogg-vorbis"}, "response_format"),
        ({"input": "hi", "speed": 0.1}, "speed"),
        ({"input": "hi", "speed": 4.5}, "speed"),
        ({"input": "hi", "speed": "fast"}, "speed"),
        ({"input": 42}, "input"),
        ({"input": "hi", "stream_format": "websocket"}, "stream_format"),
        ({"voice": "alloy"}, "input"),
    ],
)
def test_speech_refuses_bad_requests(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/audio/speech", body={"model": "tts-1", **body}, cast_to=httpx.Response)
    assert_openai_error(info.value, 400, param)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b"",
        b'"input"',
        '{"input": "\udcff"}'.encode("utf-8", "surrogatepass"),
    ],
)
def test_speech_refuses_malformed_bodies(http: httpx.Client, raw: bytes) -> None:
    response = http.post("/audio/speech", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_speech_aac_without_pyav_is_a_clear_400(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(containers, "av_available", lambda: False)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="aac")
    assert_openai_error(info.value, 400, "response_format")
    assert "mp3, opus, flac, wav, pcm" in info.value.response.json()["error"]["message"]


# --- /v1/audio/transcriptions ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm", "m4a"])
def test_transcription_of_each_container(
    client: openai.OpenAI, goforward: tuple[Frame, str], fmt: str
) -> None:
    frame, reference = goforward
    data = in_format(frame, fmt)
    result = client.audio.transcriptions.create(model="whisper-1", file=(f"clip.{fmt}", data))
    assert len(shared_words(result.text, reference)) >= 2, result.text


def test_transcription_response_formats(
    client: openai.OpenAI, goforward: tuple[Frame, str]
) -> None:
    frame, reference = goforward
    wav = encode_audio(frame, "wav")

    def create(fmt: Any, **kw: Any) -> Any:
        return client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", wav), response_format=fmt, **kw
        )

    text = create("text")
    assert isinstance(text, str) and text.endswith("\n")
    assert len(shared_words(text, reference)) >= 2
    srt = create("srt")
    assert re.fullmatch(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n[^\n]+\n", srt), srt
    vtt = create("vtt")
    assert re.fullmatch(
        r"WEBVTT\n\n\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n[^\n]+\n", vtt
    ), vtt
    verbose = create("verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.language == "english"
    assert verbose.duration == pytest.approx(frame.duration_s, abs=0.01)
    assert verbose.segments and verbose.words
    assert verbose.text == " ".join(s.text for s in verbose.segments)
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= verbose.duration for w in verbose.words)
    assert {w.word for w in verbose.words} & set(reference.split())
    assert create("verbose_json").words is None  # words only when asked for


def test_transcription_segments_a_long_file_by_vad(
    client: openai.OpenAI, goforward: tuple[Frame, str]
) -> None:
    frame, reference = goforward
    gap = Frame.silence(2000, frame.sample_rate)
    joined = Frame(np.concatenate([frame.samples, gap.samples, frame.samples]), frame.sample_rate)
    second_start = (len(frame) + len(gap)) / frame.sample_rate
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("long.flac", encode_audio(joined, "flac")),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert result.segments is not None and len(result.segments) == 2
    first, second = result.segments
    assert first.end <= second.start
    assert second.start == pytest.approx(second_start, abs=0.5)
    assert result.words is not None
    late = [w for w in result.words if w.start >= second_start - 0.5]
    assert len(late) >= 2 and len(shared_words(second.text, reference)) >= 2


def test_transcription_stream_events(client: openai.OpenAI, goforward: tuple[Frame, str]) -> None:
    frame, reference = goforward
    stream = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.mp3", encode_audio(frame, "mp3")), stream=True
    )
    events = list(stream)
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == done.text  # type: ignore[union-attr]
    assert len(shared_words(done.text, reference)) >= 2
    assert done.usage is not None and done.usage.input_tokens > 0


def test_transcription_of_silence_is_empty_text(client: openai.OpenAI) -> None:
    wav = encode_audio(Frame.silence(1500, 16000), "wav")
    result = client.audio.transcriptions.create(model="whisper-1", file=("quiet.wav", wav))
    assert result.text == ""
    events = list(
        client.audio.transcriptions.create(model="whisper-1", file=("q.wav", wav), stream=True)
    )
    assert [e.type for e in events] == ["transcript.text.done"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"this is not audio", "expected wav"),
        (b"", "empty"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 100, "corrupt webm"),
    ],
)
def test_transcription_refuses_unreadable_uploads(
    client: openai.OpenAI, data: bytes, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("clip.webm", data))
    assert_openai_error(info.value, 400)
    message = info.value.response.json()["error"]["message"]
    assert words in message and "clip.webm" in message


@pytest.mark.parametrize(
    ("files", "fields", "param"),
    [
        (None, {"model": "whisper-1"}, "file"),
        (None, {"model": "whisper-1", "file": "not a file"}, "file"),
        ({"file": ("a.wav", b"RIFF")}, {"response_format": "docx"}, "response_format"),
        ({"file": ("a.wav", b"RIFF")}, {"timestamp_granularities[]": "sentence"}, None),
        ({"file": ("a.wav", b"RIFF")}, {"temperature": "hot"}, "temperature"),
    ],
)
def test_transcription_refuses_bad_fields(
    http: httpx.Client, files: Any, fields: dict[str, str], param: str | None
) -> None:
    response = http.post(
        "/audio/transcriptions", files=files or {"unused": ("x", b"")}, data=fields
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_transcription_refuses_other_bodies_and_languages(
    http: httpx.Client, client: openai.OpenAI, goforward: tuple[Frame, str]
) -> None:
    response = http.post("/audio/transcriptions", json={"file": "x"})
    assert response.status_code == 400
    response = http.post(
        "/audio/transcriptions",
        content=b"--xx\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert response.status_code == 400 and "error" in response.json()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", encode_audio(goforward[0], "wav")), language="fr"
        )
    assert_openai_error(info.value, 400, "language")


def test_transcription_limits_upload_size_and_duration(
    engines: Engines, goforward: tuple[Frame, str]
) -> None:
    wav = encode_audio(goforward[0], "wav")
    with serve(Settings(), engines, max_body_bytes=50_000, max_audio_s=1.0) as small:
        with pytest.raises(openai.APIStatusError) as info:
            small.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        assert info.value.status_code == 413
        with pytest.raises(openai.APIStatusError) as too_long:
            small.audio.transcriptions.create(
                model="whisper-1", file=("a.mp3", encode_audio(goforward[0], "mp3"))
            )
        assert_openai_error(too_long.value, 413, "file")
        error = too_long.value.response.json()["error"]
        assert error["code"] == "audio_too_long"
        assert re.search(r"the limit (is|of) 1 s", error["message"]), error["message"]


# --- /v1/chat/completions --------------------------------------------------------------------


def test_chat_completion_plain_and_streamed(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hello parley"}]},
    ]
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=50)
    assert whole.object == "chat.completion" and whole.model == "gpt-4o-mini"
    assert whole.choices[0].message.content == "You said: hello parley."
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello parley."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(model="x", messages=messages, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_chat_tool_calls_round_trip(client: openai.OpenAI, engines: Engines) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "The weather is sunny, 21 C."
    assert isinstance(engines.llm, FakeToolLLM)
    sent = engines.llm.requests[-1]
    assert sent.messages[1].tool_calls[0].name == "get_weather"
    assert sent.messages[2].tool_call_id == call.id and sent.tools[0].name == "get_weather"

    # The same call, streamed: id and name once, the arguments in pieces.
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages[:1], tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == "call_fake1" and deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas if d.function is not None)
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_tool_choice(client: openai.OpenAI, engines: Engines) -> None:
    other: Any = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_time"}}
    forced = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = forced.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_time"  # type: ignore[union-attr]
    assert isinstance(engines.llm, FakeToolLLM)
    assert engines.llm.requests[-1].tool_choice == "get_time"
    none = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert none.choices[0].message.content == "You said: hi."
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "launch"}},
        )
    assert_openai_error(info.value, 400, "tool_choice")


IMAGE: Any = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ],
}


def test_chat_images_need_a_vision_engine(client: openai.OpenAI, engines: Engines) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="x", messages=[IMAGE])
    assert_openai_error(info.value, 400, "messages[0].content[1]")
    assert info.value.response.json()["error"]["code"] == "image_not_supported"
    seeing = Engines(engines.vad, engines.asr, FakeToolLLM(supports_vision=True), engines.tts)
    with serve(Settings(), seeing) as vision:
        reply = vision.chat.completions.create(model="x", messages=[IMAGE])
        assert reply.choices[0].message.content == "I can see the image you sent."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, None),
        ({"messages": [{"role": "tool", "content": "x"}]}, None),
        ({"messages": [{"role": "user", "content": 5}]}, None),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web"}]}, None),
        ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}, None),
    ],
)
def test_chat_refuses_bad_requests(
    client: openai.OpenAI, body: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"model": "x", **body}, cast_to=httpx.Response)
    assert_openai_error(info.value, 400, param)


def test_chat_refuses_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        "/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]


def test_chat_engine_failure_is_a_server_error(client: openai.OpenAI, engines: Engines) -> None:
    assert isinstance(engines.llm, FakeToolLLM)
    engines.llm.fail = True
    try:
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}], stream=True
            )
    finally:
        engines.llm.fail = False
    error = info.value.response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_error"


def test_chat_engine_failure_midway_is_an_error_event(
    client: openai.OpenAI, engines: Engines
) -> None:
    assert isinstance(engines.llm, FakeToolLLM)
    engines.llm.fail_midway = True
    received: list[str] = []
    try:
        with pytest.raises(openai.APIError, match="midway"):
            for chunk in client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                received.append(chunk.choices[0].delta.content or "")
    finally:
        engines.llm.fail_midway = False
    assert "".join(received) == "You"


# --- /v1/models ------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list().data
    ids = [m.id for m in models]
    for expected in (
        "parley-llm-fake-tools",
        "gpt-4o-mini",
        "parley-asr-pocketsphinx",
        "whisper-1",
        "gpt-4o-transcribe",
        "parley-tts-espeak",
        "tts-1",
        "gpt-4o-mini-tts",
    ):
        assert expected in ids
    assert len(ids) == len(set(ids))
    assert all(m.object == "model" and m.owned_by == "parley" and m.created > 0 for m in models)
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-5-ultra")
    assert_openai_error(info.value, 404, "model")
    assert info.value.response.json()["error"]["code"] == "model_not_found"
