"""One configuration model, read from a TOML file, then the environment, then CLI flags.

Later sources win: ``file < environment < flags``. Environment variables are
``PARLEY_<SECTION>_<FIELD>`` (``PARLEY_LLM_BASE_URL``, ``PARLEY_TTS_VOICE``); values are parsed
as JSON when they parse (numbers, booleans, objects) and taken as strings otherwise. CLI flags
come as dotted paths (``--set llm.model=llama3``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from parley.errors import ConfigError

__all__ = [
    "PROFILES",
    "ASRSettings",
    "EnginesSettings",
    "LLMSettings",
    "PipelineSettings",
    "PolicySettings",
    "ServerSettings",
    "Settings",
    "TTSSettings",
    "TurnDetectionSettings",
    "VADSettings",
    "load_settings",
]

ENV_PREFIX = "PARLEY_"
# Fields whose environment values are taken verbatim, never parsed as JSON.
_STRING_FIELDS = frozenset(
    {
        "api_key",
        "base_url",
        "model",
        "voice",
        "engine",
        "language",
        "knowledge",
        "instructions",
        "host",
        "metrics_token",
        "admin_token",
        "database",
        "file",
        "watermark_key_file",
        "watermark_key",
        "audit_key_file",
        "operator_name",
        "twilio_auth_token",
        "public_url",
        "hangup_digit",
        "sip_listen",
        "webhook_url",
        "webhook_secret",
        "tenant",
        "demo_tenant",
        "redis_url",
        "address",
    }
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VADSettings(_Section):
    engine: str = "silero"
    options: dict[str, Any] = Field(default_factory=dict)


class TurnDetectionSettings(_Section):
    """OpenAI ``server_vad`` semantics; ``type`` none means the caller ends turns itself.

    ``semantic_vad`` asks an end-of-turn model (``model``, Smart Turn v3 by default) early in
    each silence: a finished sentence ends the turn then, a pause mid-thought waits longer;
    ``eagerness`` sets how early and how long (see ``parley.pipeline.listener``). Without a
    model it is a silence window whose length ``eagerness`` sets.
    """

    type: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=0, le=10000)
    create_response: bool = True
    interrupt_response: bool = True
    # semantic_vad: how eager to answer (OpenAI's low / medium / high / auto).
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    # The end-of-turn model: "smart-turn" (vendored Smart Turn v3.2) or "none".
    model: str = "smart-turn"
    model_options: dict[str, Any] = Field(default_factory=dict)


class ASRSettings(_Section):
    engine: str = "whisper"
    language: str = "en"
    options: dict[str, Any] = Field(default_factory=dict)


class LLMSettings(_Section):
    """``auto`` picks ``openai`` when ``base_url`` is set, else the offline ``faq`` engine."""

    engine: str = "auto"
    base_url: str | None = None
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    knowledge: Path | None = None
    temperature: float | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "openai" if self.base_url else "faq"


class TTSSettings(_Section):
    engine: str = "piper"
    voice: str | None = None
    speed: float = Field(1.0, gt=0.2, le=4.0)
    options: dict[str, Any] = Field(default_factory=dict)


class PipelineSettings(_Section):
    instructions: str = (
        "You are parley, a helpful voice assistant. Answer briefly, in plain spoken sentences."
    )
    # Beyond this many (estimated) tokens the oldest turns are dropped from the prompt.
    history_tokens: int = Field(2000, ge=64)
    # Longest text parley will speak in one request (CLI ``say``, REST speech).
    max_speech_chars: int = Field(4096, ge=1)
    output_sample_rate: int = 24000
    # Realtime replies: later clauses are synthesised only while the audio already sent is
    # less than this far ahead of real-time playback, so that a long reply's tail does not take
    # the CPU from other callers' first words (0, the default: as fast as the engine goes, and
    # response.done comes as soon as the reply is synthesised, as OpenAI's does). Measured at
    # 4 sessions on 2 cores (docs/benchmarks.md): 2000 ms left the turn gap where it was.
    tts_lead_ms: float = Field(0.0, ge=0)


class PolicySettings(_Section):
    # The routing policy (YAML, docs/policy.md): engine instances, prices, routes by data
    # category and tenant, failover. Unset: every call goes to the configured engines.
    file: Path | None = None


class TrustSettings(_Section):
    # Every synthesised sample carries a keyed watermark (docs/trust.md); off only by choice.
    watermark: bool = True
    # The key, created 0600 on first start; watermark_key (64 hex digits) wins over the file.
    watermark_key_file: Path = Path("parley-watermark.key")
    watermark_key: str | None = None
    # The audit log's Ed25519 signing key (PEM), created 0600 on first use; `parley audit key`
    # prints its public half.
    audit_key_file: Path = Path("parley-audit.key")
    # Custom voices: who the consent phrase names ("... I consent to <operator_name> using this
    # voice ..."), and how many live voices a tenant may have.
    operator_name: str = Field("parley", min_length=1)
    max_voices: int = Field(20, ge=0)
    # The engine that speaks custom voices: "pocket-tts" (weights from its config: a local YAML
    # or the gated hub repository kyutai/pocket-tts) or "none" (custom voices answer
    # voice_engine_unavailable; creating them still works).
    cloning: Literal["none", "pocket-tts"] = "none"
    cloning_config: str | None = None


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # The database (keys, prompt templates, ledger, budgets): a SQLite file, relative to the cwd,
    # or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE. A string: a URL is not a Path.
    database: str = "parley.db"
    # Bearer token for /metrics (all tenants' figures); unset: loopback clients only.
    metrics_token: str | None = None
    # Bearer token of the operator: reports across all tenants (GET /v1/organization/costs
    # without a tenant scope). Unset: no caller sees another tenant's figures.
    admin_token: str | None = None
    # Several gateway replicas: the Redis they share request rates, session counts, the live
    # session registry and key revocations through (redis://HOST:PORT/DB). Unset: one replica,
    # all of it in this process. replica_url: how other replicas and clients reach this one.
    redis_url: str | None = None
    replica_url: str | None = None
    # Realtime: events queued for a client that does not read them, beyond which its session is
    # closed (8 MiB is about two minutes of 24 kHz audio).
    send_buffer_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    # Realtime: how often an open session checks that its key was not revoked (seconds).
    revocation_check_s: float = Field(2.0, gt=0, le=60)
    # REST transcriptions: at most this many at once; one more waits up to transcription_wait_s
    # for a slot, then gets a 503 with Retry-After. Recordings longer than max_audio_s are 413.
    max_transcriptions: int = Field(4, ge=1, le=256)
    transcription_wait_s: float = Field(5.0, ge=0, le=300)
    max_audio_s: float = Field(1500.0, gt=0, le=4 * 3600)


class IceServer(_Section):
    # A STUN or TURN server as RTCPeerConnection's iceServers take it.
    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None


class WebRTCSettings(_Section):
    # STUN/TURN servers for /v1/realtime/calls. Empty (the default): none is asked, so parley
    # never talks to a public STUN server by itself; a browser on the same network (or machine)
    # reaches it through host candidates.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # The IP addresses offered as host candidates. Empty: every interface's address but
    # 127.0.0.1 (aiortc's choice). ["127.0.0.1"] keeps WebRTC on loopback (tests, one machine).
    host_addresses: list[str] = Field(default_factory=list)
    # A call whose media stops (peer gone, ICE/DTLS failed) ends after this many seconds.
    media_timeout_s: float = Field(15.0, gt=0, le=600)
    # At most this many WebRTC calls at once on this server (Opus costs CPU).
    max_calls: int = Field(64, ge=1, le=100000)
    # Packets of the caller's audio buffered before the first is decoded (20 ms each): more
    # rides out more network jitter, and delays the end of every turn by as much.
    jitter_buffer_packets: int = Field(2, ge=1, le=8)


class CallProfile(_Section):
    # What a phone call's session starts with: a Realtime session configuration (instructions,
    # audio.output.voice, tools, ...), as session.update takes it, and the tenant that owns it.
    session: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = None  # None: telephony.tenant


class TelephonySettings(_Section):
    # The tenant that owns phone calls (their ledger, budgets, audit records); an application
    # with a key of this tenant may attach to a call (/v1/realtime?call_id=...) and control it.
    tenant: str = "telephony"
    # Profiles by called number (E.164, e.g. "+15550100"); "default" for any other number.
    profiles: dict[str, CallProfile] = Field(default_factory=dict)
    # Twilio: the account's auth token, which signs its webhooks (X-Twilio-Signature). Unset:
    # the Twilio endpoints answer 403. public_url: how Twilio reaches this server
    # ("https://voice.example.com"); unset: the URL of the webhook request.
    twilio_auth_token: str | None = None
    public_url: str | None = None
    # DTMF: a press with no speech around it gets a reply after this pause (0: never by itself);
    # hangup_digit ends the call; transfer maps a digit to where the call goes (SIP REFER, or a
    # Twilio <Dial>).
    dtmf_response_ms: int = Field(1500, ge=0, le=60000)
    hangup_digit: str | None = None
    transfer: dict[str, str] = Field(default_factory=dict)
    # SIP: "HOST:PORT" to listen on (UDP and TCP; off when unset), and TLS where a certificate
    # and key are given (on sip_tls_port).
    sip_listen: str | None = None
    sip_tls_port: int | None = Field(None, ge=1, le=65535)
    sip_tls_cert: Path | None = None
    sip_tls_key: Path | None = None
    # OpenAI's realtime.call.incoming webhook for each INVITE, signed with webhook_secret (a
    # Standard Webhooks "whsec_..." secret). Without a webhook_url calls are accepted at once
    # with the called number's profile.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # A ringing call the application neither accepts nor rejects within this time is refused.
    accept_timeout_s: float = Field(30.0, gt=0, le=600)
    # A call whose RTP stops for this long has lost its caller: it ends.
    rtp_timeout_s: float = Field(20.0, gt=0, le=600)


class WebSettings(_Section):
    # The web page at /: on unless switched off.
    page: bool = True
    # The tenant whose key the page's "get a key" button mints ephemeral keys for
    # (`parley serve --web-demo-tenant NAME`); unset: the page asks the person for a key.
    demo_tenant: str | None = None
    # Who may mint demo keys: client networks (CIDR). Default: this machine only.
    demo_allow: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


EngineKind = Literal["asr", "tts"]


class EnginesSettings(_Section):
    """Where ASR and TTS run: in this process (``local``, the default) or as Ray Serve
    deployments shared by every gateway (``ray``; see ``parley.engines.ray_serve``).

    ``address``: the Ray cluster (``"auto"``: the one started on this machine; ``"HOST:PORT"``:
    its GCS; ``"ray://HOST:PORT"``: Ray Client). The first gateway to start deploys the
    application ``app_name`` if it is absent; every gateway finds its deployments by name.
    Each replica batches requests from all gateways with ``@serve.batch``: up to
    ``max_batch_size`` per batch, waiting at most ``batch_wait_timeout_s`` for one to fill.
    """

    backend: Literal["local", "ray"] = "local"
    address: str = "auto"
    app_name: str = Field("parley-engines", min_length=1)
    ray_namespace: str = Field("parley", min_length=1)
    # Which engines the application serves; the others stay in the gateway.
    kinds: list[EngineKind] = Field(default_factory=lambda: list[EngineKind](("asr", "tts")))
    max_batch_size: int = Field(8, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    # Batches a replica runs at once (Ray's max_concurrent_batches): 1 queues new requests
    # while a batch runs, as parley's in-process batcher does.
    max_concurrent_batches: int = Field(1, ge=1, le=64)
    # Autoscaling of each deployment: replicas between min and max, aiming at this many
    # requests in flight per replica (None: max_batch_size).
    min_replicas: int = Field(1, ge=0, le=1000)
    max_replicas: int = Field(1, ge=1, le=1000)
    target_ongoing_requests: float | None = Field(None, gt=0)
    # Resources of one replica (Ray's num_cpus / num_gpus; fractions share a device).
    replica_cpus: float = Field(1.0, ge=0)
    replica_gpus: float = Field(0.0, ge=0)
    # Seconds to wait for the application to be running (a first deploy loads the models).
    deploy_timeout_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _replicas(self) -> EnginesSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("engines.min_replicas must not exceed engines.max_replicas")
        return self


# The engines a profile picks where the config names none (``[asr] engine`` / ``[tts] engine``).
# neural: Whisper tiny.en and the Piper voice joe, from pinned PyPI wheels (the default; good
# English, about four callers per two cores). fast: pocketsphinx and espeak-ng (robotic and
# error-prone, but many more callers per core, and espeak speaks about a hundred languages).
PROFILES: dict[str, dict[str, str]] = {
    "neural": {"asr": "whisper", "tts": "piper"},
    "fast": {"asr": "pocketsphinx", "tts": "espeak"},
}


class Settings(_Section):
    # Which engines serve where the config names none: "neural" or "fast" (see PROFILES).
    profile: Literal["neural", "fast"] = "neural"
    server: ServerSettings = Field(default_factory=ServerSettings)
    vad: VADSettings = Field(default_factory=VADSettings)
    turn_detection: TurnDetectionSettings = Field(default_factory=TurnDetectionSettings)
    asr: ASRSettings = Field(default_factory=ASRSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    tts: TTSSettings = Field(default_factory=TTSSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    telephony: TelephonySettings = Field(default_factory=TelephonySettings)
    engines: EnginesSettings = Field(default_factory=EnginesSettings)
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _profile_engines(cls, data: Any) -> Any:
        """Fill in the profile's engine for a section that names none."""
        if not isinstance(data, dict):
            return data
        engines = PROFILES.get(data.get("profile", "neural"))
        if engines is None:
            return data  # the profile field's own validation names the mistake
        out = dict(data)
        for section, engine in engines.items():
            given = out.get(section)
            if given is None:
                out[section] = {"engine": engine}
            elif isinstance(given, Mapping) and "engine" not in given:
                out[section] = {**given, "engine": engine}
        return out


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"setting {'.'.join(path)}: {key} is not a section")
        node = child
    node[path[-1]] = value


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    sections = {
        name for name, f in Settings.model_fields.items() if f.annotation not in (str, None)
    }
    tree: dict[str, Any] = {}
    # Longest section names first so that e.g. TURN_DETECTION wins over a shorter prefix.
    ordered = sorted(sections, key=len, reverse=True)
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        for section in ordered:
            if rest.startswith(section + "_"):
                field_name = rest[len(section) + 1 :]
                value = raw if field_name in _STRING_FIELDS else _parse_value(raw)
                _set_path(tree, [section, field_name], value)
                break
        else:
            if rest in ("log_level", "profile"):
                tree[rest] = raw
    return tree


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, the environment and dotted overrides.

    Raises :class:`ConfigError` with one readable line for an unreadable file or a bad value.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    tree = _merge(tree, _env_tree(os.environ if env is None else env))
    for dotted, value in (overrides or {}).items():
        field_name = dotted.rsplit(".", 1)[-1]
        parsed = (
            _parse_value(value)
            if isinstance(value, str) and field_name not in _STRING_FIELDS
            else value
        )
        _set_path(tree, dotted.split("."), parsed)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {where}: {first['msg']}", param=where) from exc
