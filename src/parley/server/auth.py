"""Who is calling, and may they: API keys, ephemeral client secrets, per-key limits.

:class:`AuthMiddleware` is plain ASGI. It finds the caller's token (``Authorization: Bearer``,
or for browsers the WebSocket subprotocol ``openai-insecure-api-key.<key>``), resolves it to a
:class:`Principal` (the tenant, the key and, for an ephemeral ``ek_`` secret, the session
configuration it was minted for) and puts that in ``scope["state"]["principal"]``; everything
downstream is scoped to that tenant. Refusals use OpenAI's error shape: 401 for a missing, wrong,
revoked or expired key, 429 past a limit. ``/healthz`` needs no key; ``/metrics`` (all tenants
together) takes the operator's ``server.metrics_token``, or with none set only loopback clients.
The organization reports (``/v1/organization/...``) also take the operator's
``server.admin_token``, whose caller is an admin :class:`Principal` that sees every tenant.
With auth off (``parley serve --no-auth``) every caller is the default tenant.

**The event loop never waits here.** Key lookups go through the database, which may wait for
another process's write lock (``parley keys`` beside a running server) and redeeming a client
secret writes; both run in a worker thread. A :class:`HandshakeGate` caps the WebSocket
connections being set up at once (handshake, key lookup, and the app's session setup up to the
first message it sends): 300 simultaneous connects queue for a slot instead of taking the whole
event loop, and one that waits longer than the gate's bound is refused with 503 and
``Retry-After``, before it costs anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from parley.errors import (
    AuthenticationError,
    Code,
    OverloadedError,
    ParleyError,
    RateLimitError,
    error_body,
)
from parley.store.keys import SECRET_PREFIX, ApiKey, KeyStore

__all__ = ["AuthMiddleware", "HandshakeGate", "Limiter", "Principal", "principal_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."
METRICS_PATH = "/metrics"
# Reports across tenants: a tenant's key sees its own tenant, the operator's admin token all.
ADMIN_PATHS = "/v1/organization/"
REALTIME_PATHS = ("/v1/realtime", "/realtime")
CALLS_PATH = "/v1/realtime/calls"  # a WebRTC call: an ephemeral key is spent on its offer
# The web page (parley.server.web): what it asks first, and its demo key.
WEB_CONFIG_PATH = "/v1/parley/web/config"
WEB_DEMO_SECRETS_PATH = "/v1/parley/web/client_secrets"
# Twilio's voice webhook and media stream (parley.server.twilio): Twilio's signature
# (X-Twilio-Signature, by the account's auth token) authenticates them, not a key.
TWILIO_VOICE_PATH = "/v1/telephony/twilio/voice"
TWILIO_MEDIA_PATH = "/v1/telephony/twilio/media"


def is_public(path: str) -> bool:
    """Paths anyone may fetch without a key: the page, its files, what it asks first and the
    demo key, which checks the client's address itself; Twilio's webhook and media stream,
    which check Twilio's signature themselves."""
    return path in (
        "/",
        WEB_CONFIG_PATH,
        WEB_DEMO_SECRETS_PATH,
        TWILIO_VOICE_PATH,
        TWILIO_MEDIA_PATH,
    ) or path.startswith("/web/")


# WebSocket connections set up at once, and how long one more may wait for a slot. A session's
# setup is CPU work on the event loop, done one after another whatever the limit: a small limit
# bounds how much of it one turn of the loop can hold (300 connects at once: 2 and 4 kept open
# sessions answering within ~1-3 s where 300 unbounded froze them for 24 s, see
# docs/reliability.md), and still sets up hundreds of sessions a second once setup is cheap.
MAX_HANDSHAKES = 4
HANDSHAKE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str  # "" is the default tenant (auth off)
    key: ApiKey | None = None
    # The session configuration an ephemeral secret was minted for.
    session: dict[str, Any] | None = None
    # The operator (server.admin_token): reports across every tenant.
    admin: bool = False

    @property
    def limits_key(self) -> str:
        return self.key.id if self.key else ""


def principal_of(scope: Scope) -> Principal:
    principal: Principal = scope.get("state", {}).get("principal", Principal(""))
    return principal


@dataclass
class Limiter:
    """Per-key request rate (a sliding minute) and concurrent Realtime sessions, in memory."""

    clock: Callable[[], float] = time.monotonic
    _requests: dict[str, deque[float]] = field(default_factory=dict)
    _sessions: dict[str, int] = field(default_factory=dict)

    def request(self, key: ApiKey | None) -> tuple[bool, int | None, float]:
        """Count a request: (allowed, remaining this minute, seconds until a slot frees)."""
        limit = key.limits.requests_per_minute if key else None
        if key is None or limit is None:
            return True, None, 0.0
        now = self.clock()
        window = self._requests.setdefault(key.id, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= limit:
            return False, 0, 60 - (now - window[0])
        window.append(now)
        reset = 60 - (now - window[0])
        return True, limit - len(window), reset

    def remaining(self, key: ApiKey | None) -> tuple[int | None, float]:
        if key is None or key.limits.requests_per_minute is None:
            return None, 0.0
        now = self.clock()
        window = [t for t in self._requests.get(key.id, ()) if t > now - 60]
        reset = 60 - (now - window[0]) if window else 0.0
        return key.limits.requests_per_minute - len(window), reset

    def open_session(self, key: ApiKey | None) -> bool:
        if key is None:
            return True
        count = self._sessions.get(key.id, 0)
        if key.limits.max_sessions is not None and count >= key.limits.max_sessions:
            return False
        self._sessions[key.id] = count + 1
        return True

    def close_session(self, key: ApiKey | None) -> None:
        if key is not None and self._sessions.get(key.id, 0) > 0:
            self._sessions[key.id] -= 1


class HandshakeGate:
    """At most ``limit`` connections being set up at once; the others wait in arrival order, at
    most ``wait_s`` seconds each. Counts are kept for metrics. Not thread-safe: one event loop."""

    def __init__(self, limit: int = MAX_HANDSHAKES, wait_s: float = HANDSHAKE_WAIT_S) -> None:
        if limit < 1 or wait_s < 0:
            raise ValueError("a handshake gate needs limit >= 1 and wait_s >= 0")
        self.limit = limit
        self.wait_s = wait_s
        self.active = 0
        self.refused = 0
        # Futures are made in the running loop when needed, so the gate can outlive a loop.
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)  # resolved waiters leave the queue, given-up ones too

    async def acquire(self) -> bool:
        """Take a slot; False (and counted as refused) if none came within ``wait_s``."""
        if self.active < self.limit and not self.waiting:
            self.active += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                await waiter
        except TimeoutError:
            self._give_back(waiter)
            self.refused += 1
            return False
        except BaseException:
            self._give_back(waiter)
            raise
        return True

    def release(self) -> None:
        """Hand the slot to the longest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: ``active`` is unchanged
                return
        self.active -= 1

    def _give_back(self, waiter: asyncio.Future[None]) -> None:
        # A slot may have been handed over just as the wait ended: pass it on.
        if waiter.done() and not waiter.cancelled():
            self.release()
        else:
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


def _error_body(exc: ParleyError) -> bytes:
    return json.dumps({"error": error_body(exc)}).encode()


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyStore | None,
        limiter: Limiter | Any,  # a Limiter, or a parley.server.limits.Gate (shared)
        *,
        public: tuple[str, ...] = ("/healthz",),
        metrics_token: str | None = None,
        admin_token: str | None = None,
        gate: HandshakeGate | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.public = public
        self.metrics_token = metrics_token
        self.admin_token = admin_token
        self.gate = gate if gate is not None else HandshakeGate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if kind == "http":
            await self._serve(scope, receive, send)
            return
        if not await self.gate.acquire():
            await _refuse(
                scope,
                receive,
                send,
                OverloadedError(
                    "Too many connections are being set up at once; try again in a moment."
                ),
                headers=[(b"retry-after", b"1")],
            )
            return
        gate = self.gate
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        async def gated_send(message: Message) -> None:
            # The session is set up once the app says anything beyond accepting the socket (a
            # Realtime session's first event, a close, a denial).
            if message["type"] != "websocket.accept":
                release()
            await send(message)

        try:
            await self._serve(scope, receive, gated_send)
        finally:
            release()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        state = scope.setdefault("state", {})
        if kind == "http" and scope["path"].startswith(ADMIN_PATHS) and self._is_admin(scope):
            state["principal"] = Principal("", admin=True)
            await self.app(scope, receive, send)
            return
        if self.keys is None or (
            (kind == "http" or scope["path"] == TWILIO_MEDIA_PATH) and is_public(scope["path"])
        ):
            # The web page, its files and what it asks first need no key (the demo key
            # endpoint checks the client's address itself).
            state["principal"] = Principal("")
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH:
            # Metrics add up every tenant: an operator's token, never a tenant's key.
            if self._metrics_allowed(scope):
                await self.app(scope, receive, send)
            else:
                await _refuse(
                    scope,
                    receive,
                    send,
                    AuthenticationError(
                        "/metrics needs the operator's metrics token (server.metrics_token), or a "
                        "loopback client when none is set."
                    ),
                )
            return
        token = _token(scope)
        principal: Principal | None = None
        if token is None:
            failure = (
                "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
                Code.MISSING_API_KEY,
            )
        elif token.startswith(SECRET_PREFIX):
            secret = (
                await asyncio.to_thread(self.keys.redeem_client_secret, token)
                if (kind == "websocket" and scope["path"] in REALTIME_PATHS)
                or (kind == "http" and scope["path"] == CALLS_PATH)
                else None
            )
            if secret is not None:
                principal = Principal(secret.key.tenant.name, secret.key, secret.session)
            failure = (
                "Invalid ephemeral key: it is unknown, expired, already used, or not for "
                "a Realtime connection.",
                Code.INVALID_API_KEY,
            )
        else:
            key = await asyncio.to_thread(self.keys.authenticate, token)
            if key is not None:
                principal = Principal(key.tenant.name, key)
            failure = ("Incorrect API key provided, or the key was revoked.", Code.INVALID_API_KEY)
        if principal is None:
            await _refuse(scope, receive, send, AuthenticationError(failure[0], code=failure[1]))
            return
        try:
            counted = self.limiter.request(principal.key)
            # In one process a Limiter answers at once; a Gate shared through Redis is awaited.
            allowed, remaining, reset = await counted if inspect.isawaitable(counted) else counted
        except ParleyError as exc:  # the shared state is unreachable: 503
            await _refuse(scope, receive, send, exc)
            return
        if not allowed:
            limit = principal.key.limits.requests_per_minute if principal.key else None
            await _refuse(
                scope,
                receive,
                send,
                RateLimitError(
                    f"Rate limit reached: {limit} requests per minute for this key. "
                    f"Try again in {reset:.0f} s."
                ),
                headers=[(b"retry-after", str(max(1, round(reset))).encode())],
            )
            return
        state["principal"] = principal
        if kind == "http" and remaining is not None and principal.key is not None:
            send = _with_headers(
                send,
                [
                    (
                        b"x-ratelimit-limit-requests",
                        str(principal.key.limits.requests_per_minute).encode(),
                    ),
                    (b"x-ratelimit-remaining-requests", str(remaining).encode()),
                    (b"x-ratelimit-reset-requests", f"{reset:.0f}s".encode()),
                ],
            )
        await self.app(scope, receive, send)

    def _is_admin(self, scope: Scope) -> bool:
        token = _token(scope)
        return (
            bool(self.admin_token)
            and token is not None
            and hmac.compare_digest(token.encode(), str(self.admin_token).encode())
        )

    def _metrics_allowed(self, scope: Scope) -> bool:
        if self.metrics_token:
            token = _token(scope)
            return token is not None and hmac.compare_digest(token, self.metrics_token)
        client = scope.get("client")
        return client is not None and client[0] in ("127.0.0.1", "::1", "localhost")


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped


def _token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
    if scope["type"] == "websocket":
        for protocol in scope.get("subprotocols", []):
            if protocol.startswith(INSECURE_KEY_PROTOCOL):
                return str(protocol[len(INSECURE_KEY_PROTOCOL) :])
    return None


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    exc: ParleyError,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    status, body = exc.status, _error_body(exc)
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})
        return
    # A WebSocket refused before the handshake: an HTTP answer where the server supports it.
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # 1013: try again later (overloaded); 1008: policy violation (no or a bad key, limits).
        await send({"type": "websocket.close", "code": 1013 if status == 503 else 1008})
