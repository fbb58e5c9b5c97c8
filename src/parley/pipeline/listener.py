"""The listening stage: input audio in, turns and their transcripts out.

:class:`Listener` runs VAD and turn detection on every frame as it arrives and gives each user
turn a recogniser task that streams the turn's audio to the ASR engine (partials while the
caller speaks, a final transcript at the end). It knows nothing of responses: it tells its owner
(:class:`~parley.pipeline.conversation.Pipeline`) through two callbacks when a turn begins (so
that a reply can be interrupted), when it is closed (its audio is committed) and when its
transcript is final.

Memory stays bounded whatever a client sends: a recogniser that falls more than
:data:`MAX_BACKLOG_S` behind the audio, or a new turn while :data:`MAX_TURNS_RECOGNISED` closed
turns are still being recognised, makes :meth:`Listener.push` wait (the transport stops reading,
and a client sending faster than real time is slowed to the recognisers' pace); if they do not
catch up within :data:`BACKLOG_WAIT_S` the audio is refused with a clear error; a turn, or a
manual input buffer, longer than :data:`MAX_TURN_S` is ended there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.audio.frames import PCM16, Frame
from parley.audio.resample import StreamResampler
from parley.config import TurnDetectionSettings
from parley.engines.base import ASR, VAD, Transcript
from parley.engines.smart_turn import EndOfTurn
from parley.errors import BadAudioError, ClientError, Code, EngineError, ParleyError
from parley.ids import new_id
from parley.pipeline.events import (
    InputCommitted,
    PipelineEvent,
    SpeechStarted,
    SpeechStopped,
    StageError,
    TranscriptPartial,
)
from parley.pipeline.timeline import TurnTimeline
from parley.pipeline.turns import TurnDetector

__all__ = [
    "BACKLOG_WAIT_S",
    "EAGERNESS_SILENCE_MS",
    "ENDPOINTING",
    "MAX_BACKLOG_S",
    "MAX_TURNS_RECOGNISED",
    "MAX_TURN_S",
    "Endpointing",
    "Listener",
    "Turn",
]

log = logging.getLogger("parley.pipeline")

# The first part of a pause still goes to the recogniser (soft word endings, its own
# end-of-word decisions); the rest is held back until speech resumes.
ASR_TAIL_MS = 200
MAX_BACKLOG_S = 20.0
"""Audio queued for a turn's recogniser beyond which input waits for it to catch up."""
BACKLOG_WAIT_S = 30.0
"""How long input waits for a recogniser that is behind before the audio is refused."""
MAX_TURN_S = 300.0
"""The longest user turn (or manual input buffer): a turn is ended there."""
MAX_TURNS_RECOGNISED = 1
"""Closed turns still being recognised before input waits (a live caller's last turn is
recognised within a few hundred ms of its end, while the caller waits for the reply)."""


@dataclass(frozen=True, slots=True)
class Endpointing:
    """semantic_vad with an end-of-turn model: ask it once ``ask_after_ms`` of silence have
    passed (again only after the caller speaks again); end the turn if it says the turn is
    complete with at least ``probability``; else the turn ends after ``cap_ms`` of silence."""

    ask_after_ms: int
    probability: float
    cap_ms: int


# By eagerness. Measured on held-out-style clips with pauses (docs/benchmarks.md, "End of
# turn"): asked once at 200 ms with p >= 0.5 and a 1500 ms cap, 42 of 66 mid-thought pauses
# were cut (a 500 ms window cut 63) and the median delay fell from 512 to 382 ms; asking again
# as the silence grows cuts almost as often as a plain window, so the model is asked once.
ENDPOINTING = {
    "low": Endpointing(ask_after_ms=300, probability=0.8, cap_ms=2000),
    "medium": Endpointing(ask_after_ms=200, probability=0.5, cap_ms=1500),
    "auto": Endpointing(ask_after_ms=200, probability=0.5, cap_ms=1500),
    "high": Endpointing(ask_after_ms=100, probability=0.5, cap_ms=800),
}
# Without a model, semantic_vad's eagerness is a silence window: how long to wait before deciding
# the caller has finished (OpenAI: "low" waits longest, "high" answers soonest).
EAGERNESS_SILENCE_MS = {"low": 1200, "medium": 600, "auto": 600, "high": 300}
# The audio an end-of-turn model judges (Smart Turn takes the last 8 s).
_JUDGED_S = 8.0


@dataclass(slots=True, eq=False)
class Turn:
    """One user turn: its audio on the way to the recogniser, and its latency timeline."""

    id: str
    item_id: str
    timeline: TurnTimeline
    audio: asyncio.Queue[PCM16 | None] = field(default_factory=asyncio.Queue)
    samples: int = 0
    queued: int = 0  # samples handed over but not yet taken by the recogniser
    task: asyncio.Task[None] | None = None
    # Set while the recogniser waits for audio with nothing queued: it has caught up.
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    # Set whenever the recogniser takes audio (input waiting on a backlog wakes up).
    took: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, audio: PCM16) -> None:
        self.caught_up.clear()
        self.audio.put_nowait(audio)
        self.samples += len(audio)
        self.queued += len(audio)


TurnBegun = Callable[[Turn], Awaitable[None]]
TurnClosed = Callable[[Turn], None]
TurnHeard = Callable[[Turn, Transcript | None], None]


class Listener:
    """One session's ears. ``spawn`` runs a coroutine in the pipeline's task group."""

    def __init__(
        self,
        vad: VAD,
        asr: ASR,
        *,
        input_rate: int,
        language: str | None,
        emit: Callable[[PipelineEvent], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        on_turn_begun: TurnBegun,
        on_turn_closed: TurnClosed,
        on_turn_heard: TurnHeard,
        turn_detection: TurnDetectionSettings,
        end_of_turn: EndOfTurn | None = None,
    ) -> None:
        self.vad_engine = vad
        self.asr = asr
        self.language = language
        self._emit = emit
        self._spawn = spawn
        self._on_begun = on_turn_begun
        self._on_closed = on_turn_closed
        self._on_heard = on_turn_heard
        self._judge = end_of_turn
        self._endpointing: Endpointing | None = None
        self._recent: deque[PCM16] = deque()  # the open turn's latest audio, for the judge
        self._recent_samples = 0
        self._stretch = 0  # silent stretches of the open turn so far
        self._asked = -1  # the stretch the judge was last asked about
        self.input_rate = input_rate
        self._vad = vad.open_stream()
        self._vad_rs = StreamResampler(input_rate, vad.sample_rate)
        self._asr_rs = StreamResampler(input_rate, asr.sample_rate)
        self._detector = TurnDetector()
        self.turn_detection = turn_detection
        self.set_turn_detection(turn_detection)
        self.input_ms = 0.0
        self._vad_samples = 0
        self._last_voiced_ns = 0
        self._prefix: deque[PCM16] = deque()
        self._held: deque[PCM16] = deque()
        self._prefix_samples = 0
        self._manual: list[PCM16] = []
        self._manual_samples = 0
        self.turn: Turn | None = None
        self.closed: list[Turn] = []
        self.partials: bool = True
        """Whether anyone reads partial transcripts (the client asked for transcription
        deltas): without them a recogniser for which partials cost compute skips them."""

    # --- configuration -----------------------------------------------------------------------

    def set_turn_detection(self, td: TurnDetectionSettings) -> None:
        self.turn_detection = td
        self._detector.threshold = td.threshold
        self._detector.silence_duration_ms = td.silence_duration_ms
        self._endpointing = None
        if td.type == "semantic_vad" and self._judge is not None:
            self._endpointing = ENDPOINTING[td.eagerness]
            self._detector.silence_duration_ms = self._endpointing.cap_ms
        elif td.type == "semantic_vad":
            self._detector.silence_duration_ms = EAGERNESS_SILENCE_MS[td.eagerness]

    def set_input_rate(self, rate: int) -> None:
        if rate != self.input_rate:
            self.input_rate = rate
            self._vad_rs = StreamResampler(rate, self.vad_engine.sample_rate)
            self._asr_rs = StreamResampler(rate, self.asr.sample_rate)

    @property
    def _max_samples(self) -> int:
        return int(MAX_TURN_S * self.asr.sample_rate)

    # --- input -------------------------------------------------------------------------------

    async def push(self, frame: Frame) -> None:
        """Feed input audio; VAD and turn detection run on it before this returns."""
        if frame.sample_rate != self.input_rate:
            raise BadAudioError(
                f"input audio is {frame.sample_rate} Hz, this session expects {self.input_rate} Hz"
            )
        if len(frame) == 0:
            return
        await self._wait_for_recogniser()
        self.input_ms += frame.duration_ms
        asr_audio = self._asr_rs.process(frame.samples)
        if self.turn_detection.type == "none":
            if self._manual_samples + len(asr_audio) > self._max_samples:
                raise ClientError(
                    f"the input audio buffer holds at most {MAX_TURN_S:.0f} s of audio; "
                    "commit or clear it",
                    param="audio",
                    code=Code.INPUT_TOO_LARGE,
                )
            self._manual.append(asr_audio)
            self._manual_samples += len(asr_audio)
            return
        # VAD and ASR usually share a rate (16 kHz): resample once for both.
        vad_audio = (
            asr_audio
            if self._vad_rs.out_rate == self._asr_rs.out_rate
            else self._vad_rs.process(frame.samples)
        )
        vad_frame = Frame(vad_audio, self.vad_engine.sample_rate)
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
                fed = self._feed(asr_audio)
            else:
                # The turn ended in silence: what was held back is that silence; drop it.
                self._held.clear()
                self._end_turn(edge.at_ms)
                fed = True
        if self.turn is not None and self._endpointing is not None:
            self._remember_recent(asr_audio)
            self._maybe_ask(self.turn, self._endpointing)
        if fed:
            return
        if self.turn is None:
            self._remember_prefix(asr_audio)
        elif self._detector.silence_ms > ASR_TAIL_MS:
            # A pause: hold the audio back until speech resumes. If the turn ends instead, the
            # recogniser never decodes its trailing silence (~500 ms of every turn). At the
            # pause's start the recogniser gets a pause mark (an empty frame): it may start
            # decoding the final now, before the turn is known to have ended.
            if not self._held:
                self._feed(np.zeros(0, np.int16))
            self._held.append(asr_audio)
        else:
            while self._held:
                self._feed(self._held.popleft())
            self._feed(asr_audio)
        turn = self.turn
        if turn is not None and turn.samples > self._max_samples:
            self.commit()  # a turn that never ends: recognise what there is, go on

    def _remember_recent(self, audio: PCM16) -> None:
        self._recent.append(audio)
        self._recent_samples += len(audio)
        keep = int(_JUDGED_S * self.asr.sample_rate)
        while self._recent and self._recent_samples - len(self._recent[0]) >= keep:
            self._recent_samples -= len(self._recent.popleft())

    def _maybe_ask(self, turn: Turn, how: Endpointing) -> None:
        """semantic_vad: once per silent stretch, ask the judge whether the turn is over."""
        silence = self._detector.silence_ms
        if silence == 0:
            if self._asked == self._stretch:
                self._stretch += 1  # speech resumed: a later pause is a new question
            return
        if silence < how.ask_after_ms or self._asked == self._stretch:
            return
        self._asked = self._stretch
        audio = Frame(np.concatenate(self._recent), self.asr.sample_rate)
        self._spawn(self._ask(turn, self._stretch, audio, how.probability))

    async def _ask(self, turn: Turn, stretch: int, audio: Frame, probability: float) -> None:
        assert self._judge is not None
        try:
            p = await self._judge.end_of_turn(audio)
        except Exception as exc:  # fail open: the silence cap still ends the turn
            log.warning("end-of-turn model failed, waiting for the silence cap: %s", exc)
            return
        # Still the same turn, still silent since the question, and it sounds finished.
        if self.turn is turn and self._stretch == stretch and p >= probability:
            self._held.clear()
            edge = self._detector.force_stop()
            self._end_turn(edge.at_ms if edge else self.input_ms)

    async def _wait_for_closed_turns(self) -> None:
        """Back-pressure before a new turn: wait while the last turns are still being
        recognised (a client sending far faster than real time would otherwise have a
        recogniser, and its memory, per turn at once)."""
        deadline = time.monotonic() + BACKLOG_WAIT_S
        while True:
            pending = [t.task for t in self.closed if t.task is not None and not t.task.done()]
            left = deadline - time.monotonic()
            if len(pending) < MAX_TURNS_RECOGNISED:
                return
            if left <= 0:
                self._detector.force_stop()  # no turn begins: the speech is refused
                raise ClientError(
                    f"input audio arrives faster than it can be recognised ({len(pending)} "
                    "turns waiting for their transcripts); send audio at real time",
                    param="audio",
                    code=Code.AUDIO_TOO_FAST,
                )
            await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    async def _wait_for_recogniser(self) -> None:
        """Back-pressure: wait while the open turn's recogniser is far behind."""
        turn = self.turn
        limit = int(MAX_BACKLOG_S * self.asr.sample_rate)
        if turn is None or turn.queued <= limit:
            return
        deadline = time.monotonic() + BACKLOG_WAIT_S
        while turn.queued > limit and turn.task is not None and not turn.task.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(
                    f"input audio arrives faster than it can be recognised ("
                    f"{turn.queued / self.asr.sample_rate:.0f} s queued); send audio at real "
                    "time",
                    param="audio",
                    code=Code.AUDIO_TOO_FAST,
                )
            turn.took.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await turn.took.wait()

    def _feed(self, audio: PCM16) -> bool:
        if self.turn is None:
            return False
        self.turn.feed(audio)
        return True

    def _remember_prefix(self, audio: PCM16) -> None:
        self._prefix.append(audio)
        self._prefix_samples += len(audio)
        keep = self.turn_detection.prefix_padding_ms * self.asr.sample_rate // 1000
        while self._prefix and self._prefix_samples - len(self._prefix[0]) >= keep:
            self._prefix_samples -= len(self._prefix.popleft())

    async def _begin_turn(self, audio_start_ms: float) -> None:
        await self._wait_for_closed_turns()
        turn = Turn(new_id("turn"), new_id("item"), TurnTimeline())
        self.turn = turn
        self._recent = deque(self._prefix)
        self._recent_samples = self._prefix_samples
        self._stretch, self._asked = 0, -1
        self._emit(SpeechStarted(turn.id, turn.item_id, audio_start_ms))
        await self._on_begun(turn)
        while self._prefix:
            self._feed(self._prefix.popleft())
        self._prefix_samples = 0
        turn.task = self._spawn(self._recognise(turn))

    def _end_turn(self, audio_end_ms: float) -> None:
        turn = self.turn
        assert turn is not None
        self.turn = None
        turn.timeline.mark("last_voiced", self._last_voiced_ns or None)
        turn.timeline.mark("end_of_turn")
        self._emit(SpeechStopped(turn.id, turn.item_id, audio_end_ms))
        self._close(turn)

    def _close(self, turn: Turn) -> None:
        turn.audio.put_nowait(None)
        if turn.task is None or not turn.task.done():  # its recogniser may have ended early
            self.closed.append(turn)
        self._on_closed(turn)
        audio_ms = 1000.0 * turn.samples / self.asr.sample_rate
        self._emit(InputCommitted(turn.id, turn.item_id, audio_ms))

    def commit(self) -> Turn:
        """End the user's turn now (manual turn taking)."""
        if self.turn is not None:
            turn = self.turn
            self._held.clear()  # trailing silence of the turn
            edge = self._detector.force_stop()
            self._end_turn(edge.at_ms if edge else self.input_ms)
            return turn
        if not self._manual:
            raise ClientError(
                "the input audio buffer is empty", code=Code.INPUT_AUDIO_BUFFER_COMMIT_EMPTY
            )
        turn = Turn(new_id("turn"), new_id("item"), TurnTimeline())
        for chunk in self._manual:
            turn.feed(chunk)
        self._manual.clear()
        self._manual_samples = 0
        turn.timeline.mark("last_voiced")
        turn.timeline.mark("end_of_turn")
        turn.task = self._spawn(self._recognise(turn))
        self._close(turn)
        return turn

    def clear(self) -> None:
        """Drop buffered input that no turn has taken yet."""
        self._manual.clear()
        self._manual_samples = 0
        self._prefix.clear()
        self._held.clear()
        self._prefix_samples = 0

    def close(self) -> None:
        """Give the VAD stream's model back now (streams that can, like Silero's, close)."""
        close = getattr(self._vad, "close", None)
        if callable(close):
            close()

    def tasks(self) -> list[asyncio.Task[None]]:
        """The recognisers still running: of the open turn, and of turns already closed."""
        turns = [*self.closed, *([self.turn] if self.turn else [])]
        return [t.task for t in turns if t.task is not None and not t.task.done()]

    # --- recognition -------------------------------------------------------------------------

    async def _recognise(self, turn: Turn) -> None:
        try:
            final = await self._transcribe(turn)
        except ParleyError as exc:
            self._emit(StageError(turn.id, "asr", exc, turn.item_id))
            self._on_heard(turn, None)
            return
        except Exception as exc:  # an engine bug must not end the session
            error = EngineError(f"recogniser failed: {exc}")
            error.__cause__ = exc
            self._emit(StageError(turn.id, "asr", error, turn.item_id))
            self._on_heard(turn, None)
            return
        finally:
            turn.queued = 0
            turn.took.set()
            if turn in self.closed:
                self.closed.remove(turn)
        turn.timeline.mark("asr_final")
        self._on_heard(turn, final)

    async def _transcribe(self, turn: Turn) -> Transcript | None:
        rate = self.asr.sample_rate

        async def audio() -> AsyncIterator[Frame]:
            # Under load packets queue up while the recogniser works; hand it all of them at
            # once (one executor round trip instead of one per 20 ms packet).
            # A pause mark (an empty chunk) stays a frame of its own, in its place.
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
                turn.queued -= sum(len(c) for c in chunks)
                turn.took.set()
                run: list[PCM16] = []
                for chunk in chunks:
                    if len(chunk):
                        run.append(chunk)
                        continue
                    if run:
                        yield Frame(run[0] if len(run) == 1 else np.concatenate(run), rate)
                        run = []
                    yield Frame(chunk, rate)
                if run:
                    yield Frame(run[0] if len(run) == 1 else np.concatenate(run), rate)
                if ended:
                    return

        final: Transcript | None = None
        stream = self.asr.stream(audio(), language=self.language, partials=self.partials)
        async with contextlib.aclosing(stream) as transcripts:
            async for transcript in transcripts:
                if transcript.is_final:
                    final = transcript
                elif transcript.text:
                    self._emit(TranscriptPartial(turn.id, turn.item_id, transcript.text))
        return final
