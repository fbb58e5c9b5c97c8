"""Failover within the turn: an engine chain answers through its next engine when one fails.

An :class:`LLMChain`, :class:`TTSChain` or :class:`ASRChain` holds an ordered chain of engines
of one kind (each with its instance name from the config) and satisfies that kind's Protocol,
so the pipeline streams from it as from one engine. Each call tries the engines in order until
one answers; the caller still gets its answer in the same turn. A :class:`Breaker`, shared by
all sessions of a process, skips an engine that keeps failing.

Each engine call ends in one :class:`Attempt`, handed to the call's ``report`` (the ledger's):

- ``ok``: the engine's stream ended normally; the breaker counts a success.
- ``failed_over``: the engine failed before it was *committed* and the next engine was tried;
  the breaker counts a failure.
- ``error``: the failure reached the caller (see below).

What fails over, before commitment: any exception but a
:class:`~parley.errors.ClientError` (an :class:`~parley.errors.EngineError` such as an
unreachable endpoint, a 5xx or a dropped stream as the engines surface them, a transport error,
an engine's bug) and no first item within the timeout. A timed-out stream is cancelled and
closed, never left running. A ``ClientError`` never fails over: it is reported ``error``,
leaves the breaker alone (the engine is not at fault) and is raised as it was. Note that
``OpenAILLM`` maps an upstream 4xx to ``EngineError``, so a 401, 404 or 429 from one endpoint
fails over to the next.

Commitment: the LLM is committed by its first event (the first token), TTS by its first frame
with samples, ASR by its final transcript. After that a failure is reported ``error``, counts
against the breaker and is raised to the caller: what was already said cannot be unsaid, and
a second engine would say it again differently. A stall after commitment is the engine's own
timeout's to catch.

Breaker and order: an engine whose breaker is open is skipped while any other may answer; when
every engine that was allowed has failed (or none was), the skipped ones are tried in chain
order anyway: a probe is better than refusing the caller. When all have failed the chain
raises :class:`~parley.errors.EngineUnavailableError` naming each engine and a short reason
(HTTP status, connection error, timeout, exception type: never the engine's own message, which
may quote the user).

Cancellation (barge-in): closing or cancelling a chain's stream closes the engine's stream at
once; it is nobody's failure, so nothing is reported and the breaker is left alone.

ASR: :meth:`ASRChain.stream` keeps the frames it has read from the caller's audio (up to
:data:`MAX_REPLAY_S` of audio) so that an engine failing before its final transcript can be
replaced: the next engine hears the kept frames, then the rest of the live audio. Partials of
the failed engine may already have reached the caller; the next engine's partials start over.
Past :data:`MAX_REPLAY_S` the frames are no longer kept and a failure is reported ``error``.
The ASR timeout does not run while the caller speaks: it bounds the wait for the final
transcript after the audio has ended (``transcribe``: the whole call), so an engine that stops
reading its audio mid-utterance is not caught here. A failure of the caller's audio itself is
no engine's fault: it is reported ``error`` and raised, the breaker untouched. Frames reach an
engine resampled to its ``sample_rate`` when that differs from theirs.

TTS fails over per ``synthesize`` call (one clause), before that clause's first frame.

This module decides nothing about which engines form a chain (that is the policy's) and keeps
no state between calls but the breaker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import Literal, TypeVar

from parley.audio.frames import Frame
from parley.engines.base import (
    ASR,
    LLM,
    TTS,
    ChatRequest,
    EngineHealth,
    LLMEvent,
    SpeechOptions,
    Transcript,
    Voice,
    engine_health,
)
from parley.errors import ClientError, EngineUnavailableError
from parley.routing.replay import AudioTape, Timer

__all__ = [
    "MAX_REPLAY_S",
    "ASRChain",
    "Attempt",
    "Breaker",
    "BreakerState",
    "LLMChain",
    "Outcome",
    "Report",
    "Stage",
    "TTSChain",
]

log = logging.getLogger("parley.routing.failover")

Stage = Literal["asr", "llm", "tts"]
Outcome = Literal["ok", "error", "failed_over"]
BreakerState = Literal["closed", "open", "half_open"]

MAX_REPLAY_S = 60.0
"""How much of a streamed utterance :class:`ASRChain` keeps for a second engine."""

T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One engine call of a chain, reported as it ends."""

    stage: Stage
    engine: str
    outcome: Outcome
    latency_ms: float
    """From the call's start to its end."""
    first_ms: float | None
    """From the call's start to its first token, first audio or first transcript, if any."""
    error: str | None = None
    """A short reason: ``timeout: no first token in 2000 ms``, ``HTTP 503``, ..."""


Report = Callable[[Attempt], None]
"""Takes each :class:`Attempt`; must be cheap and must not raise."""


# --- Breaker ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None  # None: closed
    trial_at: float | None = None  # when the half-open trial was let through


class Breaker:
    """Circuit breakers keyed by engine instance name, shared by all sessions of a process.

    Closed, an engine is allowed; ``failures`` consecutive failures open it. Open, it is not
    allowed until ``open_s`` have passed; then it is half-open and :meth:`allow` lets one trial
    through. The trial's success closes it, its failure opens it again for ``open_s``. A trial
    that never reports (its caller went away) is replaced by another after ``open_s``.
    The state is derived from the clock when asked, so nothing runs in the background.
    """

    def __init__(
        self,
        failures: int = 3,
        open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"breaker failures must be at least 1, got {failures}")
        if open_s < 0:
            raise ValueError(f"breaker open_s must not be negative, got {open_s}")
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def _circuit(self, name: str) -> _Circuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            circuit = self._circuits[name] = _Circuit()
        return circuit

    def _state(self, circuit: _Circuit, now: float) -> BreakerState:
        if circuit.opened_at is None:
            return "closed"
        return "open" if now - circuit.opened_at < self.open_s else "half_open"

    def allow(self, name: str) -> bool:
        """Whether to call ``name`` now; in half-open state, true once per trial."""
        circuit = self._circuit(name)
        now = self._clock()
        match self._state(circuit, now):
            case "closed":
                return True
            case "open":
                return False
            case "half_open":
                if circuit.trial_at is not None and now - circuit.trial_at < self.open_s:
                    return False
                circuit.trial_at = now
                return True

    def success(self, name: str) -> None:
        circuit = self._circuit(name)
        circuit.failures, circuit.opened_at, circuit.trial_at = 0, None, None

    def failure(self, name: str) -> None:
        circuit = self._circuit(name)
        circuit.failures += 1
        if circuit.opened_at is not None or circuit.failures >= self.failures:
            if circuit.opened_at is None:
                log.warning("circuit breaker opened for engine %r", name)
            circuit.opened_at, circuit.trial_at = self._clock(), None

    def state(self, name: str) -> BreakerState:
        circuit = self._circuits.get(name)
        return "closed" if circuit is None else self._state(circuit, self._clock())

    def states(self) -> dict[str, str]:
        """Every engine heard of, by name, and its state (for metrics and ``/healthz``)."""
        now = self._clock()
        return {name: self._state(c, now) for name, c in sorted(self._circuits.items())}


# --- The chain loop --------------------------------------------------------------------------


def _plan(engines: Sequence[tuple[str, E]], breaker: Breaker) -> Iterator[tuple[str, E]]:
    """The engines to try in order: those the breaker allows, then the rest as a last resort.

    Lazy, so that an engine's half-open trial is only taken when the engine is really tried.
    """
    skipped: list[tuple[str, E]] = []
    for name, engine in engines:
        if breaker.allow(name):
            yield name, engine
        else:
            skipped.append((name, engine))
    yield from skipped


def _first_timer(timeout_s: float | None) -> Timer:
    def timer(started: float) -> contextlib.AbstractAsyncContextManager[asyncio.Timeout]:
        return asyncio.timeout_at(None if timeout_s is None else started + timeout_s)

    return timer


@dataclass(frozen=True, slots=True)
class _Rules:
    stage: Stage
    first: Callable[[object], bool]  # counts as the first token/audio/transcript
    commits: Callable[[object], bool]  # after it, no failover
    timeout: str  # what a timeout means, for the reason


async def _run(
    rules: _Rules,
    engines: Sequence[tuple[str, E]],
    breaker: Breaker,
    report: Report | None,
    open_stream: Callable[[E], AsyncGenerator[T, None]],
    timer: Timer,
    can_fail_over: Callable[[], bool] = lambda: True,
    engines_fault: Callable[[Exception], bool] = lambda _: True,
) -> AsyncGenerator[T, None]:
    loop = asyncio.get_running_loop()
    reasons: list[str] = []
    last: Exception | None = None
    for name, engine in _plan(engines, breaker):
        started, t0 = loop.time(), time.monotonic()
        first_ms: float | None = None
        committed = False
        failure: Exception | None = None
        reason = ""
        try:
            stream = open_stream(engine)
        except Exception as exc:
            failure, reason = exc, _reason(exc)
        else:
            async with contextlib.aclosing(stream) as inner:
                while True:
                    timeout: asyncio.Timeout | None = None
                    try:
                        if committed:
                            item = await anext(inner)
                        else:
                            async with timer(started) as timeout:
                                item = await anext(inner)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        failure = exc
                        expired = timeout is not None and timeout.expired()
                        reason = rules.timeout if expired else _reason(exc)
                        break
                    if first_ms is None and rules.first(item):
                        first_ms = 1000 * (time.monotonic() - t0)
                    committed = committed or rules.commits(item)
                    yield item
        latency_ms = 1000 * (time.monotonic() - t0)
        if failure is None:
            breaker.success(name)
            _emit(report, Attempt(rules.stage, name, "ok", latency_ms, first_ms))
            return
        if isinstance(failure, ClientError) or not engines_fault(failure):
            _emit(report, Attempt(rules.stage, name, "error", latency_ms, first_ms, reason))
            raise failure
        breaker.failure(name)
        if committed or not can_fail_over():
            _emit(report, Attempt(rules.stage, name, "error", latency_ms, first_ms, reason))
            raise failure
        _emit(report, Attempt(rules.stage, name, "failed_over", latency_ms, first_ms, reason))
        log.warning("%s engine %r failed (%s); trying the next", rules.stage, name, reason)
        reasons.append(f"{name}: {reason}")
        last = failure
    raise EngineUnavailableError(
        f"every {rules.stage} engine failed: " + "; ".join(reasons)
    ) from last


def _emit(report: Report | None, attempt: Attempt) -> None:
    if report is not None:
        report(attempt)


def _reason(exc: BaseException) -> str:
    """A short reason for a failure that quotes no engine message (it may quote the user)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        status = getattr(e, "status_code", None)
        if status is None:
            status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return f"HTTP {status}"
    for e in chain:
        kind = type(e).__name__
        if isinstance(e, ConnectionError) or kind.endswith(("ConnectError", "ConnectionError")):
            return f"connection error ({type(chain[-1]).__name__})"
        if isinstance(e, TimeoutError) or kind.endswith("Timeout"):
            return f"timed out ({type(chain[-1]).__name__})"
    return type(exc).__name__


def _names(engines: Sequence[tuple[str, object]], kind: str) -> str:
    if not engines:
        raise ValueError(f"an {kind} chain needs at least one engine")
    return "|".join(name for name, _ in engines)


def _health(engines: Sequence[tuple[str, object]], breaker: Breaker) -> EngineHealth:
    """``ok`` while every engine is; ``down`` when none can serve; else ``degraded``."""
    bad: list[str] = []
    down = 0
    for name, engine in engines:
        health = engine_health(engine)
        state = breaker.state(name)
        if health.status == "down" or state == "open":
            down += 1
        if health.status != "ok" or state != "closed":
            bad.append(f"{name}: {health.status if health.status != 'ok' else state}")
    if not bad:
        return EngineHealth("ok")
    return EngineHealth("down" if down == len(engines) else "degraded", "; ".join(bad))


# --- LLM -------------------------------------------------------------------------------------


class LLMChain:
    """An LLM that answers through the first engine of its chain that can."""

    def __init__(
        self,
        engines: Sequence[tuple[str, LLM]],
        breaker: Breaker,
        *,
        first_token_timeout_s: float | None,
    ) -> None:
        self.name = _names(engines, "LLM")
        self.engines = tuple(engines)
        self.breaker = breaker
        self.supports_vision = all(engine.supports_vision for _, engine in engines)
        self._timer = _first_timer(first_token_timeout_s)
        self._rules = _Rules(
            "llm",
            first=lambda _: True,
            commits=lambda _: True,
            timeout=f"timeout: no first token in {_ms(first_token_timeout_s)} ms",
        )

    def health(self) -> EngineHealth:
        return _health(self.engines, self.breaker)

    def stream(
        self, request: ChatRequest, *, report: Report | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        return _run(
            self._rules,
            self.engines,
            self.breaker,
            report,
            lambda engine: engine.stream(request),
            self._timer,
        )


# --- TTS -------------------------------------------------------------------------------------


def _has_audio(item: object) -> bool:
    return isinstance(item, Frame) and len(item) > 0


class TTSChain:
    """A TTS that speaks each clause through the first engine of its chain that can."""

    def __init__(
        self,
        engines: Sequence[tuple[str, TTS]],
        breaker: Breaker,
        *,
        first_audio_timeout_s: float | None,
    ) -> None:
        self.name = _names(engines, "TTS")
        self.engines = tuple(engines)
        self.breaker = breaker
        self._timer = _first_timer(first_audio_timeout_s)
        self._rules = _Rules(
            "tts",
            first=_has_audio,
            commits=_has_audio,
            timeout=f"timeout: no first audio in {_ms(first_audio_timeout_s)} ms",
        )

    def health(self) -> EngineHealth:
        return _health(self.engines, self.breaker)

    def voices(self) -> Sequence[Voice]:
        return self.engines[0][1].voices()

    def synthesize(
        self, text: str, options: SpeechOptions, *, report: Report | None = None
    ) -> AsyncGenerator[Frame, None]:
        return _run(
            self._rules,
            self.engines,
            self.breaker,
            report,
            lambda engine: engine.synthesize(text, options),
            self._timer,
        )


# --- ASR -------------------------------------------------------------------------------------


def _is_final(item: object) -> bool:
    return isinstance(item, Transcript) and item.is_final


class ASRChain:
    """An ASR that recognises through the first engine of its chain that can."""

    def __init__(
        self,
        engines: Sequence[tuple[str, ASR]],
        breaker: Breaker,
        *,
        timeout_s: float | None,
        max_replay_s: float = MAX_REPLAY_S,
    ) -> None:
        self.name = _names(engines, "ASR")
        self.engines = tuple(engines)
        self.breaker = breaker
        self.sample_rate = engines[0][1].sample_rate
        self._timeout_s = timeout_s
        self._max_replay_s = max_replay_s
        ms = _ms(timeout_s)
        self._stream_rules = _Rules(
            "asr",
            first=lambda _: True,
            commits=_is_final,
            timeout=f"timeout: no final transcript {ms} ms after the audio ended",
        )
        self._call_rules = _Rules(
            "asr",
            first=lambda _: True,
            commits=lambda _: True,
            timeout=f"timeout: no transcript in {ms} ms",
        )

    def health(self) -> EngineHealth:
        return _health(self.engines, self.breaker)

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
        report: Report | None = None,
    ) -> AsyncGenerator[Transcript, None]:
        tape = AudioTape(audio, self._max_replay_s)

        def open_stream(engine: ASR) -> AsyncGenerator[Transcript, None]:
            return _heard(engine, tape, language=language, partials=partials)

        try:
            async with contextlib.aclosing(
                _run(
                    self._stream_rules,
                    self.engines,
                    self.breaker,
                    report,
                    open_stream,
                    tape.timer(self._timeout_s),
                    lambda: tape.complete,
                    lambda _: tape.source_error is None,
                )
            ) as transcripts:
                async for transcript in transcripts:
                    yield transcript
        finally:
            tape.close()

    async def transcribe(
        self, audio: Frame, *, language: str | None = None, report: Report | None = None
    ) -> Transcript:
        async def once(engine: ASR) -> AsyncGenerator[Transcript, None]:
            yield await engine.transcribe(audio, language=language)

        result: Transcript | None = None
        async with contextlib.aclosing(
            _run(
                self._call_rules,
                self.engines,
                self.breaker,
                report,
                once,
                _first_timer(self._timeout_s),
            )
        ) as results:
            async for transcript in results:
                result = transcript
        assert result is not None  # _run returns only after an engine answered
        return result


async def _heard(
    engine: ASR, tape: AudioTape, *, language: str | None, partials: bool
) -> AsyncGenerator[Transcript, None]:
    """``engine``'s transcripts of the tape.

    The player is not closed here: an engine that read it from a task of its own may still be
    inside it (closing a running generator raises); a later player makes it end instead.
    """
    audio = tape.play(engine.sample_rate)
    async with contextlib.aclosing(
        engine.stream(audio, language=language, partials=partials)
    ) as inner:
        async for transcript in inner:
            yield transcript


def _ms(seconds: float | None) -> str:
    return "no limit" if seconds is None else f"{round(1000 * seconds)}"
