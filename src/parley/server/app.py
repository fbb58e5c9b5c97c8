"""The ASGI app: ``/healthz`` and the Realtime WebSocket, a thin loop around the sans-I/O session.

One connection = one :class:`~parley.pipeline.Pipeline` + one
:class:`~parley.realtime.session.RealtimeSession` + one ``TaskGroup``: a reader (client messages
-> session -> commands on the pipeline), a pump (pipeline events -> session -> client) and a
writer (the only task that sends, so events keep their order). A failure inside a connection
ends that connection with an error event and a close frame; no other session notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley import __version__
from parley.audio.resample import resample
from parley.config import Settings
from parley.engines.base import ContentPart, TextPart
from parley.engines.registry import Engines
from parley.errors import EngineError, ParleyError
from parley.pipeline import Pipeline
from parley.realtime import wire
from parley.realtime.session import (
    CancelResponse,
    ClearInput,
    ClearOutput,
    Command,
    CommitInput,
    Configure,
    CreateResponse,
    Output,
    PushAudio,
    RealtimeSession,
    TranscribeItem,
    Truncate,
)
from parley.store import Database, PromptStore, render

__all__ = ["AppState", "create_app"]

log = logging.getLogger("parley.server")

# The Realtime API refuses messages over 15 MiB with an error event; the socket accepts more so
# that parley can say so instead of dropping the connection.
WS_MAX_BYTES = 64 * 1024 * 1024
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


@dataclass
class AppState:
    settings: Settings
    engines: Engines
    prompts: PromptStore | None
    sessions: set[asyncio.Task[Any]] = field(default_factory=set)

    def resolve_prompt(
        self, prompt_id: str, version: str | None, variables: dict[str, Any]
    ) -> str | tuple[ContentPart, ...]:
        if self.prompts is None:
            raise wire.ProtocolError(
                "prompt templates are not configured", param="prompt.id", code="invalid_prompt"
            )
        rendered = render(self.prompts.get(prompt_id, version), variables)
        if not rendered.images:
            return rendered.instructions
        parts: tuple[ContentPart, ...] = (TextPart(rendered.instructions), *rendered.images)
        return parts


def create_app(
    settings: Settings, engines: Engines, *, database: Database | None = None
) -> Starlette:
    state = AppState(settings, engines, PromptStore(database) if database else None)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "sessions": len(state.sessions),
                "engines": {k: getattr(engines, k).name for k in ("vad", "asr", "llm", "tts")},
            }
        )

    async def realtime(ws: WebSocket) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.sessions.add(task)
        try:
            await _serve_realtime(ws, state)
        finally:
            state.sessions.discard(task)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn has sent every open WebSocket a close frame by now; let their sessions end.
        if state.sessions:
            await asyncio.wait(set(state.sessions), timeout=5)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            WebSocketRoute("/v1/realtime", realtime),
            WebSocketRoute("/realtime", realtime),
        ],
        lifespan=lifespan,
    )
    app.state.parley = state
    return app


async def _serve_realtime(ws: WebSocket, state: AppState) -> None:
    offered = list(ws.scope.get("subprotocols", []))
    beta = "realtime=v1" in ws.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
    kind: Literal["realtime", "transcription"] = (
        "transcription" if ws.query_params.get("intent") == "transcription" else "realtime"
    )
    subprotocol = "realtime" if "realtime" in offered else None
    await ws.accept(subprotocol=subprotocol)
    engines = state.engines
    pipeline = Pipeline(engines, state.settings, input_rate=24000, output_rate=24000)
    session = RealtimeSession(
        state.settings,
        pipeline.history,
        kind=kind,
        beta=beta,
        model=ws.query_params.get("model") or "parley",
        vision=engines.llm.supports_vision,
        asr_model=engines.asr.name,
        prompts=state.resolve_prompt if state.prompts is not None else None,
        timeline=ws.query_params.get("parley_timeline") in ("1", "true"),
    )
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    connection = _Connection(ws, session, pipeline, engines, outbox)
    try:
        async with pipeline, asyncio.TaskGroup() as tg:
            writer = tg.create_task(connection.write())
            pump = tg.create_task(connection.pump())
            await connection.deliver(session.open())
            try:
                await connection.read()
            finally:
                pump.cancel()
                outbox.put_nowait(None)
                await asyncio.wait([writer])
    except Exception:  # a bug in one session must end that session only
        log.exception("realtime session %s failed", session.id)
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps(session.error(EngineError("internal server error"))))
            await ws.close(code=1011)


@dataclass
class _Connection:
    ws: WebSocket
    session: RealtimeSession
    pipeline: Pipeline
    engines: Engines
    outbox: asyncio.Queue[dict[str, Any] | None]

    async def read(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            raw: str | bytes | None = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            await self.deliver(self.session.receive(raw))

    async def deliver(self, output: Output) -> None:
        """Send the events, then carry out the commands, reporting each one's outcome."""
        for event in output.events:
            self.outbox.put_nowait(event)
        for command in output.commands:
            try:
                result = await self.execute(command)
                follow_up = self.session.command_done(command, result)
            except ParleyError as exc:
                follow_up = self.session.command_failed(command, exc)
            await self.deliver(follow_up)

    async def execute(self, command: Command) -> object:
        pipeline = self.pipeline
        match command:
            case PushAudio(frame=frame):
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
            case CreateResponse(options=options, metadata=metadata):
                response_id = pipeline.start_response(options)
                self.session.response_requested(response_id, metadata)
                return response_id
            case CancelResponse():
                return await pipeline.cancel_response("client_cancelled")
            case ClearOutput():
                await pipeline.interrupt("client_cancelled")
            case Truncate(item_id=item_id, audio_end_ms=ms):
                return pipeline.truncate(item_id, ms)
            case TranscribeItem(frame=frame):
                asr = self.engines.asr
                transcript = await asr.transcribe(resample(frame, asr.sample_rate))
                return transcript.text
            case _:
                assert_never(command)
        return None

    async def pump(self) -> None:
        async for event in self.pipeline.events():
            for out in self.session.pipeline_event(event).events:
                self.outbox.put_nowait(out)

    async def write(self) -> None:
        first_sent: dict[str, int] = {}  # response id -> when its first audio left
        while (event := await self.outbox.get()) is not None:
            kind = event["type"]
            if kind == "parley.turn.timeline":
                emitted = event.pop("_first_audio_out_ns", None)
                sent = first_sent.pop(event["response_id"], None)
                if emitted is not None and sent is not None:
                    event["socket_send_ms"] = (sent - emitted) / 1e6
            encoded = self.session.encode(event)
            if encoded is None:
                continue
            try:
                await self.ws.send_text(json.dumps(encoded, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError):
                return  # the client went away; the reader notices and ends the session
            if kind == "response.output_audio.delta" and self.session.timeline:
                first_sent.setdefault(event["response_id"], time.perf_counter_ns())
