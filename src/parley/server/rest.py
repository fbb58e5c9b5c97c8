"""The OpenAI REST siblings of the Realtime API, as the official SDK calls them.

- ``POST /v1/audio/speech``: text -> audio in mp3, opus, aac, flac, wav or pcm (24 kHz s16le).
  The text is cut into clauses (:class:`~parley.pipeline.segmenter.ClauseSegmenter`) and each
  clause is synthesised in turn, so the first audio leaves while the rest is still being made.
  ``stream_format=audio`` (the default) sends the file's bytes chunked as they are encoded (see
  :mod:`parley.audio.containers` for how each format streams: flac is sent whole at the end);
  ``stream_format=sse`` sends ``speech.audio.delta`` events (base64 chunks of the same file) and
  a final ``speech.audio.done`` with usage. ``model`` is accepted and ignored; ``instructions``
  is accepted and ignored because espeak-ng cannot act it out; ``voice`` is an OpenAI voice name
  (mapped onto espeak voices), an espeak voice, or ``{"id": ...}``. ``speed`` 0.25-4.0 maps onto
  espeak's 80-450 words per minute, so the extremes are clamped.
- ``POST /v1/audio/transcriptions``: a multipart upload (wav, flac, mp3, ogg/opus, webm, m4a,
  aac) -> text. The recording is cut into utterances by the VAD (``find_speech``); each is
  recognised on its own and the texts joined, with segment and word times from the file's
  start. Formats: json, text, srt, vtt, verbose_json (segments always, words when
  ``timestamp_granularities[]`` has ``word``); ``stream=true`` sends a
  ``transcript.text.delta`` per utterance as it is recognised, then ``transcript.text.done``.
  No speech gives empty text, not an error. ``prompt`` and ``temperature`` are accepted and
  ignored (the recogniser takes neither).
- ``POST /v1/chat/completions``: served by the configured LLM engine, streamed or not, with
  tools, tool_choice, images (refused with 400 when the engine has no vision) and usage; the
  wire objects are built in :mod:`parley.server.chat`.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the engines as models (see :func:`model_ids`).

Requests are validated by pydantic models at this boundary; every failure is answered in
OpenAI's error shape (:mod:`parley.server.openai_errors`). Parameters OpenAI has and parley does
not (``top_p``, ``seed``, ``response_format`` of chat, ...) are ignored rather than refused, so
that clients written for OpenAI work unchanged. Usage is estimated where no engine counts it:
text at ~4 characters a token, audio at :data:`AUDIO_TOKENS_PER_S`. Bodies are limited to
:data:`MAX_BODY_BYTES` (413 past it) and recordings to :data:`MAX_AUDIO_S`.

A request is checked, and its engine started, before the response status is sent: a bad voice
or a failing engine gets a 4xx/5xx, not a broken stream. A failure after that ends an SSE stream
with an ``error`` event; an audio stream is cut off without its last chunk, which HTTP clients
report as an incomplete read. A client that goes away stops the synthesis or the LLM at once.
"""

from __future__ import annotations

import asyncio
import base64
import math
import secrets
import time
import zlib
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, assert_never

from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from parley.audio.containers import AudioEncoder, decode_upload, open_encoder
from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.config import Settings
from parley.engines.base import (
    SpeechOptions,
    Word,
    estimate_message_tokens,
    estimate_tokens,
)
from parley.engines.registry import Engines
from parley.errors import (
    ClientError,
    Code,
    InputTooLargeError,
    NotFoundError,
    ParleyError,
    PayloadTooLargeError,
)
from parley.ids import new_id
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.segments import find_speech
from parley.server.chat import ChatCompletionRequest, Completion, Reply, chat_request
from parley.server.openai_errors import guarded, sse, sse_error

__all__ = [
    "AUDIO_TOKENS_PER_S",
    "MAX_AUDIO_S",
    "MAX_BODY_BYTES",
    "SPEECH_SAMPLE_RATE",
    "model_ids",
    "rest_routes",
]

SPEECH_SAMPLE_RATE = 24000
"""Every speech format is made at 24 kHz, the rate OpenAI's ``pcm`` is defined at."""
AUDIO_TOKENS_PER_S = 20
"""Audio usage is reported at one token per 50 ms, the Realtime API's rate."""
MAX_BODY_BYTES = 25 * 1024 * 1024
"""OpenAI's upload limit (25 MB); JSON bodies share it (images travel as data URLs)."""
MAX_AUDIO_S = 1500.0
"""Longest recording transcribed (OpenAI's limit for gpt-4o-transcribe)."""

_T = TypeVar("_T")

# Audio kept around each utterance found by the VAD, so the recogniser hears whole words.
_TAIL_PADDING_MS = 200
_LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "es": "spanish",
    "fr": "french",
    "it": "italian",
    "nl": "dutch",
    "pt": "portuguese",
}
_TTS_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_ASR_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


def rest_routes(
    settings: Settings,
    engines: Engines,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_audio_s: float = MAX_AUDIO_S,
) -> list[BaseRoute]:
    """The REST endpoints over ``engines``, to mount at the root of the app."""
    api = _RestAPI(settings, engines, max_body_bytes, max_audio_s, int(time.time()))
    return [
        Route("/v1/audio/speech", guarded(api.speech), methods=["POST"]),
        Route("/v1/audio/transcriptions", guarded(api.transcriptions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(api.chat_completions), methods=["POST"]),
        Route("/v1/models", guarded(api.list_models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", guarded(api.get_model), methods=["GET"]),
    ]


def model_ids(settings: Settings, engines: Engines) -> list[str]:
    """What ``/v1/models`` lists: each engine as ``parley-<kind>-<engine>``, the configured LLM
    model name, and the OpenAI model names clients send for speech and transcription. Every
    endpoint accepts any model name; this list is what a client can discover."""
    ids = [
        f"parley-llm-{engines.llm.name}",
        settings.llm.model,
        f"parley-asr-{engines.asr.name}",
        *_ASR_ALIASES,
        f"parley-tts-{engines.tts.name}",
        *_TTS_ALIASES,
    ]
    return list(dict.fromkeys(ids))


# --- Wire models -----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _VoiceRef(_Wire):
    id: str


class SpeechRequest(_Wire):
    input: str
    model: str = "tts-1"
    voice: str | _VoiceRef | None = None
    instructions: str | None = Field(None, max_length=4096)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


class TranscriptionParams(BaseModel):
    # Lax: multipart fields are all strings ("true", "0.2").
    model_config = ConfigDict(extra="ignore")

    model: str = "whisper-1"
    language: str | None = Field(None, max_length=32)
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    stream: bool = False


# --- Internal data ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Utterance:
    """One recognised stretch of a recording; times in seconds from the file's start."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...]


# --- Plumbing --------------------------------------------------------------------------------


class _Stream(StreamingResponse):
    """A streaming response that closes its generator however the response ends (Starlette
    leaves an abandoned generator to the garbage collector, and with it a TTS or LLM job)."""

    def __init__(
        self, body: AsyncGenerator[bytes, None], media_type: str, headers: dict[str, str]
    ) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _limited(request: Request, limit: int) -> Request:
    """``request`` whose body stops being read past ``limit`` bytes (chunked uploads too)."""
    size = 0

    async def receive() -> ASGIMessage:
        nonlocal size
        message = await request.receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, receive)


async def _first(events: AsyncGenerator[_T, None]) -> _T | None:
    """The first item of ``events`` (None when it has none), closing it if that fails, so that
    a bad voice or a failing engine is answered with a status instead of a broken stream."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
    except BaseException:
        await events.aclose()
        raise


# --- The endpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RestAPI:
    settings: Settings
    engines: Engines
    max_body_bytes: int
    max_audio_s: float
    created: int

    # /v1/audio/speech ------------------------------------------------------------------------

    async def speech(self, request: Request) -> Response:
        req = SpeechRequest.model_validate_json(await _read_body(request, self.max_body_bytes))
        limit = self.settings.pipeline.max_speech_chars
        if not req.input.strip():
            raise ClientError("'input' must not be empty.", param="input")
        if len(req.input) > limit:
            raise InputTooLargeError(
                f"'input' is {len(req.input)} characters; the limit is {limit}.", param="input"
            )
        voice = req.voice.id if isinstance(req.voice, _VoiceRef) else req.voice
        options = SpeechOptions(
            voice=voice or None, speed=req.speed, sample_rate=SPEECH_SAMPLE_RATE
        )
        encoder = open_encoder(req.response_format, SPEECH_SAMPLE_RATE)
        frames = self._speech_frames(req.input, options)
        try:
            first = await _first(frames)
        except BaseException:
            encoder.abort()
            raise
        audio = _SpeechAudio(frames, first, encoder)
        if req.stream_format == "sse":
            input_tokens = estimate_tokens(req.input)
            return _Stream(audio.events(input_tokens), "text/event-stream", _SSE_HEADERS)
        return _Stream(audio.chunks(), encoder.media_type, {"Cache-Control": "no-cache"})

    async def _speech_frames(
        self, text: str, options: SpeechOptions
    ) -> AsyncGenerator[Frame, None]:
        segmenter = ClauseSegmenter()
        clauses = segmenter.push(text)
        rest = segmenter.flush()
        stream = new_id("speech")
        for i, clause in enumerate([*clauses, *([rest] if rest else [])]):
            opts = replace(options, stream=stream, continuation=i > 0)
            async with aclosing(self.engines.tts.synthesize(clause, opts)) as frames:
                async for frame in frames:
                    yield frame

    # /v1/audio/transcriptions ----------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        upload, params = await self._read_upload(request)
        recording = await asyncio.to_thread(
            decode_upload,
            upload[1],
            name=upload[0],
            max_duration_s=self.max_audio_s,
        )
        utterances = await self._find_utterances(recording)
        language = params.language or None
        if params.stream:
            body = self._transcript_events(utterances, language, recording.duration_s)
            return _Stream(body, "text/event-stream", _SSE_HEADERS)
        pieces = [u async for u in self._recognise(utterances, language)]
        return self._transcription(pieces, params, recording.duration_s)

    async def _read_upload(self, request: Request) -> tuple[tuple[str, bytes], TranscriptionParams]:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise ClientError(
                "Expected a multipart/form-data body with a 'file' field.",
                param="file",
                code=Code.INVALID_CONTENT_TYPE,
            )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        try:
            form = await _limited(request, self.max_body_bytes).form(
                max_files=1, max_fields=64, max_part_size=256 * 1024
            )
        except HTTPException as exc:  # malformed multipart
            raise ClientError(f"Invalid multipart body: {exc.detail}", param="file") from None
        try:
            file = form.get("file")
            if file is None:
                raise ClientError(
                    "Missing required parameter: 'file'.",
                    param="file",
                    code=Code.MISSING_REQUIRED_PARAMETER,
                )
            if not isinstance(file, UploadFile):
                raise ClientError(
                    "'file' must be a file upload, not a text field.",
                    param="file",
                    code=Code.INVALID_TYPE,
                )
            fields = {
                k: v for k, v in form.multi_items() if isinstance(v, str) and not k.endswith("[]")
            }
            granularities = [
                v
                for key in ("timestamp_granularities[]", "timestamp_granularities")
                for v in form.getlist(key)
                if isinstance(v, str)
            ]
            params = TranscriptionParams.model_validate(
                {**fields, "timestamp_granularities": granularities}
            )
            data = await file.read()
            return (file.filename or "file", data), params
        finally:
            await form.close()

    async def _find_utterances(self, recording: Frame) -> list[tuple[Frame, float]]:
        """The recording's utterances at the recogniser's rate, each with its start (s)."""
        vad, asr = self.engines.vad, self.engines.asr
        turn = self.settings.turn_detection
        for_vad = await asyncio.to_thread(resample, recording, vad.sample_rate)
        speech = await find_speech(
            vad, for_vad, threshold=turn.threshold, silence_duration_ms=turn.silence_duration_ms
        )
        if not speech:
            return []
        audio = await asyncio.to_thread(resample, for_vad, asr.sample_rate)
        rate = asr.sample_rate
        spans: list[list[int]] = []
        for seg in speech:
            start = max(0, int((seg.start_ms - turn.prefix_padding_ms) * rate / 1000))
            end = min(len(audio), math.ceil((seg.end_ms + _TAIL_PADDING_MS) * rate / 1000))
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            elif end > start:
                spans.append([start, end])
        return [(Frame(audio.samples[a:b], rate), a / rate) for a, b in spans]

    async def _recognise(
        self, utterances: Sequence[tuple[Frame, float]], language: str | None
    ) -> AsyncGenerator[_Utterance, None]:
        for frame, offset in utterances:
            result = await self.engines.asr.transcribe(frame, language=language)
            text = result.text.strip()
            if not text:
                continue
            words = tuple(
                Word(w.text, round(offset + w.start_s, 3), round(offset + w.end_s, 3), w.confidence)
                for w in result.words
            )
            yield _Utterance(round(offset, 3), round(offset + frame.duration_s, 3), text, words)

    async def _transcript_events(
        self, utterances: Sequence[tuple[Frame, float]], language: str | None, duration_s: float
    ) -> AsyncGenerator[bytes, None]:
        texts: list[str] = []
        try:
            async with aclosing(self._recognise(utterances, language)) as pieces:
                async for piece in pieces:
                    delta = piece.text if not texts else " " + piece.text
                    texts.append(piece.text)
                    yield sse({"type": "transcript.text.delta", "delta": delta})
        except ParleyError as exc:
            yield sse_error(exc)
            return
        text = " ".join(texts)
        audio_tokens = math.ceil(duration_s * AUDIO_TOKENS_PER_S)
        output_tokens = estimate_tokens(text)
        usage = {
            "type": "tokens",
            "input_tokens": audio_tokens,
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            "output_tokens": output_tokens,
            "total_tokens": audio_tokens + output_tokens,
        }
        yield sse({"type": "transcript.text.done", "text": text, "usage": usage})

    def _transcription(
        self, pieces: list[_Utterance], params: TranscriptionParams, duration_s: float
    ) -> Response:
        text = " ".join(p.text for p in pieces)
        usage = {"type": "duration", "seconds": math.ceil(duration_s)}
        match params.response_format:
            case "json":
                return JSONResponse({"text": text, "usage": usage})
            case "text":
                return PlainTextResponse(text + "\n" if text else "")
            case "srt":
                return PlainTextResponse(_subtitles(pieces, srt=True))
            case "vtt":
                return PlainTextResponse(_subtitles(pieces, srt=False), media_type="text/vtt")
            case "verbose_json":
                code = (params.language or self.settings.asr.language).lower().split("-")[0]
                body: dict[str, Any] = {
                    "task": "transcribe",
                    "language": _LANGUAGE_NAMES.get(code, code),
                    "duration": round(duration_s, 3),
                    "text": text,
                    "segments": [_segment(i, p) for i, p in enumerate(pieces)],
                    "usage": usage,
                }
                if "word" in params.timestamp_granularities:
                    body["words"] = [
                        {"word": w.text, "start": w.start_s, "end": w.end_s}
                        for p in pieces
                        for w in p.words
                    ]
                return JSONResponse(body)
            case _:
                assert_never(params.response_format)

    # /v1/chat/completions --------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        raw = await _read_body(request, self.max_body_bytes)
        req = ChatCompletionRequest.model_validate_json(raw)
        chat = chat_request(req, vision=self.engines.llm.supports_vision)
        events = self.engines.llm.stream(chat)
        first = await _first(events)
        completion = Completion(
            id=f"chatcmpl-{secrets.token_hex(12)}",
            model=req.model,
            created=int(time.time()),
            prompt_tokens=sum(estimate_message_tokens(m) for m in chat.messages),
        )
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            body = completion.chunks(events, first, include_usage=usage)
            return _Stream(body, "text/event-stream", _SSE_HEADERS)
        async with aclosing(events):
            reply = Reply()
            if first is not None:
                reply.add(first)
                async for event in events:
                    reply.add(event)
        return JSONResponse(completion.whole(reply))

    # /v1/models ------------------------------------------------------------------------------

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "parley"}

    async def list_models(self, request: Request) -> Response:
        ids = model_ids(self.settings, self.engines)
        return JSONResponse({"object": "list", "data": [self._model(i) for i in ids]})

    async def get_model(self, request: Request) -> Response:
        model_id = str(request.path_params["model_id"])
        if model_id not in model_ids(self.settings, self.engines):
            raise NotFoundError(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                param="model",
                code=Code.MODEL_NOT_FOUND,
            )
        return JSONResponse(self._model(model_id))


# --- Speech streaming ------------------------------------------------------------------------


@dataclass
class _SpeechAudio:
    """Synthesised frames -> encoded chunks; owns the frames generator and the encoder."""

    frames: AsyncGenerator[Frame, None]
    first: Frame | None
    encoder: AudioEncoder
    samples: int = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        closing = False
        try:
            if self.first is not None:
                # Encoding ~100 ms of audio costs well under a millisecond: on the loop.
                if out := self._write(self.first):
                    yield out
                async for frame in self.frames:
                    if out := self._write(frame):
                        yield out
            # A buffered format (flac) encodes the whole file here: off the loop.
            closing = True
            if out := await asyncio.to_thread(self.encoder.close):
                yield out
        finally:
            await self.frames.aclose()
            if not closing:
                self.encoder.abort()

    def _write(self, frame: Frame) -> bytes:
        self.samples += len(frame)
        return self.encoder.write(frame)

    async def events(self, input_tokens: int) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(self.chunks()) as chunks:
                async for chunk in chunks:
                    audio = base64.b64encode(chunk).decode("ascii")
                    yield sse({"type": "speech.audio.delta", "audio": audio})
        except ParleyError as exc:
            yield sse_error(exc)
            return
        output_tokens = math.ceil(self.samples / SPEECH_SAMPLE_RATE * AUDIO_TOKENS_PER_S)
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        }
        yield sse({"type": "speech.audio.done", "usage": usage})


# --- Transcription formats -------------------------------------------------------------------


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _subtitles(pieces: Sequence[_Utterance], *, srt: bool) -> str:
    cues = []
    for i, p in enumerate(pieces, 1):
        sep = "," if srt else "."
        times = f"{_timestamp(p.start_s, sep)} --> {_timestamp(p.end_s, sep)}"
        cues.append(f"{i}\n{times}\n{p.text}\n" if srt else f"{times}\n{p.text}\n")
    body = "\n".join(cues)
    return body if srt else "WEBVTT\n\n" + body


def _segment(index: int, piece: _Utterance) -> dict[str, Any]:
    confidences = [w.confidence for w in piece.words if w.confidence]
    raw = piece.text.encode()
    return {
        "id": index,
        "seek": round(piece.start_s * 100),  # Whisper counts seek in 10 ms frames
        "start": piece.start_s,
        "end": piece.end_s,
        "text": piece.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": (
            round(sum(math.log(c) for c in confidences) / len(confidences), 4)
            if confidences
            else 0.0
        ),
        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0,
        "no_speech_prob": 0.0,
    }
