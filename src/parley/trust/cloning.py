"""Zero-shot voice cloning: speech in a custom voice (:class:`~parley.trust.voices.CustomVoice`).

A :class:`VoiceCloner` speaks text in the voice of a stored audio sample. The one backend is
Kyutai's Pocket TTS (``pocket-tts``, code MIT; weights CC-BY-4.0 on the Hugging Face hub). Its
wheel ships no weights: ``TTSModel.load_model`` reads them from the hub (``kyutai/pocket-tts``,
which is gated: accept its terms and log in), from the hub cache (``HF_HUB_OFFLINE=1`` for an
offline server) or from a local YAML ``config`` naming local files. Pocket TTS falls back to a
model without cloning when the gated weights cannot be had; that counts as unavailable here.

Where no cloner is installed or loadable, every use of a custom voice answers
:func:`voice_engine_unavailable` (503 ``voice_engine_unavailable``); creating voices does not
need a cloner. This module synthesises; it must not check consent or look voices up.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from parley.audio.containers import decode_upload
from parley.audio.frames import Frame, float32_to_int16
from parley.audio.resample import resample
from parley.errors import Code, EngineUnavailableError
from parley.trust.voices import CustomVoice

__all__ = [
    "ClonedVoiceTTS",
    "PocketCloner",
    "VoiceCloner",
    "load_pocket_tts",
    "voice_engine_unavailable",
]


class VoiceCloner(Protocol):
    name: str

    @property
    def sample_rate(self) -> int: ...

    def synthesize(self, text: str, voice: CustomVoice) -> AsyncGenerator[Frame, None]:
        """Frames at ``sample_rate`` of ``text`` spoken in ``voice``, as they are made."""
        ...


def voice_engine_unavailable(why: str = "no voice cloning engine is configured") -> Exception:
    return EngineUnavailableError(
        f"Custom voices cannot be spoken on this server: {why}. Install and configure a voice"
        " cloning engine (pocket-tts), or use a built-in voice.",
        param="voice",
        code=Code.VOICE_ENGINE_UNAVAILABLE,
    )


@dataclass
class PocketCloner:
    """Pocket TTS with cloning weights; one generation at a time (the model is not
    thread-safe). Each voice's conditioning state is computed once and kept."""

    model: Any  # pocket_tts.TTSModel
    name: str = "pocket-tts"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _states: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def _state(self, voice: CustomVoice) -> Any:
        import torch

        state = self._states.get(voice.id)
        if state is None:
            audio = resample(decode_upload(voice.sample, name=voice.sample_type), self.sample_rate)
            tensor = torch.from_numpy(audio.samples.astype(np.float32) / 32768.0)[None, :]
            state = self.model.get_state_for_audio_prompt(tensor, truncate=True)
            self._states[voice.id] = state
        return state

    def _chunks(self, text: str, voice: CustomVoice) -> Generator[Frame, None, None]:
        with self._lock:
            state = self._state(voice)
            for chunk in self.model.generate_audio_stream(state, text):
                samples = chunk.detach().cpu().numpy().reshape(-1).astype(np.float32)
                yield Frame(float32_to_int16(samples), self.sample_rate)

    async def synthesize(self, text: str, voice: CustomVoice) -> AsyncGenerator[Frame, None]:
        chunks = self._chunks(text, voice)
        done = object()
        try:
            while (frame := await asyncio.to_thread(next, chunks, done)) is not done:
                assert isinstance(frame, Frame)
                yield frame
        finally:
            await asyncio.to_thread(chunks.close)


def load_pocket_tts(*, language: str | None = None, config: str | None = None) -> VoiceCloner:
    """Pocket TTS with cloning (``config``: a local YAML, an ``hf://`` or https path; else
    ``language``'s packaged config); without the package or its cloning weights:
    :func:`voice_engine_unavailable`. Blocking (loads weights)."""
    try:
        # By name: an optional package without type stubs.
        TTSModel = importlib.import_module("pocket_tts").TTSModel
    except ImportError as exc:
        raise voice_engine_unavailable("the pocket-tts package is not installed") from exc
    try:
        model = TTSModel.load_model(language=language, config=config)
    except Exception as exc:  # a hub that cannot be reached, a bad path
        raise voice_engine_unavailable(f"pocket-tts could not load its weights ({exc})") from exc
    if not getattr(model, "has_voice_cloning", False):
        raise voice_engine_unavailable(
            "pocket-tts has no voice cloning weights (accept the terms of kyutai/pocket-tts on"
            " the Hugging Face hub and log in, or point its config at local weights)"
        )
    return PocketCloner(model)


class ClonedVoiceTTS:
    """One custom voice through a cloner, as a TTS engine (what ``/v1/audio/speech`` speaks
    with for ``voice: {"id": "voice_..."}``): frames resampled to the requested rate."""

    def __init__(self, cloner: VoiceCloner, voice: CustomVoice) -> None:
        self.cloner = cloner
        self.voice = voice
        self.name = cloner.name

    def voices(self) -> list[Any]:
        return []

    async def synthesize(self, text: str, options: Any) -> AsyncGenerator[Frame, None]:
        async for frame in self.cloner.synthesize(text, self.voice):
            yield resample(frame, options.sample_rate)
