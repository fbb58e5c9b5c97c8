"""``parley keys``: create, list and revoke a tenant's API keys."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from parley.bench.report import print_table
from parley.commands.options import audit_log, settings_from

__all__ = ["run_keys"]


async def _publish_revocation(url: str, key_id: str) -> int:
    """Tell the replicas sharing ``url`` (their database poll would notice within
    server.revocation_check_s anyway); 0 when Redis cannot be reached."""
    from parley.store.shared import SharedState, SharedStateUnavailable

    shared = SharedState.from_url(url)
    try:
        return await shared.publish_revocation(key_id)
    except SharedStateUnavailable:
        return 0
    finally:
        await shared.aclose()


async def run_keys(args: argparse.Namespace, console: Console) -> int:
    from parley.store import Database
    from parley.store.keys import KeyStore, Limits

    settings = settings_from(args)
    with Database(settings.server.database) as database:
        keys = KeyStore(database)
        match args.action:
            case "create":
                limits = Limits(args.rpm, args.max_sessions, args.max_session_seconds)
                token, key = keys.create_key(args.tenant, name=args.name or "", limits=limits)
                audit_log(settings, database).append(
                    "key.created", tenant=key.tenant.name, key_id=key.id, name=key.name
                )
                console.print(
                    f"created {key.id} for tenant {key.tenant.name}; the key "
                    "(shown once, store it now):"
                )
                print(token)
            case "list":
                rows = []
                for key in keys.list_keys(args.tenant):
                    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_at))
                    shown = ", ".join(
                        f"{label} {value}"
                        for label, value in (
                            ("rpm", key.limits.requests_per_minute),
                            ("sessions", key.limits.max_sessions),
                            ("session s", key.limits.max_session_s),
                        )
                        if value is not None
                    )
                    status = "active" if key.active else "revoked"
                    rows.append(
                        [key.id, key.prefix + "...", key.name, created, status, shown or "-"]
                    )
                if not rows:
                    console.print(f"tenant {args.tenant} has no keys", markup=False)
                    return 0
                headers = ["id", "prefix", "name", "created (UTC)", "status", "limits"]
                # Ids and prefixes are whole on any terminal: they are what 'keys revoke' takes.
                print_table(console, headers, rows, wrap={2, 5})
            case "revoke":
                # The prefix as 'keys list' shows it, copied with its dots, names the key too.
                key = keys.revoke(args.tenant, args.key.removesuffix("..."))
                audit_log(settings, database).append(
                    "key.revoked", tenant=key.tenant.name, key_id=key.id
                )
                console.print(f"revoked {key.id} ({key.prefix}...) of tenant {args.tenant}")
                if settings.server.redis_url:  # every replica ends its sessions now
                    heard = await _publish_revocation(settings.server.redis_url, key.id)
                    console.print(f"told {heard} gateway replica(s) through Redis")
    return 0
