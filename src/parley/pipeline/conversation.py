"""The conversation engine: input audio in, turn, transcript and reply events out.

:class:`Pipeline` runs the cascade for one session: VAD and turn detection on every frame as it
arrives, streaming ASR while the user speaks, then a response in which the LLM's text is cut into
clauses and spoken by TTS while the LLM is still writing. It owns one ``TaskGroup``; each user
turn's recogniser and each response run as tasks in it, and a response's LLM and TTS run in a
task group of their own so that cancelling the response stops both within one chunk.

Time: positions in the conversation (``audio_start_ms``, playback, what was heard) are measured
on the *input clock*, the milliseconds of input audio received. A client streams input in real
time, so the input clock is the listener's clock; a recording fed faster than real time keeps
the same semantics. Latency is measured separately, on each turn's monotonic timeline.

The pipeline never touches sockets or files and knows nothing of wire events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import assert_never

import numpy as np

from parley.audio.frames import PCM16, Frame
from parley.audio.resample import StreamResampler
from parley.config import Settings, TurnDetectionSettings
from parley.engines.base import (
    ChatRequest,
    ContentPart,
    Finish,
    Message,
    SpeechOptions,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Transcript,
    Usage,
)
from parley.engines.registry import Engines
from parley.errors import BadAudioError, ClientError, Code, EngineError, ParleyError
from parley.ids import new_id
from parley.pipeline.events import (
    InputCommitted,
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseStatus,
    ResponseTextDelta,
    ResponseToolCall,
    SpeechStarted,
    SpeechStopped,
    StageError,
    TranscriptFinal,
    TranscriptPartial,
)
from parley.pipeline.history import History
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.timeline import TurnTimeline
from parley.pipeline.turns import TurnDetector

__all__ = ["Pipeline", "ResponseOptions"]

_RECENT_RESPONSES = 32
# The first part of a pause still goes to the recogniser (soft word endings, its own
# end-of-word decisions); the rest is held back until speech resumes.
ASR_TAIL_MS = 200


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """How to answer; ``None`` fields fall back to the pipeline's settings."""

    # Text, or parts (text and images) when a prompt template carries images.
    instructions: str | tuple[ContentPart, ...] | None = None
    audio: bool = True
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"
    max_output_tokens: int | None = None
    temperature: float | None = None
    voice: str | None = None
    speed: float | None = None


@dataclass(slots=True, eq=False)
class _Turn:
    id: str
    item_id: str
    audio: asyncio.Queue[PCM16 | None]
    timeline: TurnTimeline
    samples: int = 0
    task: asyncio.Task[None] | None = None
    # Set while the recogniser waits for audio with nothing queued: it has caught up.
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True, eq=False)
class _Response:
    id: str
    item_id: str
    turn_id: str | None
    options: ResponseOptions
    timeline: TurnTimeline
    text: str = ""
    usage: Usage | None = None
    finish: str | None = None
    cancel_reason: str | None = None
    output_rate: int = 24000
    audio_samples: int = 0
    # (clause, first sample, end sample) of each clause spoken, to map heard audio to text.
    spoken: list[tuple[str, int, int]] = field(default_factory=list)
    # Input-clock position when its first audio went out: playback starts there.
    playback_start_ms: float | None = None
    done: bool = False
    task: asyncio.Task[None] | None = None


class Pipeline:
    """One session's cascade. Use as ``async with Pipeline(engines, settings) as p:``."""

    def __init__(
        self,
        engines: Engines,
        settings: Settings,
        *,
        input_rate: int = 16000,
        output_rate: int | None = None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.input_rate = input_rate
        self.output_rate = output_rate or settings.pipeline.output_sample_rate
        self.history = History(settings.pipeline.history_tokens)
        self.instructions: str | tuple[ContentPart, ...] = settings.pipeline.instructions
        self.response_defaults = ResponseOptions(
            voice=settings.tts.voice,
            speed=settings.tts.speed,
            max_output_tokens=settings.llm.max_output_tokens,
            temperature=settings.llm.temperature,
        )
        self._events: asyncio.Queue[PipelineEvent | None] = asyncio.Queue()
        self._vad = engines.vad.open_stream()
        self._vad_rs = StreamResampler(input_rate, engines.vad.sample_rate)
        self._asr_rs = StreamResampler(input_rate, engines.asr.sample_rate)
        self._detector = TurnDetector()
        self.turn_detection = settings.turn_detection
        self.set_turn_detection(settings.turn_detection)
        self._input_ms = 0.0
        self._vad_samples = 0
        self._last_voiced_ns = 0
        self._prefix: deque[PCM16] = deque()
        self._held: deque[PCM16] = deque()
        self._prefix_samples = 0
        self._manual: list[PCM16] = []
        self._turn: _Turn | None = None
        self._closed_turns: list[_Turn] = []
        self._response: _Response | None = None
        self._playback: _Response | None = None
        # Recent responses by item id, so a client can truncate what it played of any of them.
        self._recent: dict[str, _Response] = {}
        self._stale: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Pipeline:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None
        if self._response is not None:
            await self.cancel_response("client_cancelled")
        for turn in [*self._closed_turns, *([self._turn] if self._turn else [])]:
            if turn.task is not None:
                turn.task.cancel()
        await self._tg.__aexit__(None, None, None)
        self._events.put_nowait(None)

    async def events(self) -> AsyncIterator[PipelineEvent]:
        """Events in order until the pipeline closes; audio of stale responses is dropped."""
        while (event := await self._events.get()) is not None:
            if isinstance(event, ResponseAudio) and event.response_id in self._stale:
                continue
            yield event

    def _emit(self, event: PipelineEvent) -> None:
        self._events.put_nowait(event)

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        if self._tg is None:
            raise RuntimeError("Pipeline must be used as 'async with Pipeline(...)'")
        return self._tg.create_task(coro)  # type: ignore[arg-type]

    # --- configuration -----------------------------------------------------------------------

    def set_turn_detection(self, td: TurnDetectionSettings) -> None:
        self.turn_detection = td
        self._detector.threshold = td.threshold
        self._detector.silence_duration_ms = td.silence_duration_ms

    def set_input_rate(self, rate: int) -> None:
        """Input audio comes at ``rate`` from now on (the client changed its audio format)."""
        if rate != self.input_rate:
            self.input_rate = rate
            self._vad_rs = StreamResampler(rate, self.engines.vad.sample_rate)
            self._asr_rs = StreamResampler(rate, self.engines.asr.sample_rate)

    @property
    def input_ms(self) -> float:
        """The input clock: milliseconds of input audio received so far."""
        return self._input_ms

    # --- input -------------------------------------------------------------------------------

    async def push(self, frame: Frame) -> None:
        """Feed input audio; VAD and turn detection run on it before this returns."""
        if frame.sample_rate != self.input_rate:
            raise BadAudioError(
                f"input audio is {frame.sample_rate} Hz, this session expects {self.input_rate} Hz"
            )
        if len(frame) == 0:
            return
        self._input_ms += frame.duration_ms
        asr_audio = self._asr_rs.process(frame.samples)
        if self.turn_detection.type == "none":
            self._manual.append(asr_audio)
            return
        # VAD and ASR usually share a rate (16 kHz): resample once for both.
        vad_audio = (
            asr_audio
            if self._vad_rs.out_rate == self._asr_rs.out_rate
            else self._vad_rs.process(frame.samples)
        )
        vad_frame = Frame(vad_audio, self.engines.vad.sample_rate)
        window = self._vad.window_samples
        fed = False
        for probability in await self._vad.probabilities(vad_frame):
            start = 1000.0 * self._vad_samples / vad_frame.sample_rate
            self._vad_samples += window
            end = 1000.0 * self._vad_samples / vad_frame.sample_rate
            if probability >= self._detector.low_threshold:
                self._last_voiced_ns = time.perf_counter_ns()
            edge = self._detector.feed(probability, start, end)
            if edge is None:
                continue
            if edge.started:
                await self._begin_turn(edge.at_ms)
                fed = self._feed_turn(asr_audio)
            else:
                # The turn ended in silence: what was held back is that silence; drop it.
                self._held.clear()
                self._end_turn(edge.at_ms)
                fed = True
        if fed:
            return
        if self._turn is None:
            self._remember_prefix(asr_audio)
        elif self._detector.silence_ms > ASR_TAIL_MS:
            # A pause: hold the audio back until speech resumes. If the turn ends instead, the
            # recogniser never decodes its trailing silence (~500 ms of every turn).
            self._held.append(asr_audio)
        else:
            while self._held:
                self._feed_turn(self._held.popleft())
            self._feed_turn(asr_audio)

    def _feed_turn(self, audio: PCM16) -> bool:
        if self._turn is None:
            return False
        self._feed_turn_to(self._turn, audio)
        return True

    def _remember_prefix(self, audio: PCM16) -> None:
        self._prefix.append(audio)
        self._prefix_samples += len(audio)
        keep = self.turn_detection.prefix_padding_ms * self.engines.asr.sample_rate // 1000
        while self._prefix and self._prefix_samples - len(self._prefix[0]) >= keep:
            self._prefix_samples -= len(self._prefix.popleft())

    async def _begin_turn(self, audio_start_ms: float) -> None:
        turn = _Turn(new_id("turn"), new_id("item"), asyncio.Queue(), TurnTimeline())
        self._turn = turn
        self._emit(SpeechStarted(turn.id, turn.item_id, audio_start_ms))
        if self.turn_detection.interrupt_response:
            await self.interrupt("turn_detected")
        while self._prefix:
            self._feed_turn(self._prefix.popleft())
        self._prefix_samples = 0
        turn.task = self._spawn(self._recognise(turn))

    def _end_turn(self, audio_end_ms: float) -> None:
        turn = self._turn
        assert turn is not None
        self._turn = None
        turn.timeline.mark("last_voiced", self._last_voiced_ns or None)
        turn.timeline.mark("end_of_turn")
        self._emit(SpeechStopped(turn.id, turn.item_id, audio_end_ms))
        self._close_turn(turn)

    def _close_turn(self, turn: _Turn) -> None:
        turn.audio.put_nowait(None)
        self._closed_turns.append(turn)
        audio_ms = 1000.0 * turn.samples / self.engines.asr.sample_rate
        self._emit(InputCommitted(turn.id, turn.item_id, audio_ms))

    def commit(self) -> str:
        """End the user's turn now (manual turn taking); returns the turn id."""
        if self._turn is not None:
            turn = self._turn
            self._held.clear()  # trailing silence of the turn
            edge = self._detector.force_stop()
            self._end_turn(edge.at_ms if edge else self.input_ms)
            return turn.id
        if not self._manual:
            raise ClientError(
                "the input audio buffer is empty", code=Code.INPUT_AUDIO_BUFFER_COMMIT_EMPTY
            )
        turn = _Turn(new_id("turn"), new_id("item"), asyncio.Queue(), TurnTimeline())
        for chunk in self._manual:
            self._feed_turn_to(turn, chunk)
        self._manual.clear()
        turn.timeline.mark("last_voiced")
        turn.timeline.mark("end_of_turn")
        turn.task = self._spawn(self._recognise(turn))
        self._close_turn(turn)
        return turn.id

    @staticmethod
    def _feed_turn_to(turn: _Turn, audio: PCM16) -> None:
        turn.caught_up.clear()
        turn.audio.put_nowait(audio)
        turn.samples += len(audio)

    def clear_input(self) -> None:
        """Drop buffered input that no turn has taken yet."""
        self._manual.clear()
        self._prefix.clear()
        self._held.clear()
        self._prefix_samples = 0

    async def end_of_input(self) -> None:
        """The input ended: close any open turn, then wait for its reply."""
        if self._turn is not None:
            self.commit()
        await self.settle()

    async def settle(self) -> None:
        """Wait until the work on audio pushed so far is done: an open turn's recogniser has
        caught up, closed turns are recognised and their responses generated.

        A caller feeding a recording faster than real time settles after each push so that
        the pipeline behaves as on a live line with an infinitely fast clock.
        """
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            caught_up = asyncio.ensure_future(turn.caught_up.wait())
            await asyncio.wait([caught_up, turn.task], return_when=asyncio.FIRST_COMPLETED)
            caught_up.cancel()
        while True:
            pending = [t.task for t in self._closed_turns if t.task is not None]
            if self._response is not None and self._response.task is not None:
                pending.append(self._response.task)
            if not pending:
                return
            await asyncio.wait(pending)

    # --- recognition -------------------------------------------------------------------------

    async def _recognise(self, turn: _Turn) -> None:
        try:
            await self._transcribe_turn(turn)
        finally:
            if turn in self._closed_turns:
                self._closed_turns.remove(turn)

    async def _transcribe_turn(self, turn: _Turn) -> None:
        rate = self.engines.asr.sample_rate

        async def audio() -> AsyncIterator[Frame]:
            # Under load packets queue up while the recogniser works; hand it all of them at
            # once (one executor round trip instead of one per 20 ms packet).
            while True:
                if turn.audio.empty():
                    turn.caught_up.set()
                chunk = await turn.audio.get()
                if chunk is None:
                    return
                chunks = [chunk]
                ended = False
                while not turn.audio.empty():
                    more = turn.audio.get_nowait()
                    if more is None:
                        ended = True
                        break
                    chunks.append(more)
                yield Frame(chunks[0] if len(chunks) == 1 else np.concatenate(chunks), rate)
                if ended:
                    return

        final: Transcript | None = None
        try:
            stream = self.engines.asr.stream(audio(), language=self.settings.asr.language)
            async with contextlib.aclosing(stream) as transcripts:
                async for transcript in transcripts:
                    if transcript.is_final:
                        final = transcript
                    elif transcript.text:
                        self._emit(TranscriptPartial(turn.id, turn.item_id, transcript.text))
        except ParleyError as exc:
            self._emit(StageError(turn.id, "asr", exc))
            return
        except Exception as exc:  # an engine bug must not end the session
            self._emit(StageError(turn.id, "asr", EngineError(f"recogniser failed: {exc}")))
            return
        turn.timeline.mark("asr_final")
        text = final.text.strip() if final else ""
        self.history.add(Message("user", text), item_id=turn.item_id)
        self._emit(TranscriptFinal(turn.id, turn.item_id, text, final.words if final else ()))
        if self.turn_detection.create_response and text:
            # With interrupt_response off a reply may still be running: let it finish first.
            while self._response is not None and self._response.task is not None:
                await asyncio.wait([self._response.task])
            self.start_response(turn_id=turn.id, timeline=turn.timeline)

    # --- responses ---------------------------------------------------------------------------

    def start_response(
        self,
        options: ResponseOptions | None = None,
        *,
        turn_id: str | None = None,
        timeline: TurnTimeline | None = None,
    ) -> str:
        """Start a reply to the conversation so far; returns its response id."""
        if self._response is not None:
            raise ClientError(
                "a response is already in progress",
                code=Code.CONVERSATION_ALREADY_HAS_ACTIVE_RESPONSE,
            )
        opts = self._merge(options)
        prompt = self.history.prompt(opts.instructions)
        timeline = timeline or TurnTimeline()
        if "asr_final" not in timeline.marks:
            timeline.mark("end_of_turn")
            timeline.mark("asr_final")
        resp = _Response(
            new_id("resp"), new_id("item"), turn_id, opts, timeline, output_rate=self.output_rate
        )
        self._recent[resp.item_id] = resp
        while len(self._recent) > _RECENT_RESPONSES:
            del self._recent[next(iter(self._recent))]
        self.history.add(Message("assistant", ""), item_id=resp.item_id)
        self._response = resp
        self._emit(ResponseStarted(resp.id, resp.item_id, turn_id, opts.audio))
        request = ChatRequest(
            prompt,
            tools=opts.tools,
            tool_choice=opts.tool_choice,
            max_tokens=opts.max_output_tokens,
            temperature=opts.temperature,
        )
        resp.task = self._spawn(self._respond(resp, request))
        return resp.id

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

    async def cancel_response(self, reason: str = "client_cancelled") -> str | None:
        """Stop the current response's generation now; returns its id, if there was one."""
        resp = self._response
        if resp is None or resp.task is None:
            return None
        resp.cancel_reason = reason
        resp.task.cancel()
        await asyncio.wait([resp.task])
        return resp.id

    async def interrupt(self, reason: str = "turn_detected") -> None:
        """The listener stopped listening: cancel generation and cut playback where it is."""
        playing = self._playback
        await self.cancel_response(reason)
        if playing is None or playing.playback_start_ms is None:
            return
        audio_ms = 1000.0 * playing.audio_samples / playing.output_rate
        heard_ms = min(max(self.input_ms - playing.playback_start_ms, 0.0), audio_ms)
        self._playback = None
        if heard_ms >= audio_ms and playing.done:
            return  # it had finished playing
        self._stale.add(playing.id)
        self.truncate(playing.item_id, heard_ms, response=playing)
        self._emit(
            PlaybackInterrupted(
                playing.id, playing.item_id, heard_ms, audio_ms, self._heard_text(playing, heard_ms)
            )
        )

    def truncate(
        self, item_id: str, audio_end_ms: float, *, response: _Response | None = None
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
        text = self._heard_text(resp, audio_end_ms)
        if self.history.get(item_id) is not None:
            self.history.replace_text(item_id, text)
        return text

    def _heard_text(self, resp: _Response, heard_ms: float) -> str:
        if not resp.options.audio:
            return resp.text
        heard = int(heard_ms * resp.output_rate / 1000)
        words: list[str] = []
        for clause, start, end in resp.spoken:
            if heard >= end:
                words.append(clause)
            elif heard > start:
                parts = clause.split()
                n = int(len(parts) * (heard - start) / max(end - start, 1))
                words.extend(parts[:n])
                break
            else:
                break
        return " ".join(words)

    async def _respond(self, resp: _Response, request: ChatRequest) -> None:
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
        self, resp: _Response, status: ResponseStatus, reason: str | None, error: ParleyError | None
    ) -> None:
        resp.done = True
        if self._response is resp:
            self._response = None
        if status == "cancelled":
            self._stale.add(resp.id)
        heard = (
            resp.text
            if status != "cancelled"
            else self._heard_text(resp, self.input_ms - (resp.playback_start_ms or self.input_ms))
        )
        # The item stays even if nothing was heard: the client may still refer to it. An empty
        # message never reaches the model (History.prompt skips it).
        if self.history.get(resp.item_id) is not None:
            self.history.replace_text(resp.item_id, heard)
        self._emit(
            ResponseDone(
                resp.id,
                resp.item_id,
                resp.turn_id,
                status,
                reason,
                resp.text,
                1000.0 * resp.audio_samples / resp.output_rate,
                resp.usage,
                resp.timeline,
                error,
            )
        )

    async def _generate(
        self, resp: _Response, request: ChatRequest, clauses: asyncio.Queue[str | None]
    ) -> None:
        segmenter = ClauseSegmenter()
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        try:
            async with contextlib.aclosing(self.engines.llm.stream(request)) as stream:
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

    async def _speak(self, resp: _Response, clauses: asyncio.Queue[str | None]) -> None:
        opts = SpeechOptions(
            voice=resp.options.voice,
            speed=resp.options.speed or 1.0,
            sample_rate=resp.output_rate,
        )
        while (clause := await clauses.get()) is not None:
            start = resp.audio_samples
            opts = replace(opts, stream=resp.id, continuation=start > 0)
            async with contextlib.aclosing(self.engines.tts.synthesize(clause, opts)) as audio:
                async for frame in audio:
                    if len(frame) == 0:
                        continue
                    resp.timeline.mark("tts_first_audio")
                    if resp.playback_start_ms is None:
                        resp.timeline.mark("first_audio_out")
                        resp.playback_start_ms = self.input_ms
                        self._playback = resp
                    resp.audio_samples += len(frame)
                    self._emit(ResponseAudio(resp.id, resp.item_id, frame))
            resp.spoken.append((clause, start, resp.audio_samples))


def _first_error(exc: BaseException) -> ParleyError:
    """The error to report for a failed response: the first ParleyError inside any groups."""
    if isinstance(exc, ParleyError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        inner = next((e for e in exc.exceptions if isinstance(e, ParleyError)), None)
        return _first_error(inner or exc.exceptions[0])
    return EngineError(f"response failed: {exc}")
