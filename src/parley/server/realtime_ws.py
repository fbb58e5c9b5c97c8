"""A Realtime connection: a thin loop around the sans-I/O session and the pipeline.

One connection = one :class:`~parley.pipeline.Pipeline` + one
:class:`~parley.realtime.session.RealtimeSession` + one ``TaskGroup`` of three tasks, over a
:class:`~parley.transports.wire.Wire` (the client's WebSocket, or a WebRTC call's data channel,
whose reply audio then goes out as RTP through its :class:`~parley.transports.wire.Media`):

- the *reader* moves client messages into the :class:`Inbox` and stops reading while more than
  :data:`MAX_INBOX_BYTES` wait there (TCP then slows a client that sends faster than the
  session can take it);
- the *driver* is the only task that touches the session: it takes the next input (pipeline
  events before client messages, so that the events a command caused are seen before the next
  client event), hands it to the session, queues the server events it produced and carries out
  its commands in order, reporting each outcome back;
- the *writer* is the only task that sends. Its :class:`Outbox` drops queued audio of a
  response that was cancelled or interrupted, and is bounded: a client that stops reading is
  disconnected once :data:`MAX_OUTBOX_BYTES` are waiting for it, with a log line.

More wires may attach to a running session (``/v1/realtime?call_id=``: a server-side
WebSocket beside a WebRTC call): each gets every event through a writer and outbox of its own, and
its client events go to the same session; it leaving ends nothing else.

A session ends when the client leaves, when it expires, when its key is revoked or when the
client stops reading; each of the last three sends an ``error`` event and then a close frame.
A bug inside one connection ends that connection (``server_error``, close 1011); no other
session notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.engines.registry import Engines
from parley.errors import Code, EngineError, ParleyError, SessionClosedError, as_parley_error
from parley.logs import log_context, turn_fields
from parley.pipeline import Pipeline
from parley.pipeline.events import (
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    SpeechStarted,
)
from parley.realtime.commands import (
    CancelResponse,
    ClearInput,
    ClearOutput,
    Command,
    CommitInput,
    Configure,
    PushAudio,
    StartResponse,
    TranscribeItem,
    Truncate,
)
from parley.realtime.items import event as server_event
from parley.realtime.responses import Phase
from parley.realtime.session import Output, RealtimeSession
from parley.server.metrics import Metrics
from parley.server.tracing import TurnTracer
from parley.transports.wire import Media, Wire, WireClosed

__all__ = ["MAX_INBOX_BYTES", "MAX_OUTBOX_BYTES", "Connection", "Inbox", "Outbox"]

log = logging.getLogger("parley.server")

MAX_INBOX_BYTES = 4 * 1024 * 1024
"""Client messages read ahead of the session; beyond this the reader waits."""
MAX_OUTBOX_BYTES = 8 * 1024 * 1024
"""Events queued for a client that is not reading (about two minutes of 24 kHz audio); beyond
this the session is closed."""
_AUDIO_DELTA = "response.output_audio.delta"
_EVENT_COST = 256  # bytes counted for an event besides its audio
_LATER = object()  # a command whose outcome comes back through the inbox


@dataclass(frozen=True, slots=True)
class _Client:
    raw: str | bytes

    @property
    def size(self) -> int:
        return len(self.raw)


@dataclass(frozen=True, slots=True)
class _Audio:
    """Input audio that came apart from the events (RTP)."""

    frame: Frame

    @property
    def size(self) -> int:
        return 2 * len(self.frame)


@dataclass(frozen=True, slots=True)
class _Result:
    command: Command
    result: object = None
    error: ParleyError | None = None


@dataclass(frozen=True, slots=True)
class Ended:
    """The session must end: ``error`` None means the client left."""

    error: ParleyError | None = None
    close_code: int = 1000


@dataclass(frozen=True, slots=True)
class _Event:
    """A server event of the transport's own (``output_audio_buffer.*`` of a WebRTC call)."""

    type: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Dtmf:
    """A telephone keypad press (SIP RFC 4733, Twilio ``dtmf``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class _DtmfPause:
    """The pause after a press is over: reply if nothing else happened (``seq`` still current)."""

    seq: int


_Input = _Client | _Audio | _Result | Ended | _Event | _Dtmf | _DtmfPause | PipelineEvent


class Inbox:
    """The driver's inputs: pipeline events and command results ahead of client messages."""

    def __init__(self, max_client_bytes: int = MAX_INBOX_BYTES) -> None:
        self._urgent: deque[_Input] = deque()
        self._client: deque[_Client | _Audio] = deque()
        self._client_bytes = 0
        self._limit = max_client_bytes
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    def put_event(
        self, item: PipelineEvent | _Result | Ended | _Event | _Dtmf | _DtmfPause
    ) -> None:
        self._urgent.append(item)
        self._ready.set()

    async def put_client(self, raw: str | bytes) -> None:
        await self._put(_Client(raw))

    async def put_audio(self, frame: Frame) -> None:
        await self._put(_Audio(frame))

    async def _put(self, item: _Client | _Audio) -> None:
        while self._client and self._client_bytes + item.size > self._limit:
            self._room.clear()
            await self._room.wait()
        self._client.append(item)
        self._client_bytes += item.size
        self._ready.set()

    async def get(self) -> _Input:
        while True:
            if self._urgent:
                return self._urgent.popleft()
            if self._client:
                item = self._client.popleft()
                self._client_bytes -= item.size
                self._room.set()
                return item
            self._ready.clear()
            await self._ready.wait()


class Outbox:
    """Events waiting to be sent, bounded in bytes; audio of stale responses is dropped."""

    def __init__(self, limit: int = MAX_OUTBOX_BYTES) -> None:
        self._queue: deque[dict[str, Any] | None] = deque()
        self._bytes = 0
        self.limit = limit
        self.peak = 0
        self._ready = asyncio.Event()

    @staticmethod
    def _cost(event: dict[str, Any]) -> int:
        return _EVENT_COST + (len(event["delta"]) if event["type"] == _AUDIO_DELTA else 0)

    def put(self, event: dict[str, Any] | None) -> bool:
        """Queue ``event`` (None: close after the rest); False if the client is over its limit."""
        self._queue.append(event)
        if event is not None:
            self._bytes += self._cost(event)
            self.peak = max(self.peak, self._bytes)
        self._ready.set()
        return self._bytes <= self.limit

    def drop_audio(self, response_id: str) -> None:
        """Forget queued audio of ``response_id``: the listener will not hear it."""
        kept: deque[dict[str, Any] | None] = deque()
        for event in self._queue:
            if (
                event is not None
                and event["type"] == _AUDIO_DELTA
                and event["response_id"] == response_id
            ):
                self._bytes -= self._cost(event)
            else:
                kept.append(event)
        self._queue = kept

    def clear(self) -> None:
        self._queue.clear()
        self._bytes = 0

    async def get(self) -> dict[str, Any] | None:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        event = self._queue.popleft()
        if event is not None:
            self._bytes -= self._cost(event)
        return event


class Connection:
    """One Realtime connection's tasks around its session and pipeline."""

    def __init__(
        self,
        wire: Wire,
        session: RealtimeSession,
        pipeline: Pipeline,
        engines: Engines,
        inbox: Inbox,
        *,
        metrics: Metrics,
        tracer: TurnTracer,
        outbox_bytes: int = MAX_OUTBOX_BYTES,
        media: Media | None = None,
        dtmf_response_s: float = 1.5,
    ) -> None:
        self.wire = wire
        self.dtmf_response_s = dtmf_response_s
        self._dtmf_seq = 0  # a press since, or speech since, makes a pending DTMF reply moot
        self.media = media
        # Wires attached beside the client's (server-side controls), each with its own outbox.
        self._sidebands: dict[Wire, Outbox] = {}
        self.ended = asyncio.Event()
        self.session = session
        self.pipeline = pipeline
        self.engines = engines
        self.inbox = inbox
        self.outbox = Outbox(outbox_bytes)
        self.metrics = metrics
        self.tracer = tracer
        self._overflowed = False
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, watch: Callable[[], asyncio.Future[Ended] | None] | None = None) -> None:
        """Serve until the session ends; then the closing error, if any, and a close frame."""
        ended: Ended
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self.write(self.wire, self.outbox))
                reader = tg.create_task(self.read())
                watcher = watch() if watch is not None else None
                if watcher is not None:
                    watcher.add_done_callback(self._watched)
                try:
                    ended = await self.drive()
                finally:
                    reader.cancel()
                    for outbox in self._sidebands.values():
                        outbox.put(None)
                    if watcher is not None:
                        watcher.cancel()
                    for task in self._background:
                        task.cancel()
                    if self._overflowed:
                        writer.cancel()
                    else:
                        if ended.error is not None:
                            self.outbox.put(self.session.error(ended.error))
                        self.outbox.put(None)
                        # A client that reads slowly still gets what was queued, within reason.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(5):
                                await asyncio.wait([writer])
                        writer.cancel()
        except Exception as exc:  # a bug in one session must end that session only
            log.exception("realtime session %s failed", self.session.id)
            ended = Ended(as_parley_error(exc), 1011)
            with contextlib.suppress(Exception):
                await self.wire.send(
                    json.dumps(self.session.error(EngineError("internal server error")))
                )
        finally:
            self.ended.set()
        if ended.error is None:
            return  # the client left: nothing to send
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.wire.close(ended.close_code, ended.error.code)

    def _watched(self, watcher: asyncio.Future[Ended]) -> None:
        if watcher.cancelled():
            return
        if (exc := watcher.exception()) is not None:
            log.error("realtime session %s: its watch failed: %r", self.session.id, exc)
            return
        self.inbox.put_event(watcher.result())

    # --- the three tasks ---------------------------------------------------------------------

    async def read(self) -> None:
        while (raw := await self.wire.receive()) is not None:
            await self.inbox.put_client(raw)
        self.inbox.put_event(Ended())

    async def attach(self, wire: Wire) -> None:
        """Serve ``wire`` beside the client's until it leaves or the session ends: it gets
        ``session.created`` with the session as it is now, then every event, and its client
        events go to the same session."""
        if self.ended.is_set():
            await wire.close(1000, "session ended")
            return
        outbox = Outbox(self.outbox.limit)
        outbox.put(self.session.created())
        self._sidebands[wire] = outbox
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self.write(wire, outbox))
                reader = tg.create_task(self._read_sideband(wire))
                await asyncio.wait([writer, reader], return_when=asyncio.FIRST_COMPLETED)
                writer.cancel()
                reader.cancel()
        finally:
            self._sidebands.pop(wire, None)
        if self.ended.is_set():
            await wire.close(1000, "session ended")

    async def _read_sideband(self, wire: Wire) -> None:
        while (raw := await wire.receive()) is not None:
            await self.inbox.put_client(raw)

    async def drive(self) -> Ended:
        await self.deliver(self.session.open())
        while True:
            item = await self.inbox.get()
            match item:
                case _Client(raw=raw):
                    out = self.session.receive(raw)
                case _Audio(frame=frame):
                    out = self.session.append_audio(frame)
                case _Event(type=kind, fields=fields):
                    out = Output([server_event(kind, **fields)])
                case _Dtmf(digit=digit):
                    out = self._dtmf(digit)
                case _DtmfPause(seq=seq):
                    out = Output()
                    if seq == self._dtmf_seq and self.session.phase is Phase.IDLE:
                        out = self.session.receive('{"type":"response.create"}')
                case _Result(command=command, result=result, error=error):
                    out = (
                        self.session.command_done(command, result)
                        if error is None
                        else self.session.command_failed(command, error)
                    )
                case Ended():
                    return item
                case _:
                    out = self.session.pipeline_event(self._observe(item))
                    if self.media is not None:
                        out = self._to_media(item, out)
            await self.deliver(out)
            if self._overflowed:
                log.warning(
                    "realtime session %s: client is not reading; %d bytes queued, closing",
                    self.session.id,
                    self.outbox.peak,
                )
                self.outbox.clear()
                return Ended(
                    SessionClosedError(
                        "The client is not reading the server's events: more than "
                        f"{self.outbox.limit} bytes were waiting. Closing the session.",
                        code=Code.SLOW_CONSUMER,
                    ),
                    1008,
                )

    async def write(self, wire: Wire, outbox: Outbox) -> None:
        first_sent: dict[str, int] = {}  # response id -> when its first audio left
        while (event := await outbox.get()) is not None:
            kind = event["type"]
            if kind == "parley.turn.timeline":
                # The event is shared by every wire's outbox: each sends a copy of its own.
                emitted = event.get("_first_audio_out_ns")
                event = {k: v for k, v in event.items() if k != "_first_audio_out_ns"}
                sent = first_sent.pop(event["response_id"], None)
                if emitted is not None and sent is not None:
                    event["socket_send_ms"] = (sent - emitted) / 1e6
            encoded = self.session.encode(event)
            if encoded is None:
                continue
            try:
                await wire.send(json.dumps(encoded, separators=(",", ":")))
            except WireClosed:
                return  # the client went away; the reader notices and ends the session
            if kind == _AUDIO_DELTA and self.session.timeline:
                first_sent.setdefault(event["response_id"], time.perf_counter_ns())

    # --- the driver's work -------------------------------------------------------------------

    def _observe(self, event: PipelineEvent) -> PipelineEvent:
        self.metrics.observe(event)  # observability (issue 4): metrics, trace, turn log
        if isinstance(event, SpeechStarted):
            self._dtmf_seq += 1  # the caller speaks: their turn gets the reply
        if isinstance(event, ResponseDone):
            self.tracer.record_turn(self.session.id, event.response_id, event)
            with log_context(turn_id=event.turn_id, response_id=event.response_id):
                log.info("turn done", extra=turn_fields(event))
        return event

    async def deliver(self, output: Output) -> None:
        """Queue the events, drop stale audio, then carry out the commands in order."""
        for response_id in output.stale:
            self.outbox.drop_audio(response_id)
            if self.media is not None:
                self.media.clear(response_id)
        for event in output.events:
            if not self.outbox.put(event):
                self._overflowed = True
            for wire, outbox in list(self._sidebands.items()):
                if not outbox.put(event):  # a side wire that stops reading is let go alone
                    log.warning("realtime session %s: a side wire is not reading", self.session.id)
                    outbox.clear()
                    outbox.put(None)
                    self._sidebands.pop(wire, None)
        for command in output.commands:
            try:
                result = await self.execute(command)
            except ParleyError as exc:
                follow_up = self.session.command_failed(command, exc)
            else:
                if result is _LATER:
                    continue
                follow_up = self.session.command_done(command, result)
            await self.deliver(follow_up)

    def _to_media(self, event: PipelineEvent, out: Output) -> Output:
        """Reply audio goes out as RTP, not as ``response.output_audio.delta`` events."""
        assert self.media is not None
        if isinstance(event, ResponseAudio):
            kept = [e for e in out.events if e["type"] != _AUDIO_DELTA]
            if len(kept) != len(out.events):  # the session still wants this reply's audio
                self.media.play(event.response_id, event.frame)
                out.events = kept
        elif isinstance(event, ResponseDone):
            self.media.finish(event.response_id)
        elif isinstance(event, PlaybackInterrupted):
            # Here the server knows what was played (RTP sent), so it tells where it cut.
            out.events.append(
                server_event(
                    "conversation.item.truncated",
                    item_id=event.item_id,
                    content_index=0,
                    audio_end_ms=round(event.heard_ms),
                )
            )
        return out

    def dtmf(self, digit: str) -> None:
        """A keypad press: the client is told (``input_audio_buffer.dtmf_event_received``),
        the model sees it as the caller's message, and a press with no speech after it is
        answered once ``dtmf_response_s`` have passed."""
        self.inbox.put_event(_Dtmf(digit))

    def _dtmf(self, digit: str) -> Output:
        # OpenAI's event has no event_id.
        received = {"type": "input_audio_buffer.dtmf_event_received", "event": digit}
        out = Output([{**received, "received_at": int(time.time())}])
        said = {"type": "input_text", "text": f"The caller pressed {digit}."}
        item = {"type": "message", "role": "user", "content": [said]}
        out.extend(
            self.session.receive(json.dumps({"type": "conversation.item.create", "item": item}))
        )
        self._dtmf_seq += 1
        if self.dtmf_response_s > 0:
            seq = self._dtmf_seq
            loop = asyncio.get_running_loop()
            loop.call_later(self.dtmf_response_s, self.inbox.put_event, _DtmfPause(seq))
        return out

    def emit(self, server_event: dict[str, Any]) -> None:
        """An event of the transport's own (``output_audio_buffer.*``) for the client."""
        fields = dict(server_event)
        self.inbox.put_event(_Event(fields.pop("type"), fields))

    async def execute(self, command: Command) -> object:
        pipeline = self.pipeline
        match command:
            case PushAudio(frame=frame):
                self.metrics.audio_in(frame.duration_s)  # observability (issue 4)
                await pipeline.push(frame)
            case CommitInput():
                return pipeline.commit()
            case ClearInput():
                pipeline.clear_input()
            case Configure():
                pipeline.set_input_rate(command.input_rate)
                pipeline.output_rate = command.output_rate
                pipeline.set_turn_detection(command.turn_detection)
                pipeline.response_defaults = command.defaults
                pipeline.instructions = command.instructions
                pipeline.set_transcription(command.language, partials=command.partials)
            case StartResponse():
                return pipeline.start_response(
                    command.options,
                    response_id=command.response_id,
                    item_id=command.item_id,
                    turn_id=command.turn_id,
                )
            case CancelResponse(response_id=rid, reason=reason):
                return await pipeline.cancel_response(reason, rid)
            case ClearOutput():
                await pipeline.interrupt("client_cancelled")
            case Truncate(item_id=item_id, audio_end_ms=ms):
                return pipeline.truncate(item_id, ms)
            case TranscribeItem():
                # Recognising a whole item takes a while: off the driver, reported back.
                task = asyncio.create_task(self._transcribe_item(command))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                return _LATER
            case _:
                assert_never(command)
        return None

    async def _transcribe_item(self, command: TranscribeItem) -> None:
        control = self.pipeline.control  # metered and held to the caller's budget
        asr = control.asr() if control is not None else self.engines.asr
        try:
            transcript = await asr.transcribe(resample(command.frame, asr.sample_rate))
        except Exception as exc:  # reported to the client as an error event
            self.inbox.put_event(_Result(command, error=as_parley_error(exc)))
        else:
            self.inbox.put_event(_Result(command, transcript.text))
