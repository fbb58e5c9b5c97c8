"""A Realtime session's configuration, typed: the wire models with every default filled in.

The configuration *is* a :class:`parley.realtime.wire.SessionConfig`. It is built once from
parley's settings when the session opens (:func:`initial_config`), and a ``session.update``
makes a new one (:func:`updated_config`), validated there and only there: ranges come from the
wire models (checked when the event is parsed), kind-specific fields, voices and defaults of a
newly chosen turn detection are checked here. Everything the rest of the session and the
pipeline need (turn detection settings, response defaults, audio formats, the wire object sent
in ``session.created``) is derived from it by pure functions, so no hand-merged dict can drift
from the typed model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import ValidationError

from parley.audio.formats import WireFormat, parse_wire_format
from parley.config import Settings, TurnDetectionSettings
from parley.engines.base import OPENAI_VOICE_NAMES, ContentPart, ToolSpec
from parley.errors import Code, ProtocolError, as_parley_error
from parley.pipeline.listener import EAGERNESS_SILENCE_MS
from parley.pipeline.options import ResponseOptions
from parley.realtime import wire
from parley.realtime.commands import Configure

__all__ = [
    "EAGERNESS_SILENCE_MS",
    "OPENAI_VOICES",
    "SessionDefaults",
    "check_voice",
    "initial_config",
    "input_format",
    "output_format",
    "response_options",
    "response_overrides",
    "session_object",
    "tool_choice_name",
    "tools_of",
    "turn_detection",
    "updated_config",
    "voice_name",
]

SessionKind = Literal["realtime", "transcription"]


OPENAI_VOICES = frozenset(OPENAI_VOICE_NAMES)
# A voice name as any engine spells one (``en-us+f3``, ``en_US-joe-medium``, ``speaker:3``):
# never a path, never a control character, never a 10 kB string.
# Custom voices (POST /v1/audio/voices): resolved per response, so a withdrawn consent
# silences them at once.
_CUSTOM_VOICE = re.compile(r"voice_[A-Za-z0-9]{8,64}")
_VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}")
# Fields that only a realtime (speech-to-speech) session has.
_REALTIME_ONLY = (
    "output_modalities",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "truncation",
    "prompt",
    "model",
)


@dataclass(frozen=True, slots=True)
class SessionDefaults:
    """What a new session starts with, from parley's settings and engines."""

    kind: SessionKind = "realtime"
    model: str = "parley"
    instructions: str = ""
    asr_model: str = "pocketsphinx"
    language: str | None = "en"
    turn_detection: TurnDetectionSettings = field(default_factory=TurnDetectionSettings)
    voice: str = "alloy"
    speed: float = 1.0
    # Lower-case voice names the TTS engine knows besides OpenAI's; empty: any well-formed name.
    voices: frozenset[str] = frozenset()
    # ISO 639-1 codes the recogniser transcribes; empty: whatever it is asked (it checks).
    languages: frozenset[str] = frozenset()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        kind: SessionKind = "realtime",
        model: str = "parley",
        asr_model: str = "pocketsphinx",
        voices: Collection[str] = (),
        languages: Collection[str] = (),
    ) -> SessionDefaults:
        return cls(
            kind=kind,
            model=model,
            instructions=settings.pipeline.instructions,
            asr_model=asr_model,
            language=settings.asr.language,
            turn_detection=settings.turn_detection,
            voice=settings.tts.voice or "alloy",
            speed=min(max(settings.tts.speed, 0.25), 1.5),
            voices=frozenset(v.lower() for v in voices),
            languages=frozenset(languages),
        )


def initial_config(d: SessionDefaults) -> wire.SessionConfig:
    """The configuration a session opens with."""
    td = d.turn_detection
    config: dict[str, Any] = {
        "type": d.kind,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": d.asr_model, "language": d.language},
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": td.threshold,
                    "prefix_padding_ms": td.prefix_padding_ms,
                    "silence_duration_ms": td.silence_duration_ms,
                    "create_response": td.create_response and d.kind == "realtime",
                    "interrupt_response": td.interrupt_response,
                    "idle_timeout_ms": None,
                },
            },
        },
    }
    if d.kind == "realtime":
        config["audio"]["output"] = {
            "format": {"type": "audio/pcm", "rate": 24000},
            "voice": d.voice,
            "speed": d.speed,
        }
        config |= {
            "model": d.model,
            "output_modalities": ["audio"],
            "instructions": d.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "truncation": "auto",
        }
    return wire.SessionConfig.model_validate(config)


def updated_config(
    config: wire.SessionConfig,
    update: wire.SessionConfig,
    d: SessionDefaults,
    event_id: str | None = None,
) -> wire.SessionConfig:
    """``config`` with a ``session.update`` applied, or :class:`ProtocolError`.

    Partial: fields sent replace, nested configs merge, ``null`` clears; a turn detection that
    is sent replaces the old one, its absent fields taking parley's defaults.
    """
    sent = update.model_fields_set
    if update.type is not None and update.type != d.kind:
        raise ProtocolError(
            f"a {d.kind} session cannot become a {update.type} session",
            param="session.type",
            code=Code.INVALID_VALUE,
            event_id=event_id,
        )
    if d.kind == "transcription":
        wrong = next((k for k in (*_REALTIME_ONLY, "tracing") if k in sent), None)
        output = update.audio is not None and "output" in update.audio.model_fields_set
        if wrong is not None or output:
            name = wrong or "audio.output"
            raise ProtocolError(
                f"{name} is not a setting of a transcription session",
                param=f"session.{name}",
                code=Code.INVALID_VALUE,
                event_id=event_id,
            )
    new = config.merged(update)
    audio = new.audio or wire.AudioConfig()
    inp = audio.input or wire.AudioInputConfig()
    td = inp.turn_detection
    if isinstance(td, wire.ServerVad):
        base = d.turn_detection
        td = td.model_copy(
            update={
                "threshold": base.threshold if td.threshold is None else td.threshold,
                "prefix_padding_ms": base.prefix_padding_ms
                if td.prefix_padding_ms is None
                else td.prefix_padding_ms,
                "silence_duration_ms": base.silence_duration_ms
                if td.silence_duration_ms is None
                else td.silence_duration_ms,
                "create_response": True if td.create_response is None else td.create_response,
                "interrupt_response": True
                if td.interrupt_response is None
                else td.interrupt_response,
            }
        )
    elif isinstance(td, wire.SemanticVad):
        td = td.model_copy(
            update={
                "eagerness": td.eagerness or "auto",
                "create_response": True if td.create_response is None else td.create_response,
                "interrupt_response": True
                if td.interrupt_response is None
                else td.interrupt_response,
            }
        )
    inp = inp.model_copy(update={"turn_detection": td})
    if inp.transcription is not None and inp.transcription.language:
        check_language(inp.transcription.language, d, event_id)
    out = audio.output
    if out is not None and out.voice is not None:
        check_voice(out.voice, d, "session.audio.output.voice", event_id)
    new = new.model_copy(update={"audio": audio.model_copy(update={"input": inp})})
    # What the pipeline will make of it must hold too (a bug here is still the client's
    # request failing, never the session).
    try:
        turn_detection(new, d)
    except ValidationError as exc:
        error = as_parley_error(exc, param_prefix="session.audio.input.turn_detection")
        error.event_id = event_id
        raise error from exc
    return new


def check_voice(
    voice: str | wire.VoiceId, d: SessionDefaults, param: str, event_id: str | None
) -> None:
    """A voice this server can speak, or :class:`ProtocolError` now (not when audio is due)."""
    name = voice_name(voice)
    if _CUSTOM_VOICE.fullmatch(name):
        return  # a custom voice (voice_...): found, or refused, when a reply is spoken
    known = not d.voices or any(
        n.lower() in OPENAI_VOICES or n.lower() in d.voices for n in (name, name.partition("+")[0])
    )
    if not _VOICE_NAME.fullmatch(name) or not known:
        some = ", ".join(sorted(OPENAI_VOICES)[:6])
        raise ProtocolError(
            f"Invalid value for '{param}': unknown voice {name[:64]!r}; use an OpenAI voice "
            f"name ({some}, ...) or one of GET /v1/audio/voices.",
            param=param,
            code=Code.INVALID_VALUE,
            event_id=event_id,
        )


def language_code(language: str) -> str:
    """``en-US`` -> ``en``: the ISO 639-1 part of a language tag."""
    return language.strip().lower().replace("_", "-").split("-")[0]


def check_language(language: str, d: SessionDefaults, event_id: str | None) -> None:
    """A transcription language this server's recogniser knows, or :class:`ProtocolError`."""
    if not d.languages or language_code(language) in d.languages:
        return
    param = "session.audio.input.transcription.language"
    raise ProtocolError(
        f"Invalid value for '{param}': this server's recogniser ({d.asr_model}) transcribes "
        f"{', '.join(sorted(d.languages))} only, not {language[:32]!r}; its operator can serve "
        "other languages with a multilingual Whisper model (asr.options.model = small)",
        param=param,
        code=Code.INVALID_VALUE,
        event_id=event_id,
    )


def wants_deltas(update: wire.SessionConfig, before: bool, kind: SessionKind) -> bool:
    """Whether the client asked for transcription itself after ``update`` (a transcription
    session always has): only then are partial transcripts decoded, to send as deltas."""
    inp = update.audio.input if update.audio is not None else None
    if inp is None or "transcription" not in inp.model_fields_set:
        return before
    return inp.transcription is not None or kind == "transcription"


def configure(
    config: wire.SessionConfig,
    d: SessionDefaults,
    instructions: str | tuple[ContentPart, ...],
    *,
    deltas: bool,
) -> Configure:
    """The command that brings the pipeline in line with the session's configuration."""
    return Configure(
        input_rate=input_format(config).sample_rate,
        output_rate=output_format(config).sample_rate,
        turn_detection=turn_detection(config, d),
        defaults=response_options(config),
        instructions=instructions,
        language=transcription_language(config),
        partials=deltas and transcription_on(config),
    )


def transcription_language(config: wire.SessionConfig) -> str | None:
    """The language the client asked its audio to be transcribed in; None: the server's."""
    transcription = _input(config).transcription
    return transcription.language if transcription is not None else None


def session_object(
    config: wire.SessionConfig, *, session_id: str, expires_at: int
) -> dict[str, Any]:
    """The session as ``session.created`` and ``session.updated`` carry it (GA shape)."""
    kind = config.type or "realtime"
    body = config.model_dump(mode="json", exclude={"include"} if config.include is None else None)
    if kind == "transcription":
        for key in (*_REALTIME_ONLY, "tracing"):
            body.pop(key, None)
        body["audio"].pop("output", None)
    body["id"] = session_id
    body["object"] = "realtime.session" if kind == "realtime" else "realtime.transcription_session"
    body["expires_at"] = expires_at
    return body


def new_expiry(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def _input(config: wire.SessionConfig) -> wire.AudioInputConfig:
    audio = config.audio or wire.AudioConfig()
    return audio.input or wire.AudioInputConfig()


def _output(config: wire.SessionConfig) -> wire.AudioOutputConfig:
    audio = config.audio or wire.AudioConfig()
    return audio.output or wire.AudioOutputConfig()


def _format(fmt: wire.AudioFormat | None) -> WireFormat:
    if fmt is None:
        return parse_wire_format("audio/pcm", 24000)
    return wire.wire_format(fmt)


def input_format(config: wire.SessionConfig) -> WireFormat:
    return _format(_input(config).format)


def output_format(config: wire.SessionConfig) -> WireFormat:
    return _format(_output(config).format)


def output_voice(config: wire.SessionConfig) -> str | wire.VoiceId | None:
    return _output(config).voice


def output_format_object(config: wire.SessionConfig) -> dict[str, Any]:
    fmt = _output(config).format or wire.PcmFormat(type="audio/pcm")
    return fmt.model_dump(mode="json")


def transcription_on(config: wire.SessionConfig) -> bool:
    return _input(config).transcription is not None


def idle_timeout_ms(config: wire.SessionConfig) -> int | None:
    td = _input(config).turn_detection
    return td.idle_timeout_ms if isinstance(td, wire.ServerVad) else None


def turn_detection(config: wire.SessionConfig, d: SessionDefaults) -> TurnDetectionSettings:
    """The pipeline's endpointing settings (raises pydantic's ValidationError if out of range)."""
    td = _input(config).turn_detection
    base = d.turn_detection
    if td is None:
        return TurnDetectionSettings(type="none", create_response=False)
    realtime = (config.type or "realtime") == "realtime"
    if isinstance(td, wire.SemanticVad):
        return TurnDetectionSettings(
            type="semantic_vad",
            threshold=base.threshold,
            prefix_padding_ms=base.prefix_padding_ms,
            silence_duration_ms=EAGERNESS_SILENCE_MS[td.eagerness or "auto"],
            create_response=td.create_response is not False and realtime,
            interrupt_response=td.interrupt_response is not False,
            eagerness=td.eagerness or "auto",
        )
    return TurnDetectionSettings(
        type="server_vad",
        threshold=base.threshold if td.threshold is None else td.threshold,
        prefix_padding_ms=base.prefix_padding_ms
        if td.prefix_padding_ms is None
        else td.prefix_padding_ms,
        silence_duration_ms=base.silence_duration_ms
        if td.silence_duration_ms is None
        else td.silence_duration_ms,
        create_response=td.create_response is not False and realtime,
        interrupt_response=td.interrupt_response is not False,
    )


def tools_of(tools: list[wire.FunctionTool] | None) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(t.name, t.description or "", t.parameters or {}) for t in tools or ())


def tool_choice_name(value: wire.ToolChoice | None) -> str:
    if value is None:
        return "auto"
    return value.name if isinstance(value, wire.ToolChoiceFunction) else str(value)


def voice_name(value: str | wire.VoiceId | None) -> str:
    if value is None:
        return "alloy"
    return value.id if isinstance(value, wire.VoiceId) else value


def response_options(config: wire.SessionConfig) -> ResponseOptions:
    """The session's defaults for a response (``response.create`` may override them)."""
    if (config.type or "realtime") == "transcription":
        return ResponseOptions(audio=False)
    out = _output(config)
    limit = config.max_output_tokens
    return ResponseOptions(
        audio=(config.output_modalities or ["audio"]) == ["audio"],
        tools=tools_of(config.tools),
        tool_choice=tool_choice_name(config.tool_choice),
        max_output_tokens=None if limit in (None, "inf") else int(limit),
        voice=voice_name(out.voice),
        speed=float(out.speed or 1.0),
    )


PromptRenderer = Callable[[wire.PromptConfig, str | None], str | tuple[ContentPart, ...]]


def response_overrides(
    config: wire.SessionConfig,
    d: SessionDefaults,
    ev: wire.ResponseCreateEvent,
    render_prompt: PromptRenderer,
) -> tuple[ResponseOptions, dict[str, str] | None]:
    """A ``response.create``'s options (the session's, overridden by what it sent) and
    metadata, or :class:`ProtocolError`."""
    options = response_options(config)
    params = ev.response
    if params is None:
        return options, None
    if params.conversation == "none" or params.input is not None:
        raise ProtocolError(
            "out-of-band responses (conversation: none, input) are not supported yet",
            param="response.conversation" if params.conversation == "none" else "response.input",
            code=Code.UNSUPPORTED_PARAMETER,
            event_id=ev.event_id,
        )
    changes: dict[str, Any] = {}
    if params.output_modalities is not None:
        changes["audio"] = params.output_modalities == ["audio"]
    if params.instructions is not None:
        changes["instructions"] = params.instructions
    if params.prompt is not None:
        changes["instructions"] = render_prompt(params.prompt, ev.event_id)
    if params.tools is not None:
        changes["tools"] = tools_of(params.tools)
    if params.tool_choice is not None:
        changes["tool_choice"] = tool_choice_name(params.tool_choice)
    if params.max_output_tokens is not None:
        limit = params.max_output_tokens
        changes["max_output_tokens"] = None if limit == "inf" else int(limit)
    voice = params.audio.output.voice if params.audio and params.audio.output else None
    if voice is not None:
        check_voice(voice, d, "response.audio.output.voice", ev.event_id)
        changes["voice"] = voice_name(voice)
    return replace(options, **changes), params.metadata
