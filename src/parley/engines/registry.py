"""Builds named engine instances from configuration.

Each kind keeps a table of builders keyed by the name used in config (``[asr] engine =
"pocketsphinx"``). Builders import their engine module lazily, so a deployment pays only for
the engines it names. Third-party engines join with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parley.config import (
    ASRSettings,
    LLMSettings,
    Settings,
    TTSSettings,
    TurnDetectionSettings,
    VADSettings,
)
from parley.engines.base import ASR, LLM, TTS, VAD
from parley.engines.packaged import PIPER_JOE, WHISPER_TINY_EN, verified_folder
from parley.engines.smart_turn import EndOfTurn
from parley.errors import ConfigError

__all__ = [
    "Engines",
    "build_asr",
    "build_engines",
    "build_llm",
    "build_tts",
    "build_vad",
    "languages_of",
    "names",
    "register",
]

Kind = Literal["vad", "asr", "llm", "tts"]


def _silero(s: VADSettings) -> VAD:
    from parley.engines.silero import SileroVAD

    return SileroVAD(**s.options)


def _pocketsphinx(s: ASRSettings) -> ASR:
    from parley.engines.pocketsphinx import PocketsphinxASR

    return PocketsphinxASR(language=s.language, **s.options)


def _whisper(s: ASRSettings) -> ASR:
    from parley.engines.whisper import WhisperASR

    options = dict(s.options)
    if "model" not in options:  # the default: tiny.en from its pinned wheel, checked
        options["model"] = str(verified_folder(WHISPER_TINY_EN))
    return WhisperASR(language=s.language, **options)


def _openai(s: LLMSettings) -> LLM:
    from parley.engines.openai_llm import OpenAILLM

    if not s.base_url:
        raise ConfigError(
            "llm engine 'openai' needs llm.base_url (PARLEY_LLM_BASE_URL)", param="llm.base_url"
        )
    return OpenAILLM(
        base_url=s.base_url,
        api_key=s.api_key,
        model=s.model,
        temperature=s.temperature,
        max_tokens=s.max_output_tokens,
        timeout_s=s.timeout_s,
        **s.options,
    )


def _faq(s: LLMSettings) -> LLM:
    from parley.engines.faq import FAQLLM

    return FAQLLM(knowledge=s.knowledge, **s.options)


def _espeak(s: TTSSettings) -> TTS:
    from parley.engines.espeak import EspeakTTS

    return EspeakTTS(default_voice=s.voice, **s.options)


def _vits(s: TTSSettings) -> TTS:
    from parley.engines.vits import VitsTTS

    return VitsTTS(default_voice=s.voice, **s.options)


def _piper(s: TTSSettings) -> TTS:
    from parley.engines.piper import PiperTTS

    options = dict(s.options)
    if "model" not in options:  # the default: the voice joe from its pinned wheel, checked
        options["model"] = str(verified_folder(PIPER_JOE) / "en_US-joe-medium.onnx")
    return PiperTTS(default_voice=s.voice, **options)


_BUILDERS: dict[Kind, dict[str, Callable[[Any], Any]]] = {
    "vad": {"silero": _silero},
    "asr": {"pocketsphinx": _pocketsphinx, "whisper": _whisper},
    "llm": {"openai": _openai, "faq": _faq},
    "tts": {"espeak": _espeak, "vits": _vits, "piper": _piper},
}


def languages_of(asr: ASR) -> frozenset[str]:
    """The ISO 639-1 codes ``asr`` transcribes (its ``languages``; wrappers are looked through);
    empty where it does not say."""
    engine: Any = asr
    while hasattr(engine, "inner"):
        engine = engine.inner
    return frozenset(getattr(engine, "languages", ()))


def register(kind: Kind, name: str, builder: Callable[[Any], Any]) -> None:
    """Make ``name`` usable as ``[<kind>] engine = name``; ``builder`` gets the settings section."""
    _BUILDERS[kind][name] = builder


def names(kind: Kind) -> list[str]:
    return sorted(_BUILDERS[kind])


def _build(kind: Kind, name: str, section: Any) -> Any:
    builder = _BUILDERS[kind].get(name)
    if builder is None:
        raise ConfigError(
            f"unknown {kind} engine {name!r}; known: {', '.join(names(kind))}",
            param=f"{kind}.engine",
        )
    try:
        return builder(section)
    except TypeError as exc:  # an option the engine's constructor does not take
        raise ConfigError(f"{kind} engine {name!r}: {exc}", param=f"{kind}.options") from exc


def build_vad(s: VADSettings) -> VAD:
    engine: VAD = _build("vad", s.engine, s)
    return engine


def build_asr(s: ASRSettings) -> ASR:
    engine: ASR = _build("asr", s.engine, s)
    return engine


def build_llm(s: LLMSettings) -> LLM:
    engine: LLM = _build("llm", s.resolved_engine, s)
    return engine


def build_tts(s: TTSSettings) -> TTS:
    engine: TTS = _build("tts", s.engine, s)
    return engine


@dataclass(frozen=True, slots=True)
class Engines:
    """The engines one parley process serves with; shared by all sessions."""

    vad: VAD
    asr: ASR
    llm: LLM
    tts: TTS
    # The end-of-turn model of semantic_vad; None: semantic_vad is a silence window.
    turn: EndOfTurn | None = None


def build_turn(s: TurnDetectionSettings) -> EndOfTurn | None:
    if s.model == "none":
        return None
    if s.model != "smart-turn":
        raise ConfigError(
            f"unknown end-of-turn model {s.model!r}; use smart-turn or none",
            param="turn_detection.model",
        )
    from parley.engines.smart_turn import SmartTurn

    try:
        return SmartTurn(**s.model_options)
    except TypeError as exc:
        raise ConfigError(
            f"turn_detection.model_options: {exc}", param="turn_detection.model_options"
        ) from exc


def build_engines(settings: Settings) -> Engines:
    return Engines(
        vad=build_vad(settings.vad),
        asr=build_asr(settings.asr),
        llm=build_llm(settings.llm),
        tts=build_tts(settings.tts),
        turn=build_turn(settings.turn_detection),
    )


async def warm_up(engines: Engines) -> None:
    """Load models and run each local engine once, so the first turn's latency is honest.

    The LLM is not called: it may be a remote service that bills per request.
    """
    from parley.audio.frames import Frame
    from parley.engines.base import SpeechOptions

    stream = engines.vad.open_stream()
    await stream.probabilities(Frame.silence(64, engines.vad.sample_rate))
    await engines.asr.transcribe(Frame.silence(200, engines.asr.sample_rate))
    async for _ in engines.tts.synthesize("Ready.", SpeechOptions()):
        pass


async def warm_up_named(engines: Mapping[str, Any]) -> None:
    """:func:`warm_up` for a policy's local ASR and TTS instances (LLMs are never called)."""
    from parley.audio.frames import Frame
    from parley.engines.base import SpeechOptions

    for engine in engines.values():
        if hasattr(engine, "synthesize"):
            async for _ in engine.synthesize("Ready.", SpeechOptions()):
                pass
        elif hasattr(engine, "transcribe"):
            await engine.transcribe(Frame.silence(200, engine.sample_rate))
