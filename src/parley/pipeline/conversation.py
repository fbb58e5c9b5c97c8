"""The conversation engine: input audio in, turn, transcript and reply events out.

:class:`Pipeline` orchestrates one session's cascade from two stages that are each tested alone:
the :class:`~parley.pipeline.listener.Listener` (VAD, turn detection, a streaming recogniser per
user turn) and the :class:`~parley.pipeline.responder.Responder` (LLM -> clause segmenter ->
TTS, playout, what was heard). The pipeline owns one ``TaskGroup`` in which every turn's
recogniser and every response run, the conversation's :class:`~parley.pipeline.history.History`,
and the glue between the stages: a new turn interrupts the reply (barge-in), a committed turn
gets its user item, a final transcript is written into it and (with ``auto_respond``) answered.

``auto_respond`` is for callers that drive the pipeline alone (``parley call``, benchmarks). A
protocol session that decides itself when to respond (the Realtime session) turns it off and
calls :meth:`Pipeline.start_response` with ids of its own.

Time: positions in the conversation (``audio_start_ms``, playback, what was heard) are measured
on the *input clock*, the milliseconds of input audio received. A client streams input in real
time, so the input clock is the listener's clock; a recording fed faster than real time keeps
the same semantics. Latency is measured separately, on each turn's monotonic timeline.

The pipeline never touches sockets or files and knows nothing of wire events. Its events go to
``sink`` when one is given (synchronously, in order), else to :meth:`Pipeline.events`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

from parley.audio.frames import Frame
from parley.config import Settings, TurnDetectionSettings
from parley.engines.base import TTS, ChatRequest, ContentPart, Message, Transcript
from parley.engines.registry import Engines
from parley.errors import ParleyError
from parley.pipeline.control import Caller, ControlPlane, texts_of
from parley.pipeline.events import PipelineEvent, ResponseAudio, TranscriptFinal
from parley.pipeline.history import History
from parley.pipeline.listener import Listener, Turn
from parley.pipeline.options import ResponseOptions
from parley.pipeline.responder import Responder
from parley.pipeline.timeline import TurnTimeline
from parley.trust.marks import Marker

__all__ = ["Pipeline", "ResponseOptions"]

# Timelines of recent turns, so that a response started for a turn carries on its clock.
_RECENT_TURNS = 16


class Pipeline:
    """One session's cascade. Use as ``async with Pipeline(engines, settings) as p:``."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        *,
        input_rate: int = 16000,
        output_rate: int | None = None,
        auto_respond: bool = True,
        sink: Callable[[PipelineEvent], None] | None = None,
        control: ControlPlane | None = None,
        caller: Caller | None = None,
        marker: Marker | None = None,
        custom_voice: Callable[[str], TTS] | None = None,
        playout: Callable[[str], float | None] | None = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.output_rate = output_rate or settings.pipeline.output_sample_rate
        self.auto_respond = auto_respond
        self.history = History(settings.pipeline.history_tokens)
        self.instructions: str | tuple[ContentPart, ...] = settings.pipeline.instructions
        self.response_defaults = ResponseOptions(
            voice=settings.tts.voice,
            speed=settings.tts.speed,
            max_output_tokens=settings.llm.max_output_tokens,
            temperature=settings.llm.temperature,
        )
        self._events: asyncio.Queue[PipelineEvent | None] = asyncio.Queue()
        self._sink = sink
        self._tg: asyncio.TaskGroup | None = None
        self._timelines: dict[str, TurnTimeline] = {}
        self._answers: set[asyncio.Task[None]] = set()  # turns waiting for a reply to end
        # The control plane (routing, failover, metering, budgets) for this caller, if any.
        self.control = (
            control.for_caller(caller or Caller(), warn=self._emit) if control is not None else None
        )
        self.listener = Listener(
            engines.vad,
            self.control.asr() if self.control is not None else engines.asr,
            input_rate=input_rate,
            language=settings.asr.language,
            emit=self._emit,
            spawn=self._spawn,
            on_turn_begun=self._turn_begun,
            on_turn_closed=self._turn_closed,
            on_turn_heard=self._turn_heard,
            turn_detection=settings.turn_detection,
            end_of_turn=engines.turn,
        )
        self.responder = Responder(
            engines.llm,
            engines.tts,
            self.history,
            emit=self._emit,
            spawn=self._spawn,
            clock=lambda: self.listener.input_ms,
            lead_ms=settings.pipeline.tts_lead_ms,
            control=self.control,
            marker=marker,
            custom_voice=custom_voice,
            playout=playout,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Pipeline:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        if self.responder.current is not None:
            await self.responder.cancel("client_cancelled")
        for task in self.listener.tasks():
            task.cancel()
        await self._tg.__aexit__(None, None, None)
        self.listener.close()
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[PipelineEvent]:
        """Events in order until the pipeline closes; audio of stale responses is dropped."""
        while (event := await self._events.get()) is not None:
            if isinstance(event, ResponseAudio) and event.response_id in self.responder.stale:
                continue
            yield event

    def _emit(self, event: PipelineEvent) -> None:
        if self._sink is not None:
            self._sink(event)
        else:
            self._events.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._tg is None:
            coro.close()
            raise RuntimeError("Pipeline must be used as 'async with Pipeline(...)'")
        return self._tg.create_task(coro)

    # --- configuration -----------------------------------------------------------------------

    @property
    def turn_detection(self) -> TurnDetectionSettings:
        return self.listener.turn_detection

    def set_turn_detection(self, td: TurnDetectionSettings) -> None:
        self.listener.set_turn_detection(td)

    def set_transcription(self, language: str | None, *, partials: bool) -> None:
        """Transcribe turns in ``language`` (None: the server's ``asr.language``); decode
        partial transcripts only when ``partials`` (someone reads them)."""
        self.listener.language = language or self.settings.asr.language
        self.listener.partials = partials
        if self.control is not None:
            self.control.language = self.listener.language

    def set_input_rate(self, rate: int) -> None:
        """Input audio comes at ``rate`` from now on (the client changed its audio format)."""
        self.listener.set_input_rate(rate)

    @property
    def input_rate(self) -> int:
        return self.listener.input_rate

    @property
    def input_ms(self) -> float:
        """The input clock: milliseconds of input audio received so far."""
        return self.listener.input_ms

    # --- input -------------------------------------------------------------------------------

    async def push(self, frame: Frame) -> None:
        """Feed input audio; VAD and turn detection run on it before this returns."""
        await self.listener.push(frame)

    def commit(self) -> str:
        """End the user's turn now (manual turn taking); returns the turn id."""
        return self.listener.commit().id

    def clear_input(self) -> None:
        """Drop buffered input that no turn has taken yet."""
        self.listener.clear()

    async def end_of_input(self) -> None:
        """The input ended: close any open turn, then wait for its reply."""
        if self.listener.turn is not None:
            self.commit()
        await self.settle()

    async def settle(self) -> None:
        """Wait until the work on audio pushed so far is done: an open turn's recogniser has
        caught up, closed turns are recognised and their responses generated.

        A caller feeding a recording faster than real time settles after each push so that
        the pipeline behaves as on a live line with an infinitely fast clock.
        """
        turn = self.listener.turn
        if turn is not None and turn.task is not None and not turn.task.done():
            caught_up = asyncio.ensure_future(turn.caught_up.wait())
            await asyncio.wait([caught_up, turn.task], return_when=asyncio.FIRST_COMPLETED)
            caught_up.cancel()
        while True:
            pending = [
                t.task for t in self.listener.closed if t.task is not None and not t.task.done()
            ]
            pending += self._answers
            current = self.responder.current
            if current is not None and current.task is not None:
                pending.append(current.task)
            if not pending:
                return
            await asyncio.wait(pending)

    # --- the glue between the stages ---------------------------------------------------------

    async def _turn_begun(self, turn: Turn) -> None:
        if self.turn_detection.interrupt_response:
            await self.responder.interrupt("turn_detected")

    def _turn_closed(self, turn: Turn) -> None:
        # The user's item takes its place in the conversation when the turn is committed; its
        # text arrives with the transcript.
        self.history.add(Message("user", ""), item_id=turn.item_id)
        self._timelines[turn.id] = turn.timeline
        while len(self._timelines) > _RECENT_TURNS:
            del self._timelines[next(iter(self._timelines))]

    def _turn_heard(self, turn: Turn, final: Transcript | None) -> None:
        if final is None:  # recognition failed; a StageError said so
            return
        text = final.text.strip()
        if self.history.get(turn.item_id) is not None:
            self.history.replace_text(turn.item_id, text)
        self._emit(TranscriptFinal(turn.id, turn.item_id, text, final.words))
        if not (self.auto_respond and self.turn_detection.create_response and text):
            return
        if self.responder.current is None:
            self.start_response(turn_id=turn.id)
        else:
            self._answers.add(self._spawn(self._answer(turn)))

    async def _answer(self, turn: Turn) -> None:
        # With interrupt_response off a reply may still be running: let it finish first.
        try:
            while self.responder.current is not None:
                await self.responder.idle.wait()
            self.start_response(turn_id=turn.id)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._answers.discard(task)

    # --- responses ---------------------------------------------------------------------------

    def start_response(
        self,
        options: ResponseOptions | None = None,
        *,
        response_id: str | None = None,
        item_id: str | None = None,
        turn_id: str | None = None,
    ) -> str:
        """Start a reply to the conversation so far; returns its response id."""
        resp = self.responder.start(
            self._merge(options),
            response_id=response_id,
            item_id=item_id,
            turn_id=turn_id,
            timeline=self._timelines.pop(turn_id, None) if turn_id else None,
            output_rate=self.output_rate,
        )
        return resp.id

    def admit(self) -> ParleyError | None:
        """Why a reply to the conversation so far may not start (a spent hard budget), or None:
        asked before a response is announced, so that a refused one is never created."""
        if self.control is None:
            return None
        options = self._merge(None)
        request = ChatRequest(
            self.history.prompt(options.instructions), max_tokens=options.max_output_tokens
        )
        return self.control.refusal(request, texts_of(self.history.items))

    def _merge(self, options: ResponseOptions | None) -> ResponseOptions:
        base = self.response_defaults
        if options is None:
            return replace(base, instructions=self.instructions)
        return replace(
            options,
            instructions=self.instructions
            if options.instructions is None
            else options.instructions,
            voice=options.voice or base.voice,
            speed=options.speed or base.speed,
            max_output_tokens=options.max_output_tokens or base.max_output_tokens,
            temperature=base.temperature if options.temperature is None else options.temperature,
        )

    async def cancel_response(
        self, reason: str = "client_cancelled", response_id: str | None = None
    ) -> bool:
        """Stop the current response's generation now; True if one was running."""
        return await self.responder.cancel(reason, response_id)

    async def interrupt(self, reason: str = "turn_detected") -> None:
        """The listener stopped listening: cancel generation and cut playback where it is."""
        await self.responder.interrupt(reason)

    def truncate(self, item_id: str, audio_end_ms: float) -> str:
        """Cut an assistant item's text to what was spoken within ``audio_end_ms``."""
        return self.responder.truncate(item_id, audio_end_ms)
