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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from parley import __version__
from parley.config import Settings
from parley.engines.base import TTS, ContentPart, TextPart, engine_health
from parley.engines.batching import Scheduler
from parley.engines.instrumented import instrument, instrument_engine
from parley.engines.registry import Engines, languages_of
from parley.errors import (
    ClientError,
    Code,
    ConfigError,
    NotFoundError,
    ParleyError,
    ProtocolError,
    RateLimitError,
    SessionClosedError,
)
from parley.ledger import Budgets, Ledger
from parley.logs import bind
from parley.pipeline import Pipeline
from parley.pipeline.control import Caller, ControlPlane
from parley.pipeline.history import History
from parley.realtime.session import PromptResolver, RealtimeSession
from parley.routing import Policy
from parley.server.auth import (
    INSECURE_KEY_PROTOCOL,
    AuthMiddleware,
    Limiter,
    Principal,
    principal_of,
)
from parley.server.costs import costs_route
from parley.server.memory import Trimmer
from parley.server.metrics import Metrics
from parley.server.openai_errors import error_response
from parley.server.openapi import openapi_document
from parley.server.realtime_ws import Connection, Ended, Inbox
from parley.server.rest import rest_routes
from parley.server.tracing import TurnTracer
from parley.server.voices import voice_routes
from parley.server.watermark import watermark_route
from parley.store import Database, PromptStore, render
from parley.store.keys import KeyStore
from parley.trust.audit import AuditLog
from parley.trust.cloning import ClonedVoiceTTS, VoiceCloner, voice_engine_unavailable
from parley.trust.marks import Marker, MarkRegistry
from parley.trust.voices import resolve_voice

__all__ = ["AppState", "create_app"]

log = logging.getLogger("parley.server")

# The Realtime API refuses messages over 15 MiB with an error event; the socket accepts more so
# that parley can say so instead of dropping the connection.
WS_MAX_BYTES = 64 * 1024 * 1024
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
_SEVERITY = ("ok", "degraded", "down")


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
    # Lower-case names the TTS engine answers to (voice ids, names and languages).
    voice_names: frozenset[str] = frozenset()
    # Routing policy, failover, metering and budgets (issue 13); None: engines as configured.
    control: ControlPlane | None = None
    # The watermark key (issue 14); None: synthesised audio is not watermarked.
    watermark_key: Any = None

    # The voice-cloning engine for custom voices; None: they answer voice_engine_unavailable.
    cloner: VoiceCloner | None = None

    def custom_voice(self, tenant: str, voice_id: str) -> TTS:
        """``voice_id`` of ``tenant`` as a TTS engine: 404 when it does not exist (or its
        consent was deleted: open sessions lose it at once), 503 without a cloner."""
        voice = resolve_voice(self.database, tenant, voice_id) if self.database else None
        if voice is None:
            raise NotFoundError(
                f"The voice '{voice_id}' does not exist, or its consent was withdrawn.",
                param="voice",
            )
        if self.cloner is None:
            raise voice_engine_unavailable()
        return ClonedVoiceTTS(self.cloner, voice)

    def marker(self, tenant: str) -> Marker | None:
        """Watermarks for ``tenant``'s synthesised streams, or None when they are off."""
        if self.watermark_key is None or self.database is None:
            return None
        return Marker(self.watermark_key, MarkRegistry(self.database), tenant)

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
    policy: Policy | None = None,
    named: Mapping[str, Any] | None = None,
    watermark_key: Any = None,
    audit: AuditLog | None = None,
    cloner: VoiceCloner | None = None,
) -> Starlette:
    """The app; with ``auth`` every endpoint but ``/healthz`` needs a key from ``database``.

    ``policy`` routes calls to the engine instances ``named`` (built from it by
    :func:`parley.routing.build_policy_engines`); with ``database``, every engine call is
    recorded in its ledger and held to its budgets."""
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
    control = ControlPlane(
        engines,
        policy=policy,
        named={
            name: instrument_engine(engine, metrics.engine_call, metrics.engine_error)
            for name, engine in (named or {}).items()
        },
        ledger=Ledger(database) if database is not None else None,
        budgets=Budgets(database) if database is not None else None,
        on_record=lambda record: metrics.cost(
            record.tenant, record.stage, record.engine, record.cost_usd
        ),
        on_budget=lambda budget: metrics.budget_remaining(
            budget.tenant, budget.key_id, budget.remaining_usd
        ),
        audit=audit,
    )
    voices = engines.tts.voices()
    state = AppState(
        settings,
        engines,
        database,
        keys,
        metrics=metrics,
        tracer=tracer,
        voice_names=frozenset(n.lower() for v in voices for n in (v.id, v.name, v.language) if n),
        control=control,
        watermark_key=watermark_key,
        cloner=cloner,
    )

    async def healthz(request: Request) -> JSONResponse:
        # "degraded": serving with less capacity (a recogniser worker restarting); "down": an
        # engine cannot serve, and a load balancer should send callers elsewhere (503).
        kinds = ("vad", "asr", "llm", "tts")
        health = {k: engine_health(getattr(engines, k)) for k in kinds}
        worst = max((h.status for h in health.values()), key=_SEVERITY.index)
        return JSONResponse(
            {
                "status": worst,
                "version": __version__,
                "sessions": len(state.sessions),
                "engines": {k: getattr(engines, k).name for k in kinds},
                "health": {
                    k: {"status": h.status, "detail": h.detail}
                    for k, h in health.items()
                    if h.status != "ok"
                },
            },
            status_code=503 if worst == "down" else 200,
        )

    async def realtime(ws: WebSocket) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.sessions.add(task)
        try:
            await _serve_realtime(ws, state)
        finally:
            state.sessions.discard(task)
            trimmer.session_ended()

    trimmer = Trimmer()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        checkpoints = asyncio.ensure_future(_checkpoints(audit)) if audit is not None else None
        yield
        if checkpoints is not None:
            checkpoints.cancel()
        if audit is not None:  # the last records are covered by a signed checkpoint
            await asyncio.to_thread(audit.checkpoint)
        await trimmer.aclose()
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
            costs_route(lambda: control.ledger),  # GET /v1/organization/costs
            watermark_route(  # POST /v1/audio/watermark/detect (issue 14)
                lambda: state.watermark_key,
                MarkRegistry(database).resolve if database is not None else lambda _: None,
            ),
            *rest_routes(
                settings,
                engines,
                max_audio_s=settings.server.max_audio_s,
                max_transcriptions=settings.server.max_transcriptions,
                transcription_wait_s=settings.server.transcription_wait_s,
                control=control,
                marker_of=state.marker,
                custom_voice=state.custom_voice,
            ),
            *(
                voice_routes(  # consents and custom voices (issue 14)
                    database,
                    engines.asr,
                    operator=settings.trust.operator_name,
                    max_voices=settings.trust.max_voices,
                    audit=control.audit_append,
                )
                if database is not None
                else []
            ),
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
                admin_token=settings.server.admin_token,
            )
        ],
        lifespan=lifespan,
    )
    app.state.parley = state
    return app


async def _checkpoints(audit: AuditLog, every_s: float = 60.0) -> None:
    """Sign a checkpoint of the audit log every ``every_s`` (appends alone check the time only
    when something is appended)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(audit.checkpoint)
        except Exception:
            log.exception("audit checkpoint failed")


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
    # The session this key will open, with its tenant's prompts and the server's voices: what
    # would fail at connect time fails now, with the same error as a session.update would get.
    preview = RealtimeSession(
        state.settings,
        History(),
        kind=kind,
        voices=state.voice_names,
        languages=languages_of(state.engines.asr),
        prompts=state.prompt_resolver(principal.tenant),
    )
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
    return JSONResponse(
        {"value": token, "expires_at": int(expires_at), "session": preview.session_object}
    )


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
    inbox = Inbox()
    pipeline = Pipeline(
        engines,
        state.settings,
        input_rate=24000,
        output_rate=24000,
        auto_respond=False,  # the session decides when to respond
        sink=inbox.put_event,
        control=state.control,
        caller=Caller(principal.tenant, principal.limits_key),
        marker=state.marker(principal.tenant),
        custom_voice=functools.partial(state.custom_voice, principal.tenant),
    )
    session = RealtimeSession(
        state.settings,
        pipeline.history,
        kind=kind,
        beta=beta,
        model=ws.query_params.get("model") or "parley",
        vision=engines.llm.supports_vision,
        asr_model=engines.asr.name,
        voices=state.voice_names,
        languages=languages_of(engines.asr),
        prompts=state.prompt_resolver(principal.tenant),
        rate_limits=lambda: _rate_limits(state.limiter, principal),
        timeline=ws.query_params.get("parley_timeline") in ("1", "true"),
        admit=pipeline.admit,
    )
    if pipeline.control is not None:  # the ledger names the session of each call
        pipeline.control.caller = Caller(principal.tenant, principal.limits_key, session.id)
    if principal.session is not None:
        # An ephemeral key's session configuration (validated when the key was made) is the
        # session's starting point.
        session.receive(json.dumps({"type": "session.update", "session": principal.session}))
    bind(session_id=session.id)  # observability (issue 4): this task's and its children's logs
    connection = Connection(
        ws,
        session,
        pipeline,
        engines,
        inbox,
        metrics=state.metrics,
        tracer=state.tracer,
        outbox_bytes=state.settings.server.send_buffer_bytes,
    )
    audit = state.control.audit_append if state.control is not None else None
    who = {"key_id": principal.limits_key, "session_id": session.id}
    if audit is not None:  # the audit log (issue 14): who opened which session
        audit("session.opened", tenant=principal.tenant, type=kind, **who)
    try:
        async with pipeline:
            await connection.run(lambda: asyncio.ensure_future(_watch(state, principal)))
    finally:
        if audit is not None:
            route = pipeline.control.route if pipeline.control is not None else ""
            audit("session.closed", tenant=principal.tenant, route=route, **who)


async def _watch(state: AppState, principal: Principal) -> Ended:
    """Ends a session when it outlives its key's limit or its key is revoked."""
    key = principal.key
    limit_s = key.limits.max_session_s if key is not None else None
    deadline = None if limit_s is None else time.monotonic() + limit_s
    every = state.settings.server.revocation_check_s
    while True:
        wait = every if deadline is None else min(every, deadline - time.monotonic())
        await asyncio.sleep(max(wait, 0))
        if deadline is not None and time.monotonic() >= deadline:
            return Ended(
                SessionClosedError(
                    f"Your session hit the maximum duration of {limit_s} seconds.",
                    code=Code.SESSION_EXPIRED,
                ),
                1000,
            )
        # SQLite may block (another process's write lock): off the event loop.
        keys = state.keys
        if (
            key is not None
            and keys is not None
            and not await asyncio.to_thread(keys.is_active, key.id)
        ):
            log.info("realtime session of revoked key %s ended", key.id)
            return Ended(
                SessionClosedError(
                    "The API key of this session was revoked.", code=Code.SESSION_REVOKED
                ),
                1008,
            )


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
