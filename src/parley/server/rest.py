"""The OpenAI REST siblings of the Realtime API, as the official SDK calls them. This module
keeps to HTTP (parsing, limits, formats, encoding, SSE); the speech work is the pipeline's.

- ``POST /v1/audio/speech``: text -> audio in mp3, opus, aac, flac, wav or pcm (24 kHz s16le),
  clause by clause (:func:`~parley.pipeline.speech.speak_text`, the conversation's TTS stage),
  so the first audio leaves while the rest is being made. ``stream_format=audio`` (the default)
  sends the file's bytes as they are encoded (:mod:`parley.audio.containers`: flac is sent
  whole at the end); ``stream_format=sse`` sends ``speech.audio.delta`` events (base64 chunks of
  the same file) and a final ``speech.audio.done`` with usage. ``model`` and ``instructions``
  are accepted and ignored; ``voice`` is an OpenAI voice name, an engine's voice, or
  ``{"id": ...}``; ``speed`` is 0.25-4.0.
- ``POST /v1/audio/transcriptions``: a multipart upload (wav, flac, mp3, ogg/opus, webm, m4a,
  aac) -> text, decoded block by block and recognised utterance by utterance as the VAD cuts
  it (:func:`~parley.pipeline.speech.transcribe_recording`): memory never holds the recording.
  Formats: json, text, srt, vtt, verbose_json (segments always, words when
  ``timestamp_granularities[]`` has ``word``); ``stream=true`` sends a
  ``transcript.text.delta`` per utterance as it is recognised, then ``transcript.text.done``.
  No speech gives empty text; ``prompt`` and ``temperature`` are ignored; a file that does not
  decode is a 400 about ``file``. At most :data:`MAX_TRANSCRIPTIONS` run at once; one more waits
  :data:`TRANSCRIPTION_WAIT_S` for a turn, then gets a 503 with ``Retry-After``, never a hang.
- ``POST /v1/chat/completions``: served by the configured LLM engine, streamed or not, with
  tools, tool_choice, images (refused with 400 when the engine has no vision) and usage; the
  wire objects are built in :mod:`parley.server.chat`.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the engines as models (see :func:`model_ids`).

Requests are validated by pydantic models at this boundary; every failure is answered in
OpenAI's error shape (:mod:`parley.server.openai_errors`). Parameters OpenAI has and parley does
not (``top_p``, ``seed``, ``response_format`` of chat, ...) are ignored rather than refused, so
that clients written for OpenAI work unchanged. Usage is estimated where no engine counts it:
text at ~4 characters a token, audio at :data:`AUDIO_TOKENS_PER_S`. Bodies are limited to
:data:`MAX_BODY_BYTES` and recordings to :data:`MAX_AUDIO_S` (413 past either, a recording's
from its header or as soon as decoding passes the limit).

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
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, closing
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, assert_never

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from parley.audio.containers import AudioEncoder, open_encoder, open_upload
from parley.audio.frames import Frame
from parley.config import Settings
from parley.engines.base import ASR, TTS, SpeechOptions, estimate_message_tokens, estimate_tokens
from parley.engines.registry import Engines
from parley.errors import (
    ClientError,
    Code,
    InputTooLargeError,
    NotFoundError,
    OverloadedError,
    ParleyError,
)
from parley.ids import new_id
from parley.pipeline.control import Caller, CallerControl, ControlPlane
from parley.pipeline.speech import Recognised, RecordingEnd, speak_text, transcribe_recording
from parley.server.auth import principal_of
from parley.server.chat import ChatCompletionRequest, Completion, Reply, chat_request
from parley.server.http_streams import (
    SSE_HEADERS,
    Stream,
    first_item,
    limited,
    read_upload,
    resumed,
)
from parley.server.openai_errors import guarded, sse, sse_error
from parley.trust.marks import Marker

__all__ = [
    "AUDIO_TOKENS_PER_S",
    "MAX_AUDIO_S",
    "MAX_BODY_BYTES",
    "MAX_TRANSCRIPTIONS",
    "SPEECH_SAMPLE_RATE",
    "TRANSCRIPTION_WAIT_S",
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
MAX_TRANSCRIPTIONS = 4
"""Transcriptions decoded and recognised at once. Each keeps about a core busy (decoding and the
VAD in a worker thread, the recogniser in its own); more at once only makes all of them late."""
TRANSCRIPTION_WAIT_S = 5.0
"""How long a transcription beyond :data:`MAX_TRANSCRIPTIONS` waits for a turn before a 503."""

_T = TypeVar("_T")
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
    max_transcriptions: int = MAX_TRANSCRIPTIONS,
    transcription_wait_s: float = TRANSCRIPTION_WAIT_S,
    control: ControlPlane | None = None,
    marker_of: Callable[[str], Marker | None] | None = None,
    custom_voice: Callable[[str, str], TTS] | None = None,
) -> list[BaseRoute]:
    """The REST endpoints over ``engines`` (through ``control``'s routes, failover, metering
    and budgets when given), to mount at the root of the app."""
    turns = asyncio.Semaphore(max_transcriptions)  # ValueError below 0
    api = _RestAPI(
        settings,
        engines,
        max_body_bytes,
        max_audio_s,
        turns,
        transcription_wait_s,
        control,
        marker_of,
        custom_voice,
    )
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


# --- Plumbing --------------------------------------------------------------------------------


# --- The endpoints ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RestAPI:
    settings: Settings
    engines: Engines
    max_body_bytes: int
    max_audio_s: float
    turns: asyncio.Semaphore  # a transcription holds one throughout
    turn_wait_s: float
    # Routing, failover, metering and budgets (None: the engines as they are, unmetered).
    control: ControlPlane | None = None
    # A tenant's watermarks (None, or a None marker: speech is not watermarked).
    marker_of: Callable[[str], Marker | None] | None = None
    # (tenant, voice_...) -> a TTS speaking that custom voice; raises 404 or 503 (issue 14).
    custom_voice: Callable[[str, str], TTS] | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def _caller(self, request: Request) -> CallerControl | None:
        """The control plane for this request's tenant and key."""
        if self.control is None:
            return None
        principal = principal_of(request.scope)
        key_id = principal.key.id if principal.key is not None else ""
        return self.control.for_caller(Caller(principal.tenant, key_id))

    # /v1/audio/speech ------------------------------------------------------------------------

    async def speech(self, request: Request) -> Response:
        req = SpeechRequest.model_validate_json(await limited(request, self.max_body_bytes).body())
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
        caller = self._caller(request)
        tts: TTS = caller.tts() if caller else self.engines.tts
        tenant = principal_of(request.scope).tenant
        if voice and voice.startswith("voice_") and self.custom_voice is not None:
            tts = self.custom_voice(tenant, voice)  # a consented custom voice, or 404 / 503
        marker = self.marker_of(tenant) if self.marker_of is not None else None
        frames = self._speech_frames(tts, req.input, options, marker)
        try:
            first = await first_item(frames)
        except BaseException:
            encoder.abort()
            raise
        audio = _SpeechAudio(resumed(first, frames), encoder)
        if req.stream_format == "sse":
            events = audio.events(estimate_tokens(req.input))
            return Stream(events, "text/event-stream", SSE_HEADERS, owns=frames)
        return Stream(audio.chunks(), encoder.media_type, {"Cache-Control": "no-cache"}, frames)

    async def _speech_frames(
        self, tts: TTS, text: str, options: SpeechOptions, marker: Marker | None = None
    ) -> AsyncGenerator[Frame, None]:
        options = replace(options, stream=new_id("speech"))
        embedder = None
        if marker is not None:  # watermarked chunk by chunk, one chunk late
            _, embedder = marker.embedder(options.stream or "", options.sample_rate)
        async with aclosing(speak_text(tts, text, options)) as spoken:
            async for item in spoken:
                if isinstance(item, Frame):  # the clause marks are for truncation: not here
                    item = embedder.process(item) if embedder is not None else item
                    if len(item):
                        yield item
        if embedder is not None and len(tail := embedder.flush()):
            yield tail

    # /v1/audio/transcriptions ----------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        (name, data), params = await self._read_upload(request)
        caller = self._caller(request)
        asr = caller.asr() if caller is not None else self.engines.asr
        job = self._transcribe(asr, name, data, params.language or None)
        # The turn, the decoder's header and first utterance come before the status, so a busy
        # server, a bad file or a failing recogniser is an HTTP error, not a broken stream.
        items = resumed(await first_item(job), job)
        if params.stream:
            body = self._transcript_events(items)
            return Stream(body, "text/event-stream", SSE_HEADERS, owns=job)
        *pieces, end = [item async for item in items]
        assert isinstance(end, RecordingEnd)
        recognised = [p for p in pieces if isinstance(p, Recognised)]
        return self._transcription(recognised, params, end.duration_s)

    async def _transcribe(
        self, asr: ASR, name: str, data: bytes, language: str | None
    ) -> AsyncGenerator[Recognised | RecordingEnd, None]:
        """The upload's utterances, then its end, in a turn (503 after ``turn_wait_s`` without)."""
        try:
            async with asyncio.timeout(self.turn_wait_s):
                await self.turns.acquire()
        except TimeoutError:
            raise OverloadedError(
                "The server is busy with all the transcriptions it runs at once; retry shortly."
            ) from None
        try:
            upload = await asyncio.to_thread(
                open_upload, data, name=name, max_duration_s=self.max_audio_s
            )
            turn = self.settings.turn_detection
            recognised = transcribe_recording(
                upload,
                self.engines.vad,
                asr,
                language=language,
                threshold=turn.threshold,
                silence_duration_ms=turn.silence_duration_ms,
                prefix_padding_ms=turn.prefix_padding_ms,
            )
            # The recogniser stops (and lets a block being read finish) before the decoder goes.
            with closing(upload):
                async with aclosing(recognised):
                    async for item in recognised:
                        yield item
        finally:
            self.turns.release()

    async def _read_upload(self, request: Request) -> tuple[tuple[str, bytes], TranscriptionParams]:
        upload = await read_upload(request, "file", self.max_body_bytes)
        fields = {k: v for k, v in upload.fields if not k.endswith("[]")}
        granularities = [
            v
            for k, v in upload.fields
            if k in ("timestamp_granularities[]", "timestamp_granularities")
        ]
        params = TranscriptionParams.model_validate(
            {**fields, "timestamp_granularities": granularities}
        )
        return (upload.name, upload.data), params

    async def _transcript_events(
        self, items: AsyncGenerator[Recognised | RecordingEnd, None]
    ) -> AsyncGenerator[bytes, None]:
        texts: list[str] = []
        try:
            async with aclosing(items):
                async for item in items:
                    match item:
                        case Recognised(text=text):
                            delta = text if not texts else " " + text
                            texts.append(text)
                            yield sse({"type": "transcript.text.delta", "delta": delta})
                        case RecordingEnd(duration_s=duration_s):
                            yield sse(_transcript_done(" ".join(texts), duration_s))
                        case _:
                            assert_never(item)
        except ParleyError as exc:
            yield sse_error(exc)

    def _transcription(
        self, pieces: list[Recognised], params: TranscriptionParams, duration_s: float
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
        raw = await limited(request, self.max_body_bytes).body()
        req = ChatCompletionRequest.model_validate_json(raw)
        chat = chat_request(req, vision=self.engines.llm.supports_vision)
        caller = self._caller(request)
        events = caller.stream_llm(chat) if caller is not None else self.engines.llm.stream(chat)
        first = await first_item(events)
        completion = Completion(
            id=f"chatcmpl-{secrets.token_hex(12)}",
            model=req.model,
            created=int(time.time()),
            prompt_tokens=sum(estimate_message_tokens(m) for m in chat.messages),
        )
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            body = completion.chunks(events, first, include_usage=usage)
            return Stream(body, "text/event-stream", SSE_HEADERS, owns=events)
        reply = Reply()
        async for event in resumed(first, events):
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
    encoder: AudioEncoder
    samples: int = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        closing = False
        try:
            async for frame in self.frames:
                # Encoding ~100 ms of audio costs well under a millisecond: on the loop.
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
    t = round(seconds * 1000)  # ms
    return f"{t // 3_600_000:02d}:{t // 60_000 % 60:02d}:{t // 1000 % 60:02d}{sep}{t % 1000:03d}"


def _transcript_done(text: str, duration_s: float) -> dict[str, Any]:
    audio, output = math.ceil(duration_s * AUDIO_TOKENS_PER_S), estimate_tokens(text)
    usage = {
        "type": "tokens",
        "input_tokens": audio,
        "input_token_details": {"audio_tokens": audio, "text_tokens": 0},
        "output_tokens": output,
        "total_tokens": audio + output,
    }
    return {"type": "transcript.text.done", "text": text, "usage": usage}


def _subtitles(pieces: Sequence[Recognised], *, srt: bool) -> str:
    cues = []
    for i, p in enumerate(pieces, 1):
        sep = "," if srt else "."
        times = f"{_timestamp(p.start_s, sep)} --> {_timestamp(p.end_s, sep)}"
        cues.append(f"{i}\n{times}\n{p.text}\n" if srt else f"{times}\n{p.text}\n")
    body = "\n".join(cues)
    return body if srt else "WEBVTT\n\n" + body


def _segment(index: int, piece: Recognised) -> dict[str, Any]:
    confidences = [w.confidence for w in piece.words if w.confidence]
    logprob = sum(math.log(c) for c in confidences) / len(confidences) if confidences else 0.0
    raw = piece.text.encode()
    return {
        "id": index,
        "seek": round(piece.start_s * 100),  # Whisper counts seek in 10 ms frames
        "start": piece.start_s,
        "end": piece.end_s,
        "text": piece.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": round(logprob, 4),
        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0,
        "no_speech_prob": 0.0,
    }
