"""``parley serve``: the ASGI app under uvicorn, its engines warmed up before the first call."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import uvicorn
from rich.console import Console

from parley import __version__
from parley.commands.options import EXIT_ERROR, settings_from
from parley.engines.registry import build_engines, warm_up, warm_up_named
from parley.routing import build_policy_engines, load_policy

__all__ = ["run_serve"]


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
    policy, named = None, {}
    if settings.policy.file is not None:  # routes, failover, prices (docs/policy.md)
        policy = load_policy(settings.policy.file)
        named = build_policy_engines(policy, settings)
        await warm_up_named(named)
    database = Database(settings.server.database)
    app = create_app(
        settings,
        engines,
        database=database,
        auth=not args.no_auth,
        policy=policy,
        named=named,
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
    return 0 if server.started else EXIT_ERROR
