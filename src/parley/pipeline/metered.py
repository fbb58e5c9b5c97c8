"""The metered engines of one caller: each engine call reserved, run through its chain, settled
and recorded (see :mod:`parley.pipeline.control`, which builds them).

:class:`MeteredLLM` belongs to one response (its plan writes the records before
``response.done``); :class:`MeteredTTS` meters each clause; :class:`MeteredASR` reserves audio
:data:`ASR_RESERVE_S` at a time while it is fed to the recogniser. A call stopped by its caller
(barge-in, a client that left) is recorded as ``cancelled`` with what it had consumed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from typing import TYPE_CHECKING, Any

from parley.audio.frames import Frame
from parley.engines.base import (
    ASR,
    TTS,
    ChatRequest,
    LLMEvent,
    SpeechOptions,
    TextDelta,
    Transcript,
    Usage,
    Voice,
    estimate_tokens,
)
from parley.engines.registry import languages_of
from parley.errors import InsufficientQuotaError
from parley.ledger import Reservation, Units, UsageRecord
from parley.routing.failover import ASRChain, Attempt, LLMChain, TTSChain

if TYPE_CHECKING:
    from parley.pipeline.control import CallerControl, ResponsePlan

__all__ = ["ASR_RESERVE_S", "MeteredASR", "MeteredLLM", "MeteredTTS"]

# ASR audio is reserved this many seconds at a time while it is fed to the recogniser.
ASR_RESERVE_S = 30.0


class MeteredLLM:
    """A response's LLM chain: attempts become records; usage is kept for settling."""

    def __init__(self, plan: ResponsePlan, chain: LLMChain) -> None:
        self.plan = plan
        self.chain = chain
        self.name = chain.name
        self.supports_vision = chain.supports_vision
        self.usage: Usage | None = None

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        plan, control = self.plan, self.plan.control
        text: list[str] = []
        reported: list[Attempt] = []
        started = time.monotonic()

        def report(attempt: Attempt) -> None:
            reported.append(attempt)
            if attempt.outcome == "ok":
                usage = self.usage or Usage(
                    sum(estimate_tokens(m.text) for m in request.messages),
                    estimate_tokens("".join(text)),
                )
                units = Units(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
            else:
                units = Units()
            plan.records.append(control.record(attempt, units, response_id=plan.response_id))

        ended = False  # the chain finished or raised (else: closed or cancelled mid-stream)
        try:
            async with contextlib.aclosing(self.chain.stream(request, report=report)) as events:
                async for event in events:
                    if isinstance(event, Usage):
                        self.usage = event
                    elif isinstance(event, TextDelta):
                        text.append(event.text)
                    yield event
            ended = True
        except Exception:
            ended = True
            raise
        finally:
            if not ended and not any(a.outcome in ("ok", "error") for a in reported):
                # Cancelled (barge-in) mid-stream: the engine that was answering still worked.
                failed = {a.engine for a in reported}
                engine = next((n for n, _ in plan.llm_chain if n not in failed), plan.engine)
                attempt = Attempt(
                    "llm", engine, "ok", 1000.0 * (time.monotonic() - started), None, None
                )
                units = Units(
                    input_tokens=sum(estimate_tokens(m.text) for m in request.messages),
                    output_tokens=estimate_tokens("".join(text)),
                )
                plan.records.append(
                    control.record(
                        attempt, units, response_id=plan.response_id, outcome="cancelled"
                    )
                )


class MeteredTTS:
    """A TTS chain metered per call (a clause): reserve its characters, settle, record."""

    def __init__(
        self,
        control: CallerControl,
        chain: list[tuple[str, Any]],
        response_id: str,
        records: list[UsageRecord],
        *,
        standalone: bool = False,
    ) -> None:
        self.control = control
        self.engines = chain
        plane = control.plane
        self.chain = TTSChain(chain, plane.breaker, first_audio_timeout_s=plane.timeout_for(chain))
        self.name = chain[0][1].name
        self.response_id = response_id
        self.records = records
        self._standalone = standalone  # no response to write its records: each call writes

    def voices(self) -> Sequence[Voice]:
        tts: TTS = self.engines[0][1]
        return tts.voices()

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        control = self.control
        units = Units(characters=len(text))
        hold = control.reserve(control.bound("tts", self.engines, units))
        samples = 0
        rate = options.sample_rate
        new: list[UsageRecord] = []

        def report(attempt: Attempt) -> None:
            ok = attempt.outcome == "ok"
            done = Units(characters=len(text), audio_out_s=samples / rate) if ok else Units()
            new.append(control.record(attempt, done, response_id=self.response_id))

        try:
            async with contextlib.aclosing(
                self.chain.synthesize(text, options, report=report)
            ) as frames:
                async for frame in frames:
                    samples += len(frame)
                    rate = frame.sample_rate
                    yield frame
        finally:
            if not new:  # cancelled mid-clause: the characters were sent to the engine
                name = self.engines[0][0]
                new.append(
                    control.record(
                        Attempt("tts", name, "ok", 0.0, None, None),
                        Units(characters=len(text), audio_out_s=samples / rate),
                        response_id=self.response_id,
                        outcome="cancelled",
                    )
                )
            control.settle(hold, sum(r.cost_nusd for r in new))
            self.records.extend(new)
            if self._standalone:
                control.plane.write(new)


class MeteredASR:
    """An ASR chain metered per call: audio is reserved 30 s at a time as it is fed."""

    def __init__(self, control: CallerControl, chain: list[tuple[str, Any]]) -> None:
        self.control = control
        self.engines = chain
        first: ASR = chain[0][1]
        self.inner = first  # languages_of() looks through wrappers by .inner
        self.name = first.name
        self.sample_rate = first.sample_rate
        self.languages = languages_of(first)
        plane = control.plane
        self.chain = ASRChain(chain, plane.breaker, timeout_s=plane.timeout_for(chain))

    def _bound(self, seconds: float) -> int:
        return self.control.bound("asr", self.engines, Units(audio_in_s=seconds))

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        control = self.control
        holds = [control.reserve(self._bound(ASR_RESERVE_S))]
        fed = 0.0
        refused: InsufficientQuotaError | None = None
        records: list[UsageRecord] = []

        async def metered() -> AsyncGenerator[Frame, None]:
            nonlocal fed, refused
            async for frame in audio:
                if fed + frame.duration_s > ASR_RESERVE_S * len(holds):
                    try:
                        holds.append(control.reserve(self._bound(ASR_RESERVE_S)))
                    except InsufficientQuotaError as exc:
                        refused = exc
                        return
                fed += frame.duration_s
                yield frame

        def report(attempt: Attempt) -> None:
            units = Units(audio_in_s=fed) if attempt.outcome == "ok" else Units()
            records.append(control.record(attempt, units))

        try:
            stream = self.chain.stream(
                metered(), language=language, partials=partials, report=report
            )
            async with contextlib.aclosing(stream) as transcripts:
                async for transcript in transcripts:
                    if transcript.is_final and refused is not None:
                        break
                    yield transcript
        finally:
            self._settle(holds, records, fed)
        if refused is not None:
            raise refused

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        control = self.control
        seconds = audio.duration_s
        holds = [control.reserve(self._bound(seconds))]
        records: list[UsageRecord] = []

        def report(attempt: Attempt) -> None:
            units = Units(audio_in_s=seconds) if attempt.outcome == "ok" else Units()
            records.append(control.record(attempt, units))

        try:
            return await self.chain.transcribe(audio, language=language, report=report)
        finally:
            self._settle(holds, records, seconds)

    def _settle(
        self, holds: list[Reservation | None], records: list[UsageRecord], fed: float
    ) -> None:
        if not records:  # cancelled: the audio fed so far was still heard
            name = self.engines[0][0]
            records.append(
                self.control.record(
                    Attempt("asr", name, "ok", 0.0, None, None),
                    Units(audio_in_s=fed),
                    outcome="cancelled",
                )
            )
        cost = sum(r.cost_nusd for r in records)
        for index, hold in enumerate(holds):
            last = index == len(holds) - 1
            part = cost if last else min(cost, hold.amount_nusd if hold is not None else 0)
            self.control.settle(hold, part)
            cost -= part
        self.control.plane.write(records)
