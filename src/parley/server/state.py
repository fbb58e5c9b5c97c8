"""What the app's routes share: settings, engines, keys, limits, the control plane, live calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.config import Settings
from parley.engines.base import TTS, ContentPart, TextPart
from parley.engines.registry import Engines
from parley.errors import NotFoundError
from parley.pipeline.control import ControlPlane
from parley.realtime.session import PromptResolver
from parley.server.auth import Limiter, Principal
from parley.server.limits import Gate
from parley.server.metrics import Metrics
from parley.server.realtime_ws import Connection
from parley.server.tracing import TurnTracer
from parley.store import Database, PromptStore, render
from parley.store.keys import KeyStore
from parley.trust.cloning import ClonedVoiceTTS, VoiceCloner, voice_engine_unavailable
from parley.trust.marks import Marker, MarkRegistry
from parley.trust.voices import resolve_voice

__all__ = ["AppState", "CallControl", "LiveCall"]


class CallControl(Protocol):
    """What an application may do with a ringing or live phone call (SIP), as OpenAI's
    ``realtime.calls`` does: each raises a ClientError when the call is past it."""

    async def accept(self, config: dict[str, Any]) -> None:
        """Answer with a session configured by ``config`` (already validated)."""

    async def reject(self, status_code: int) -> None:
        """Refuse a ringing call with a SIP status (e.g. 486 Busy Here, 603 Decline)."""

    async def refer(self, target_uri: str) -> None:
        """Transfer the call (SIP REFER) to ``tel:...`` or ``sip:...``."""


@dataclass(eq=False)
class LiveCall:
    """A call whose session runs apart from any request (WebRTC, Twilio, SIP): applications
    of its tenant may attach a WebSocket to it (``/v1/realtime?call_id=``), hang it up and,
    for SIP (``control``), accept, reject or transfer it. ``connection`` is None while a call
    rings."""

    id: str
    tenant: str
    connection: Connection | None
    hangup: Callable[[], None]
    task: asyncio.Task[None] | None = None
    control: CallControl | None = None


@dataclass
class AppState:
    settings: Settings
    engines: Engines
    database: Database | None
    # None: auth is off (parley serve --no-auth), every caller is the default tenant.
    keys: KeyStore | None
    limiter: Limiter = field(default_factory=Limiter)
    # Request rates and session counts: the limiter's, or shared by replicas (Redis).
    gate: Gate = field(default_factory=Gate)
    # Sessions running here, with who opened them (revocation ends them).
    live: dict[Connection, Principal] = field(default_factory=dict)
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
    # Calls whose sessions run apart from any request (WebRTC), by call id.
    calls: dict[str, LiveCall] = field(default_factory=dict)

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
