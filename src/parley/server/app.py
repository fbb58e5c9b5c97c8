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
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from parley import __version__
from parley.audio.resample import resample
from parley.config import Settings
from parley.engines.base import ContentPart, TextPart
from parley.engines.batching import Scheduler
from parley.engines.instrumented import instrument
from parley.engines.registry import Engines
from parley.errors import (
    ClientError,
    Code,
    ConfigError,
    EngineError,
    NotFoundError,
    ParleyError,
    ProtocolError,
    RateLimitError,
)
from parley.logs import bind, log_context, turn_fields
from parley.pipeline import Pipeline
from parley.pipeline.events import ResponseDone
from parley.pipeline.history import History
from parley.realtime.session import (
    CancelResponse,
    ClearInput,
    ClearOutput,
    Command,
    CommitInput,
    Configure,
    CreateResponse,
    Output,
    PromptResolver,
    PushAudio,
    RealtimeSession,
    TranscribeItem,
    Truncate,
)
from parley.server.auth import (
    INSECURE_KEY_PROTOCOL,
    AuthMiddleware,
    Limiter,
    Principal,
    principal_of,
)
from parley.server.metrics import Metrics
from parley.server.openai_errors import error_response
from parley.server.openapi import openapi_document
from parley.server.rest import rest_routes
from parley.server.tracing import TurnTracer
from parley.store import Database, PromptStore, render
from parley.store.keys import KeyStore

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
    database: Database | None
    # None: auth is off (parley serve --no-auth), every caller is the default tenant.
    keys: KeyStore | None
    limiter: Limiter = field(default_factory=Limiter)
    sessions: set[asyncio.Task[Any]] = field(default_factory=set)
    metrics: Metrics = field(default_factory=Metrics)
    tracer: TurnTracer = field(default_factory=TurnTracer.disabled)

    def prompt_resolver(self, tenant: str) -> PromptResolver | None:
        """Renders the tenant's own prompt templates (a tenant never sees another's)."""
        if self.database is None:
            return None
        store = PromptStore(self.database, tenant)

        def resolve(
            prompt_id: str, version: str | None, variables: dict[str, Any]
        ) -> str | tuple[ContentPart, ...]:
            rendered = render(store.get(prompt_id, version), variables)
            if not rendered.images:
                return rendered.instructions
            return (TextPart(rendered.instructions), *rendered.images)

        return resolve


def _schedulers(engines: Engines) -> list[tuple[str, Scheduler]]:
    """The batch schedulers of the batched engines, with the engine's name."""
    found = []
    for engine in (engines.vad, engines.asr, engines.llm, engines.tts):
        scheduler = getattr(engine, "scheduler", None)
        if isinstance(scheduler, Scheduler):
            found.append((engine.name, scheduler))
    return found


def create_app(
    settings: Settings,
    engines: Engines,
    *,
    database: Database | None = None,
    auth: bool = True,
    metrics: Metrics | None = None,
    tracer: TurnTracer | None = None,
) -> Starlette:
    """The app; with ``auth`` every endpoint but ``/healthz`` needs a key from ``database``."""
    if auth and database is None:
        raise ConfigError("authentication needs the database that holds the keys")
    keys = KeyStore(database) if auth and database is not None else None
    # Observability (issue 4): per-app metrics, traces from OTEL_* env, engines that count calls.
    metrics = Metrics() if metrics is None else metrics
    tracer = TurnTracer.from_env() if tracer is None else tracer
    schedulers = _schedulers(engines)
    for name, scheduler in schedulers:
        scheduler.observe(functools.partial(metrics.batch, name))
    engines = instrument(engines, metrics.engine_call, metrics.engine_error)
    state = AppState(settings, engines, database, keys, metrics=metrics, tracer=tracer)

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
        state.tracer.shutdown()  # observability (issue 4): flush the last traces
        for _, scheduler in schedulers:
            await scheduler.aclose()

    document = openapi_document()

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    async def client_secrets(request: Request) -> JSONResponse:
        return await _client_secret(request, state)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            metrics.route(),  # observability (issue 4): GET /metrics
            Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"]),
            Route("/openapi.json", openapi),
            *rest_routes(settings, engines),
            WebSocketRoute("/v1/realtime", realtime),
            WebSocketRoute("/realtime", realtime),
        ],
        exception_handlers={404: _http_error, 405: _http_error},
        middleware=[
            Middleware(
                AuthMiddleware,
                keys=keys,
                limiter=state.limiter,
                metrics_token=settings.server.metrics_token,
            )
        ],
        lifespan=lifespan,
    )
    app.state.parley = state
    return app


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Unknown paths and wrong methods, in OpenAI's error shape rather than plain text."""
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return error_response(
            ClientError(
                f"{request.method} is not allowed on {request.url.path}",
                code=Code.METHOD_NOT_ALLOWED,
            ),
            status=405,
        )
    return error_response(NotFoundError(f"Unknown path {request.url.path}"))


async def _client_secret(request: Request, state: AppState) -> JSONResponse:
    """``POST /v1/realtime/client_secrets``: an ephemeral key bound to a session config."""
    principal = principal_of(request.scope)
    if state.keys is None or principal.key is None:
        return error_response(
            ClientError(
                "client secrets need authentication (parley serve without "
                "--no-auth) and a standard API key",
                code=Code.AUTH_DISABLED,
            )
        )
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return error_response(ProtocolError("the body is not valid JSON", code=Code.INVALID_JSON))
    if not isinstance(body, dict):
        return error_response(
            ProtocolError("the body must be a JSON object", code=Code.INVALID_JSON)
        )
    expires = body.get("expires_after") or {}
    seconds = expires.get("seconds", 600) if isinstance(expires, dict) else None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return error_response(
            ProtocolError(
                "expires_after.seconds must be an integer",
                param="expires_after.seconds",
                code=Code.INVALID_TYPE,
            )
        )
    config = body.get("session") or {"type": "realtime"}
    kind = config.get("type", "realtime") if isinstance(config, dict) else None
    if kind not in ("realtime", "transcription"):
        return error_response(
            ClientError("session.type must be 'realtime' or 'transcription'", param="session.type")
        )
    # The same validation a session.update gets: a bad config fails now, not at connect time.
    preview = RealtimeSession(state.settings, History(), kind=kind)
    out = preview.receive(json.dumps({"type": "session.update", "session": config}))
    if out.events and out.events[0]["type"] == "error":
        error = out.events[0]["error"]
        param = error.get("param")
        return error_response(
            ClientError(
                error["message"],
                code=error.get("code") or Code.INVALID_VALUE,
                param=f"session.{param.removeprefix('session.')}" if param else None,
            )
        )
    try:
        token, expires_at = state.keys.create_client_secret(principal.key, config, seconds)
    except ParleyError as exc:
        return error_response(exc)
    return JSONResponse({"value": token, "expires_at": int(expires_at), "session": preview.config})


async def _serve_realtime(ws: WebSocket, state: AppState) -> None:
    principal = principal_of(ws.scope)
    if not state.limiter.open_session(principal.key):
        limit = principal.key.limits.max_sessions if principal.key else None
        await ws.send_denial_response(
            error_response(
                RateLimitError(
                    f"Too many concurrent Realtime sessions for this key (limit {limit})."
                )
            )
        )
        return
    state.metrics.session_opened()  # observability (issue 4)
    try:
        await _serve_realtime_session(ws, state, principal)
    finally:
        state.limiter.close_session(principal.key)
        state.metrics.session_closed()  # observability (issue 4)


async def _serve_realtime_session(ws: WebSocket, state: AppState, principal: Principal) -> None:
    offered = list(ws.scope.get("subprotocols", []))
    beta = "realtime=v1" in ws.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
    kind: Literal["realtime", "transcription"] = (
        "transcription" if ws.query_params.get("intent") == "transcription" else "realtime"
    )
    subprotocol = "realtime" if "realtime" in offered else None
    if subprotocol is None and offered:
        # Browsers must offer a subprotocol to carry the key; answer with one they offered.
        subprotocol = next((p for p in offered if not p.startswith(INSECURE_KEY_PROTOCOL)), None)
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
        prompts=state.prompt_resolver(principal.tenant),
        rate_limits=lambda: _rate_limits(state.limiter, principal),
        timeline=ws.query_params.get("parley_timeline") in ("1", "true"),
    )
    if principal.session is not None:
        # An ephemeral key's session configuration is the session's starting point.
        session.receive(json.dumps({"type": "session.update", "session": principal.session}))
    bind(session_id=session.id)  # observability (issue 4): this task's and its children's logs
    outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    connection = _Connection(ws, session, pipeline, engines, outbox, state.metrics, state.tracer)
    try:
        async with pipeline, asyncio.TaskGroup() as tg:
            writer = tg.create_task(connection.write())
            pump = tg.create_task(connection.pump())
            await connection.deliver(session.open())
            limit_s = principal.key.limits.max_session_s if principal.key else None
            try:
                if limit_s is None:
                    await connection.read()
                else:
                    try:
                        async with asyncio.timeout(limit_s):
                            await connection.read()
                    except TimeoutError:
                        outbox.put_nowait(
                            session.error(
                                ClientError(
                                    f"Your session hit the maximum duration of {limit_s} seconds.",
                                    code=Code.SESSION_EXPIRED,
                                )
                            )
                        )
            finally:
                pump.cancel()
                outbox.put_nowait(None)
                await asyncio.wait([writer])
    except Exception:  # a bug in one session must end that session only
        log.exception("realtime session %s failed", session.id)
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps(session.error(EngineError("internal server error"))))
            await ws.close(code=1011)


def _rate_limits(limiter: Limiter, principal: Principal) -> list[dict[str, Any]]:
    remaining, reset = limiter.remaining(principal.key)
    if principal.key is None or remaining is None:
        return []
    return [
        {
            "name": "requests",
            "limit": principal.key.limits.requests_per_minute,
            "remaining": remaining,
            "reset_seconds": round(reset, 3),
        }
    ]


@dataclass
class _Connection:
    ws: WebSocket
    session: RealtimeSession
    pipeline: Pipeline
    engines: Engines
    outbox: asyncio.Queue[dict[str, Any] | None]
    metrics: Metrics
    tracer: TurnTracer

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
            self.metrics.observe(event)  # observability (issue 4): metrics, trace, turn log
            if isinstance(event, ResponseDone):
                self.tracer.record_turn(self.session.id, event.response_id, event)
                with log_context(turn_id=event.turn_id, response_id=event.response_id):
                    log.info("turn done", extra=turn_fields(event))
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
