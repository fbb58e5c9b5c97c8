"""``parley serve``: the ASGI app under uvicorn, its engines warmed up before the first call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from rich.console import Console

from parley import __version__
from parley.commands.options import EXIT_ERROR, settings_from
from parley.engines.registry import build_engines, warm_up, warm_up_named
from parley.errors import EngineUnavailableError
from parley.routing import build_policy_engines, load_policy
from parley.trust.audit import AuditLog, AuditSigner
from parley.trust.cloning import load_pocket_tts
from parley.trust.watermark import WatermarkKey

__all__ = ["run_serve"]


def _sha256(path: Path | None) -> str:
    """The policy file's SHA-256 (hex), so the audit log shows which policy was in force."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM end the process with status 0 after the graceful
    shutdown (uvicorn re-raises the signal, which reads as a crash to a supervisor)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


async def run_serve(args: argparse.Namespace, console: Console) -> int:
    from parley.logs import configure_logging
    from parley.server.app import WS_MAX_BYTES, create_app
    from parley.store import Database

    settings = settings_from(args)
    configure_logging(settings.log_level)  # observability (issue 4): JSON lines on stderr
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    engines = build_engines(settings)
    await warm_up(engines)
    if settings.engines.backend == "ray":  # ASR and TTS on Ray Serve, shared by gateways
        from parley.engines.ray_serve import remote_engines

        engines = await remote_engines(settings, engines)
        console.print(
            f"engines: ASR and TTS on Ray Serve ({settings.engines.address}, application "
            f"{settings.engines.app_name})"
        )
    policy, named = None, {}
    if settings.policy.file is not None:  # routes, failover, prices (docs/policy.md)
        policy = load_policy(settings.policy.file)
        named = build_policy_engines(policy, settings)
        await warm_up_named(named)
    database = Database(settings.server.database)
    trust = settings.trust
    watermark_key = None
    if trust.watermark:
        watermark_key = (
            WatermarkKey.from_hex(trust.watermark_key)
            if trust.watermark_key
            else WatermarkKey.load_or_create(trust.watermark_key_file)
        )
    audit = AuditLog(database, AuditSigner.load_or_create(trust.audit_key_file))
    audit.append(
        "server.started",
        version=__version__,
        engines={k: getattr(engines, k).name for k in ("vad", "asr", "llm", "tts")},
        policy_file=str(settings.policy.file or ""),
        policy_sha256=_sha256(settings.policy.file),
        watermark=trust.watermark,
        auth=not args.no_auth,
    )
    if not trust.watermark:
        audit.append("watermark.disabled")
        console.print(
            "[bold red]WARNING: watermarking is OFF (trust.watermark = false): the audio this "
            "server synthesises cannot be traced back to it. Recorded in the audit log.[/bold red]"
        )
    cloner = None
    if trust.cloning == "pocket-tts":
        try:
            cloner = await asyncio.to_thread(load_pocket_tts, config=trust.cloning_config)
        except EngineUnavailableError as exc:
            console.print(
                f"[bold yellow]custom voices cannot be spoken: {exc.message}[/bold yellow]"
            )
    app = create_app(
        settings,
        engines,
        database=database,
        auth=not args.no_auth,
        policy=policy,
        named=named,
        watermark_key=watermark_key,
        audit=audit,
        cloner=cloner,
    )
    if args.no_auth:
        console.print(
            "[bold red]WARNING: authentication is OFF (--no-auth). Anyone who can reach "
            f"{host}:{port} can use this server. For local development only.[/bold red]"
        )
    if policy is not None:
        console.print(
            f"policy {settings.policy.file}: {len(policy.routes)} routes, engines "
            + ", ".join(f"{name} ({spec.location})" for name, spec in policy.engines.items())
        )
    console.print(
        f"parley {__version__}: Realtime API on ws://{host}:{port}/v1/realtime "
        f"(engines: {engines.vad.name}, {engines.asr.name}, {engines.llm.name}, "
        f"{engines.tts.name})"
    )
    if settings.web.page:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        demo = (
            f"; demo keys for tenant {settings.web.demo_tenant!r}"
            if settings.web.demo_tenant
            else ""
        )
        console.print(f"talk to it in a browser: http://{shown}:{port}/{demo}")
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws_max_size=WS_MAX_BYTES,
        log_level=args.log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        # Audio in base64 barely compresses; deflate would cost CPU on every delta.
        ws_per_message_deflate=False,
    )
    server = _Server(config)
    try:
        await server.serve()
    finally:
        database.close()
        if settings.engines.backend == "ray":
            from parley.engines.ray_serve import close_remote_engines

            await close_remote_engines(engines)
    return 0 if server.started else EXIT_ERROR
