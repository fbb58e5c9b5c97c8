"""The speaking stage: one response at a time, LLM -> clause segmenter -> TTS, and its playout.

:class:`Responder` runs a response as a task: the LLM's text is cut into clauses while it is
still being written and each clause is spoken (:func:`parley.pipeline.speech.speak`) as soon
as it is complete; both run in a task group of their own, so cancelling the response stops
both within one chunk. It keeps what was spoken, clause by clause, so that what a listener
heard can be mapped back to text (barge-in, ``conversation.item.truncate``).

Guarantee: every response that :meth:`Responder.start` accepts ends with exactly one
:class:`~parley.pipeline.events.ResponseDone`, however it ends: completed, failed, cancelled
while running, or cancelled before its task ever ran (a task cancelled before its first step
never enters its coroutine, so the ``finally`` of the coroutine cannot be relied on for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, assert_never

from parley.audio.frames import Frame
from parley.engines.base import (
    LLM,
    TTS,
    ChatRequest,
    Finish,
    Message,
    SpeechOptions,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from parley.errors import ClientError, Code, EngineError, ParleyError
from parley.ids import new_id
from parley.pipeline.control import CallerControl, ResponsePlan, texts_of
from parley.pipeline.events import (
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseStatus,
    ResponseTextDelta,
    ResponseToolCall,
)
from parley.pipeline.history import History
from parley.pipeline.options import ResponseOptions
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.speech import Spoken, speak
from parley.pipeline.timeline import TurnTimeline
from parley.trust.marks import Marker

__all__ = ["Responder", "Response"]

_RECENT_RESPONSES = 32


@dataclass(slots=True, eq=False)
class Response:
    id: str
    item_id: str
    turn_id: str | None
    options: ResponseOptions
    timeline: TurnTimeline
    output_rate: int = 24000
    text: str = ""
    usage: Usage | None = None
    finish: str | None = None
    cancel_reason: str | None = None
    audio_samples: int = 0
    # Each clause spoken with its first and end sample, to map heard audio to text.
    spoken: list[Spoken] = field(default_factory=list)
    # Input-clock position when its first audio went out: playback starts there.
    playback_start_ms: float | None = None
    first_audio_s: float | None = None  # time.monotonic() of its first audio
    done: bool = False
    task: asyncio.Task[None] | None = None
    # The control plane's engines, reservations and usage records for it (None: no control).
    plan: ResponsePlan | None = None
    # The watermark payload id its audio carries (None: not watermarked).
    mark: int | None = None

    def heard_text(self, heard_ms: float) -> str:
        """The reply text spoken within the first ``heard_ms`` of its audio."""
        if not self.options.audio:
            return self.text
        heard = int(heard_ms * self.output_rate / 1000)
        words: list[str] = []
        for clause in self.spoken:
            if heard >= clause.end:
                words.append(clause.clause)
            elif heard > clause.start:
                parts = clause.clause.split()
                n = int(len(parts) * (heard - clause.start) / max(clause.end - clause.start, 1))
                words.extend(parts[:n])
                break
            else:
                break
        return " ".join(words)

    @property
    def audio_ms(self) -> float:
        return 1000.0 * self.audio_samples / self.output_rate


class Responder:
    """Runs one session's responses. ``clock`` reads the input clock (ms of input heard)."""

    def __init__(
        self,
        llm: LLM,
        tts: TTS,
        history: History,
        *,
        emit: Callable[[PipelineEvent], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        clock: Callable[[], float],
        lead_ms: float = 0.0,
        control: CallerControl | None = None,
        marker: Marker | None = None,
        custom_voice: Callable[[str], TTS] | None = None,
        playout: Callable[[str], float | None] | None = None,
    ) -> None:
        self.llm = llm
        # response id -> ms of its audio played out, where the transport knows (RTP); else the
        # time since its first audio stands for it.
        self.playout = playout
        # voice_... -> the TTS speaking that custom voice (raises when it is gone or unspeakable)
        self.custom_voice = custom_voice
        self.control = control
        # Watermarks every response's audio with a payload of its own (trust.watermark).
        self.marker = marker
        # Later clauses are synthesised only while the audio already sent is less than this
        # far ahead of real-time playback (0: as fast as the engine goes).
        self.lead_ms = lead_ms
        self.tts = tts
        self.history = history
        self._emit = emit
        self._spawn = spawn
        self._clock = clock
        self.current: Response | None = None
        self.playback: Response | None = None
        # Recent responses by item id, so a client can truncate what it played of any of them.
        self._recent: dict[str, Response] = {}
        self.stale: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def start(
        self,
        options: ResponseOptions,
        *,
        response_id: str | None = None,
        item_id: str | None = None,
        turn_id: str | None = None,
        timeline: TurnTimeline | None = None,
        output_rate: int = 24000,
    ) -> Response:
        """Start a reply to the conversation so far."""
        if self.current is not None:
            raise ClientError(
                "a response is already in progress",
                code=Code.CONVERSATION_ALREADY_HAS_ACTIVE_RESPONSE,
            )
        prompt = self.history.prompt(options.instructions)
        request = ChatRequest(
            prompt,
            tools=options.tools,
            tool_choice=options.tool_choice,
            max_tokens=options.max_output_tokens,
            temperature=options.temperature,
        )
        response_id = response_id or new_id("resp")
        plan = None
        if self.control is not None:  # route and reserve: over budget, no response starts
            plan = self.control.plan(request, texts_of(self.history.items), response_id=response_id)
        timeline = timeline or TurnTimeline()
        if "asr_final" not in timeline.marks:
            timeline.mark("end_of_turn")
            timeline.mark("asr_final")
        resp = Response(
            response_id,
            item_id or new_id("item"),
            turn_id,
            options,
            timeline,
            output_rate=output_rate,
            plan=plan,
        )
        self._recent[resp.item_id] = resp
        while len(self._recent) > _RECENT_RESPONSES:
            del self._recent[next(iter(self._recent))]
        self.history.add(Message("assistant", ""), item_id=resp.item_id)
        self.current = resp
        self.idle.clear()
        self._emit(ResponseStarted(resp.id, resp.item_id, turn_id, options.audio))
        resp.task = self._spawn(self._respond(resp, request))
        # A task cancelled before its first step never runs its coroutine: end it here then.
        resp.task.add_done_callback(lambda _: self._finish(resp, "cancelled", None, None))
        return resp

    async def cancel(
        self, reason: str = "client_cancelled", response_id: str | None = None
    ) -> bool:
        """Stop the current response's generation now (only if it is ``response_id``, when
        given); True if one was running. Its ResponseDone has been emitted when this returns."""
        resp = self.current
        if resp is None or resp.task is None:
            return False
        if response_id is not None and resp.id != response_id:
            return False
        resp.cancel_reason = reason
        resp.task.cancel()
        await asyncio.wait([resp.task])
        self._finish(resp, "cancelled", resp.cancel_reason, None)
        return True

    async def interrupt(self, reason: str = "turn_detected") -> None:
        """The listener stopped listening: cancel generation and cut playback where it is."""
        playing = self.playback
        await self.cancel(reason)
        if playing is None or playing.playback_start_ms is None:
            return
        audio_ms = playing.audio_ms
        heard_ms = self._heard_ms(playing)
        self.playback = None
        if heard_ms >= audio_ms and playing.done:
            return  # it had finished playing
        self.stale.add(playing.id)
        self.truncate(playing.item_id, heard_ms, response=playing)
        self._emit(
            PlaybackInterrupted(
                playing.id, playing.item_id, heard_ms, audio_ms, playing.heard_text(heard_ms)
            )
        )

    def truncate(
        self, item_id: str, audio_end_ms: float, *, response: Response | None = None
    ) -> str:
        """Cut an assistant item's text to what was spoken within ``audio_end_ms``."""
        resp = response or self._recent.get(item_id)
        if resp is None:
            item = self.history.get(item_id)
            if item is None:
                raise ClientError(
                    f"no item with id {item_id!r}", param="item_id", code=Code.ITEM_NOT_FOUND
                )
            return item.message.text
        text = resp.heard_text(audio_end_ms)
        if self.history.get(item_id) is not None:
            self.history.replace_text(item_id, text)
        return text

    async def _respond(self, resp: Response, request: ChatRequest) -> None:
        status: ResponseStatus = "completed"
        error: ParleyError | None = None
        try:
            clauses: asyncio.Queue[str | None] = asyncio.Queue()
            async with asyncio.TaskGroup() as tg:
                if resp.options.audio:
                    tg.create_task(self._speak(resp, clauses))
                await self._generate(resp, request, clauses)
        except asyncio.CancelledError:
            self._finish(resp, "cancelled", resp.cancel_reason or "client_cancelled", None)
            raise
        except Exception as exc:  # an engine failure (or bug) ends this response, not the session
            status, error = "failed", _first_error(exc)
        if resp.finish == "length":
            status = "incomplete"
        self._finish(resp, status, "max_output_tokens" if status == "incomplete" else None, error)

    def _finish(
        self, resp: Response, status: ResponseStatus, reason: str | None, error: ParleyError | None
    ) -> None:
        if resp.done:
            return
        resp.done = True
        if self.current is resp:
            self.current = None
            self.idle.set()
        if status == "cancelled":
            self.stale.add(resp.id)
            reason = reason or resp.cancel_reason or "client_cancelled"
        heard = resp.text if status != "cancelled" else resp.heard_text(self._heard_ms(resp))
        if resp.text or resp.audio_samples:
            # The item stays even if nothing was heard: the client was shown it and may still
            # refer to it. An empty message never reaches the model (History.prompt skips it).
            if self.history.get(resp.item_id) is not None:
                self.history.replace_text(resp.item_id, heard)
        else:
            self.history.delete(resp.item_id)  # nothing was said: no empty item lingers
        cost_usd = None
        if resp.plan is not None:  # settled, in the ledger and audited before response.done
            records = resp.plan.close(status=status, mark=resp.mark)
            if resp.plan.control.plane.prices:  # what it cost, where prices are set
                cost_usd = sum(r.cost_nusd for r in records) / 1e9
        self._emit(
            ResponseDone(
                resp.id,
                resp.item_id,
                resp.turn_id,
                status,
                reason,
                resp.text,
                resp.audio_ms,
                resp.usage,
                resp.timeline,
                error,
                cost_usd,
            )
        )

    def _heard_ms(self, resp: Response) -> float:
        """How much of ``resp``'s audio the listener has been played."""
        played = self.playout(resp.id) if self.playout is not None else None
        if played is None:
            start = resp.playback_start_ms
            played = 0.0 if start is None else self._clock() - start
        return min(max(played, 0.0), resp.audio_ms)

    async def _generate(
        self, resp: Response, request: ChatRequest, clauses: asyncio.Queue[str | None]
    ) -> None:
        segmenter = ClauseSegmenter()
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        try:
            llm = resp.plan.llm if resp.plan is not None else self.llm
            async with contextlib.aclosing(llm.stream(request)) as stream:
                async for event in stream:
                    match event:
                        case TextDelta(text=text):
                            resp.timeline.mark("llm_first_token")
                            resp.text += text
                            self._emit(ResponseTextDelta(resp.id, resp.item_id, text))
                            if resp.options.audio:
                                for clause in segmenter.push(text):
                                    clauses.put_nowait(clause)
                        case ToolCallDelta(index=index):
                            resp.timeline.mark("llm_first_token")
                            call = calls.setdefault(index, ["", "", ""])
                            call[0] = event.id or call[0]
                            call[1] = event.name or call[1]
                            call[2] += event.arguments
                        case Usage():
                            resp.usage = event
                        case Finish(reason=reason):
                            resp.finish = reason
                        case _:
                            assert_never(event)
        finally:
            rest = segmenter.flush()
            if rest and resp.options.audio:
                clauses.put_nowait(rest)
            clauses.put_nowait(None)
        for index in sorted(calls):
            call_id, name, arguments = calls[index]
            call_id = call_id or new_id("call")
            item = self.history.add(
                Message("assistant", tool_calls=(ToolCall(call_id, name, arguments),))
            )
            self._emit(ResponseToolCall(resp.id, item.id, call_id, name, arguments))

    async def _speak(self, resp: Response, clauses: asyncio.Queue[str | None]) -> None:
        async def queued() -> AsyncIterator[str]:
            while (clause := await clauses.get()) is not None:
                await self._pace(resp)
                yield clause

        options = SpeechOptions(
            voice=resp.options.voice,
            speed=resp.options.speed or 1.0,
            sample_rate=resp.output_rate,
            stream=resp.id,
        )
        tts = resp.plan.tts if resp.plan is not None else self.tts
        voice = resp.options.voice or ""
        if voice.startswith("voice_") and self.custom_voice is not None:
            cloned = self.custom_voice(voice)  # looked up per reply: a withdrawn consent stops it
            tts = resp.plan.metered_tts(cloned) if resp.plan is not None else cloned
        embedder = None
        if self.marker is not None:  # the mark is embedded chunk by chunk, one chunk late
            resp.mark, embedder = self.marker.embedder(resp.id, resp.output_rate)
        async with contextlib.aclosing(speak(tts, queued(), options)) as audio:
            async for out in audio:
                if isinstance(out, Spoken):
                    resp.spoken.append(out)
                    continue
                resp.timeline.mark("tts_first_audio")
                self._audio(resp, embedder.process(out) if embedder is not None else out)
        if embedder is not None:
            self._audio(resp, embedder.flush())

    def _audio(self, resp: Response, out: Frame) -> None:
        if not len(out):
            return
        if resp.playback_start_ms is None:
            resp.timeline.mark("first_audio_out")
            resp.playback_start_ms = self._clock()
            resp.first_audio_s = time.monotonic()
            self.playback = resp
        resp.audio_samples += len(out)
        self._emit(ResponseAudio(resp.id, resp.item_id, out))

    async def _pace(self, resp: Response) -> None:
        """Wait while ``resp``'s audio is more than ``lead_ms`` ahead of its playback (counted
        in wall time from its first audio): a clause the caller will not hear for seconds must
        not take the CPU from another caller's first clause or final transcript."""
        if self.lead_ms <= 0 or resp.first_audio_s is None:
            return
        played_ms = 1000.0 * (time.monotonic() - resp.first_audio_s)
        ahead_ms = resp.audio_ms - played_ms
        if ahead_ms > self.lead_ms:
            await asyncio.sleep((ahead_ms - self.lead_ms) / 1000.0)


def _first_error(exc: BaseException) -> ParleyError:
    """The error to report for a failed response: the first ParleyError inside any groups."""
    if isinstance(exc, ParleyError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        inner = next((e for e in exc.exceptions if isinstance(e, ParleyError)), None)
        return _first_error(inner or exc.exceptions[0])
    error = EngineError(f"response failed: {exc}")
    error.__cause__ = exc
    return error
