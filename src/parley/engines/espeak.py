"""espeak-ng speech synthesis in-process through ctypes (library and data: ``espeakng_loader``).

espeak-ng keeps global state (one voice, one rate, one callback per process), so it is
initialised once per process and every call into it holds the module's :data:`_LOCK`. Synthesis
runs on one dedicated worker thread; espeak hands each ~100 ms chunk to a callback, which passes
it to the event loop at once, so the first audio is heard long before a long text is done.
Closing the consumer's iterator sets a flag that makes the callback abort the synthesis at its
next chunk, which frees the lock for the next caller.

This module speaks text; it must not split, normalise or watermark it.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import espeakng_loader
import numpy as np

from parley.audio.frames import PCM16, Frame
from parley.audio.resample import StreamResampler
from parley.engines.base import SpeechOptions, Voice
from parley.errors import ClientError, ConfigError, EngineError, EngineUnavailableError

__all__ = ["DEFAULT_VOICE", "EspeakTTS"]

DEFAULT_VOICE = "en-us"

# espeak-ng's speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE = 1
_BUFFER_MS = 100  # audio per callback chunk
_RATE_MIN, _RATE_MAX, _RATE_NORMAL = 80, 450, 175  # words per minute
_GENDERS = {1: "male", 2: "female"}

# Held for every call into espeak-ng: its state is process-global.
_LOCK = threading.Lock()

_SYNTH_CB = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _VoiceStruct(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        # Repeated: a priority byte then a NUL-terminated language code; a zero byte ends it.
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


@dataclass(frozen=True, slots=True)
class _EspeakVoice:
    voice: Voice
    identifier: str
    # (priority, code): a lower priority means a better voice for that language.
    languages: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class _Engine:
    """The process's espeak-ng, initialised; every use holds :data:`_LOCK`."""

    lib: ctypes.CDLL
    sample_rate: int
    voices: tuple[_EspeakVoice, ...]
    by_key: dict[str, _EspeakVoice]
    by_language: dict[str, _EspeakVoice]
    callback: Any  # the C callback object: it must outlive the library's use of it
    # One thread: calls are serialised by the lock anyway, so more would only wait on it.
    worker: ThreadPoolExecutor


_engine: _Engine | None = None
# The synthesis in progress, read by the callback; set and cleared under _LOCK.
_current: _Job | None = None
# What espeak-ng is set to now, to skip reloading a voice (and its dictionary) on every call.
_settings: tuple[str, int] | None = None


def _on_audio(wav: Any, count: int, _events: Any) -> int:
    """espeak-ng's synthesis callback: 0 goes on, 1 aborts the synthesis."""
    job = _current
    if job is None or job.cancelled:
        return 1
    try:
        if count > 0 and wav:
            job.deliver(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    except Exception as exc:  # it cannot propagate through C: the job raises it afterwards
        job.failure = exc
        return 1
    return 0


def _load() -> _Engine:
    global _engine
    if _engine is not None:
        return _engine
    with _LOCK:
        if _engine is not None:
            return _engine
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = str(espeakng_loader.get_data_path()).encode()
        except OSError as exc:
            raise EngineUnavailableError(f"espeak-ng could not be loaded: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CB]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data, 0)
        if rate <= 0:
            raise EngineUnavailableError(f"espeak-ng failed to initialise ({rate})")
        callback = _SYNTH_CB(_on_audio)
        lib.espeak_SetSynthCallback(callback)
        voices = _list_voices(lib)
        by_key: dict[str, _EspeakVoice] = {}
        by_language: dict[str, _EspeakVoice] = {}
        best_priority: dict[str, int] = {}
        for v in voices:
            basename = v.identifier.rsplit("/", 1)[-1]
            for key in (v.voice.name, basename, v.identifier, v.voice.id):
                by_key.setdefault(_key(key), v)
            for priority, code in v.languages:
                if priority < best_priority.get(code, 256):
                    best_priority[code] = priority
                    by_language[code] = v
        worker = ThreadPoolExecutor(1, thread_name_prefix="espeak")
        _engine = _Engine(lib, rate, voices, by_key, by_language, callback, worker)
        return _engine


def _list_voices(lib: ctypes.CDLL) -> tuple[_EspeakVoice, ...]:
    table = lib.espeak_ListVoices(None)
    raw: list[tuple[str, str, tuple[tuple[int, str], ...], int]] = []
    i = 0
    while table[i]:
        v = table[i].contents
        codes: list[tuple[int, str]] = []
        at = v.languages
        while at and (priority := ctypes.string_at(at, 1)[0]):
            code = ctypes.string_at(at + 1)
            codes.append((priority, code.decode().lower()))
            at += len(code) + 2
        raw.append((v.name.decode(), v.identifier.decode(), tuple(codes), v.gender))
        i += 1
    primaries = [langs[0][1] if langs else "" for _, _, langs, _ in raw]
    out = []
    for (name, identifier, languages, gender), primary in zip(raw, primaries, strict=True):
        # The voice's own language code ("en-us") is its id where it is unambiguous.
        vid = primary if primary and primaries.count(primary) == 1 else identifier
        voice = Voice(id=vid, name=name, language=primary, gender=_GENDERS.get(gender))
        out.append(_EspeakVoice(voice, identifier, languages))
    return tuple(out)


def _key(text: str) -> str:
    return text.strip().lower().replace("_", "-")


_Item: TypeAlias = PCM16 | BaseException | None


# OpenAI's voice names, so that clients written for it get a distinct espeak voice for each.
OPENAI_VOICES = {
    "alloy": "en-us+f3",
    "ash": "en-us+m3",
    "ballad": "en-gb+m2",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "fable": "en-gb+m4",
    "nova": "en-us+f4",
    "onyx": "en-us+m7",
    "sage": "en-us+f1",
    "shimmer": "en-us+f5",
    "verse": "en-us+m2",
    "marin": "en-us+f4",
    "cedar": "en-us+m6",
}


@functools.cache
def _variants() -> frozenset[str]:
    """espeak-ng's voice variants (``en-us+f3``), from its data folder."""
    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return frozenset(p.name for p in folder.iterdir() if p.is_file())


class _Job:
    """One synthesis: runs on the worker thread, hands chunks to the loop's queue."""

    __slots__ = ("cancelled", "failure", "identifier", "loop", "queue", "rate", "text")

    def __init__(
        self,
        text: str,
        identifier: str,
        rate: int,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[_Item],
    ) -> None:
        self.text = text
        self.identifier = identifier
        self.rate = rate
        self.loop = loop
        self.queue = queue
        # Set from the loop, read by the callback: a plain flag, atomic under the GIL.
        self.cancelled = False
        self.failure: Exception | None = None

    def deliver(self, item: _Item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled = True

    def run(self, engine: _Engine) -> None:
        global _current, _settings
        try:
            with _LOCK:
                if self.cancelled:
                    return
                if _settings != (self.identifier, self.rate):
                    _settings = None
                    if engine.lib.espeak_SetVoiceByName(self.identifier.encode()) != 0:
                        raise EngineError(f"espeak-ng could not load voice {self.identifier!r}")
                    engine.lib.espeak_SetParameter(_RATE, self.rate, 0)
                    _settings = (self.identifier, self.rate)
                text = self.text.encode("utf-8", "replace") + b"\0"
                _current = self
                try:
                    status = engine.lib.espeak_Synth(
                        text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                    )
                finally:
                    _current = None
                if self.failure is not None:
                    raise self.failure
                if status != 0 and not self.cancelled:
                    raise EngineError(f"espeak-ng synthesis failed ({status})")
        except Exception as exc:
            self.deliver(exc)
        finally:
            self.deliver(None)


class EspeakTTS:
    """Text to speech with espeak-ng, 22.05 kHz resampled to the requested rate.

    ``default_voice`` (a voice name, identifier or language code; default ``en-us``) speaks
    when a request names neither a voice nor a language.
    """

    name = "espeak"

    def __init__(self, default_voice: str | None = None) -> None:
        self._engine = _load()
        wanted = default_voice or DEFAULT_VOICE
        found = self._engine.by_key.get(_key(wanted)) or self._engine.by_language.get(_key(wanted))
        if found is None:
            raise ConfigError(
                f"unknown espeak voice {wanted!r}; try one of {self._examples()}",
                param="tts.voice",
            )
        self._default = found

    def voices(self) -> Sequence[Voice]:
        return tuple(v.voice for v in self._engine.voices)

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        """Frames at ``options.sample_rate`` as espeak-ng produces them."""
        voice, variant = self._pick_with_variant(options)
        if not options.speed > 0:
            raise ClientError(f"speed must be positive, got {options.speed}", param="speed")
        if options.sample_rate <= 0:
            raise ClientError(
                f"sample rate must be positive, got {options.sample_rate}", param="sample_rate"
            )
        if not text.strip():
            return
        rate = min(_RATE_MAX, max(_RATE_MIN, round(_RATE_NORMAL * options.speed)))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        job = _Job(text, voice.identifier + variant, rate, loop, queue)
        self._engine.worker.submit(job.run, self._engine)
        resampler = StreamResampler(self._engine.sample_rate, options.sample_rate)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                out = resampler.process(item)
                if len(out):
                    yield Frame(out, options.sample_rate)
            tail = resampler.flush()
            if len(tail):
                yield Frame(tail, options.sample_rate)
        finally:
            # The callback aborts at its next chunk; a job still queued will not start.
            job.cancelled = True

    def _pick_with_variant(self, options: SpeechOptions) -> tuple[_EspeakVoice, str]:
        """The voice and its espeak variant suffix (``+f3``), OpenAI voice names mapped."""
        name = options.voice
        if not name:
            return self._pick(options), ""
        name = OPENAI_VOICES.get(name.lower(), name)
        base, plus, variant = name.partition("+")
        if plus and variant not in _variants():
            raise ClientError(
                f"unknown espeak variant {variant!r} in voice {options.voice!r}; "
                f"try one of {', '.join(sorted(_variants())[:12])}",
                param="voice",
            )
        voice = self._pick(SpeechOptions(voice=base, language=options.language))
        return voice, plus + variant

    def _pick(self, options: SpeechOptions) -> _EspeakVoice:
        engine = self._engine
        if options.voice:
            found = engine.by_key.get(_key(options.voice)) or engine.by_language.get(
                _key(options.voice)
            )
            if found is None:
                raise ClientError(
                    f"unknown voice {options.voice!r}; try one of {self._examples()}",
                    param="voice",
                )
            return found
        if not options.language:
            return self._default
        # The most specific known code: "en-AU" falls back to "en".
        wanted = _key(options.language)
        codes = {code for _, code in self._default.languages}
        while True:
            if wanted in codes:
                return self._default
            found = engine.by_language.get(wanted)
            if found is not None:
                return found
            if "-" not in wanted:
                break
            wanted = wanted.rsplit("-", 1)[0]
        raise ClientError(
            f"no espeak voice speaks {options.language!r}; try one of {self._examples()}",
            param="language",
        )

    def _examples(self) -> str:
        ids = {v.voice.id for v in self._engine.voices}
        common = [c for c in ("en-us", "en-gb", "fr-fr", "de", "es", "it") if c in ids]
        return ", ".join(common) + f" (or any of the {len(ids)} listed voices)"
