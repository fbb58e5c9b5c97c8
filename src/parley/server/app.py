"""The ASGI app: its routes, its shared state and its lifespan.

The Realtime doors are in :mod:`parley.server.sessions` (the WebSocket, and a WebSocket beside
a running call) and :mod:`parley.server.calls` (WebRTC); the page at ``/`` in
:mod:`parley.server.web`; the REST routes in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from parley import __version__
from parley.config import Settings
from parley.engines.base import engine_health
from parley.engines.batching import Scheduler
from parley.engines.instrumented import instrument, instrument_engine
from parley.engines.registry import Engines
from parley.errors import (
    ClientError,
    Code,
    ConfigError,
    NotFoundError,
    ParleyError,
    ProtocolError,
)
from parley.ledger import Budgets, Ledger
from parley.pipeline.control import ControlPlane
from parley.routing import Policy
from parley.server.auth import (
    AuthMiddleware,
    principal_of,
)
from parley.server.calls import call_routes
from parley.server.costs import costs_route
from parley.server.limits import Gate
from parley.server.memory import Trimmer
from parley.server.metrics import Metrics
from parley.server.openai_errors import error_response
from parley.server.openapi import openapi_document
from parley.server.rest import rest_routes
from parley.server.sessions import check_config, end_revoked, serve_realtime
from parley.server.sip import sip_lifespan
from parley.server.state import AppState
from parley.server.tracing import TurnTracer
from parley.server.twilio import twilio_routes
from parley.server.voices import voice_routes
from parley.server.watermark import watermark_route
from parley.server.web import web_routes
from parley.store import Database
from parley.store.keys import KeyStore
from parley.store.shared import RevocationWatch, SharedState, SharedStateUnavailable
from parley.transports.webrtc import restrict_host_addresses
from parley.trust.audit import AuditLog
from parley.trust.cloning import VoiceCloner
from parley.trust.marks import MarkRegistry

__all__ = ["AppState", "create_app"]

log = logging.getLogger("parley.server")

# The Realtime API refuses messages over 15 MiB with an error event; the socket accepts more so
# that parley can say so instead of dropping the connection.
WS_MAX_BYTES = 64 * 1024 * 1024
_SEVERITY = ("ok", "degraded", "down")


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
    if settings.webrtc.host_addresses:  # WebRTC's host candidates (loopback, a public address)
        restrict_host_addresses(settings.webrtc.host_addresses)
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
    if settings.server.redis_url:  # several replicas: limits and revocations shared (issue 17)
        shared = SharedState.from_url(
            settings.server.redis_url,
            replica_url=settings.server.replica_url
            or f"http://{settings.server.host}:{settings.server.port}",
        )
        state.gate = Gate(state.limiter, shared)

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
            await serve_realtime(ws, state)
        finally:
            state.sessions.discard(task)
            trimmer.session_ended()

    trimmer = Trimmer()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        checkpoints = asyncio.ensure_future(_checkpoints(audit)) if audit is not None else None
        watch = await _watch_revocations(state)
        async with sip_lifespan(state):  # SIP calls (issue 16)
            yield
        if watch is not None:
            await watch.stop()
        if checkpoints is not None:
            checkpoints.cancel()
        if audit is not None:  # the last records are covered by a signed checkpoint
            await asyncio.to_thread(audit.checkpoint)
        await trimmer.aclose()
        if state.gate.shared is not None:
            await state.gate.shared.aclose()
        for call in list(state.calls.values()):  # WebRTC calls end with the server
            call.hangup()
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
            *call_routes(state),  # WebRTC: POST /v1/realtime/calls (issue 15)
            *twilio_routes(state),
            *web_routes(state),  # the page at / (issue 15)
            WebSocketRoute("/v1/realtime", realtime),
            WebSocketRoute("/realtime", realtime),
        ],
        exception_handlers={404: _http_error, 405: _http_error},
        middleware=[
            Middleware(
                AuthMiddleware,
                keys=keys,
                limiter=state.gate,
                metrics_token=settings.server.metrics_token,
                admin_token=settings.server.admin_token,
            )
        ],
        lifespan=lifespan,
    )
    app.state.parley = state
    return app


async def _watch_revocations(state: AppState) -> RevocationWatch | None:
    """With shared state, a key revoked on any replica ends its sessions here at once (the
    database is still polled every server.revocation_check_s, should a message be lost)."""
    shared = state.gate.shared
    if shared is None:
        return None
    try:
        return await shared.watch_revocations(functools.partial(end_revoked, state))
    except SharedStateUnavailable:
        log.warning("shared state unreachable at start: revocations are polled only")
        return None


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
    try:
        session_object = check_config(state, principal, config, kind)
    except ParleyError as exc:
        return error_response(exc)
    try:
        token, expires_at = state.keys.create_client_secret(principal.key, config, seconds)
    except ParleyError as exc:
        return error_response(exc)
    return JSONResponse({"value": token, "expires_at": int(expires_at), "session": session_object})
