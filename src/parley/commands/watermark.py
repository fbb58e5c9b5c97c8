"""``parley watermark detect FILE [--json]``: does a recording carry this server's watermark?

Reads the key the server uses (``trust.watermark_key``, else ``trust.watermark_key_file``; it is
never created here) and resolves a found payload through the database's ``watermark_marks``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from parley.commands.options import settings_from
from parley.config import Settings
from parley.errors import ConfigError

__all__ = ["add_watermark_parser", "resolve_mark", "run_watermark_detect"]


def add_watermark_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``parley watermark detect`` to the CLI's subparsers."""
    watermark = sub.add_parser(
        "watermark",
        parents=[common],
        help="check recordings for parley's audio watermark",
        description="Check recordings for parley's audio watermark.",
    )
    actions = watermark.add_subparsers(dest="action", required=True, metavar="ACTION")
    detect = actions.add_parser(
        "detect",
        parents=[common],
        help="is FILE marked, and for which tenant and response",
        description="Look for the watermark in FILE (at least ~3 s of audio) and print what the "
        "mark says: tenant, response and time when the database knows its id.",
    )
    detect.add_argument("file", metavar="FILE", help="an audio file (wav, flac, mp3, ogg, ...)")
    detect.add_argument("--json", action="store_true", help="print JSON")
    detect.set_defaults(run=run_watermark_detect)


def load_key(settings: Settings) -> Any:
    from parley.trust import WatermarkKey

    trust = settings.trust
    if trust.watermark_key:
        return WatermarkKey.from_hex(trust.watermark_key)
    if not trust.watermark_key_file.exists():
        raise ConfigError(
            f"no watermark key at {trust.watermark_key_file} (the server creates it on first "
            "start; set trust.watermark_key_file)"
        )
    return WatermarkKey.load_or_create(trust.watermark_key_file)


def resolve_mark(database: Any, mark_id: int) -> dict[str, Any] | None:
    """``{"tenant", "response_id", "time"}`` of a payload id, None when not recorded."""
    rows = database.query(
        "SELECT tenant, response_id, created_at FROM watermark_marks WHERE id = :id",
        {"id": mark_id},
    )
    if not rows:
        return None
    tenant, response_id, created = rows[0][0], rows[0][1], rows[0][2]
    return {"tenant": tenant, "response_id": response_id, "time": created}


async def run_watermark_detect(args: argparse.Namespace, console: Console) -> int:
    from parley.audio.containers import decode_upload
    from parley.store import Database
    from parley.trust import detect

    settings = settings_from(args)
    key = load_key(settings)
    data = await asyncio.to_thread(Path(args.file).read_bytes)
    audio = decode_upload(data, name=args.file)
    found = detect(key, audio)
    payload: dict[str, Any] | None = None
    if found.payload is not None:
        with Database(settings.server.database) as database:
            mark = resolve_mark(database, found.payload)
        payload = {"id": found.payload, "tenant": None, "response_id": None, "time": None}
        if mark is not None:
            payload.update(mark)
    body = found.as_dict()
    body["payload"] = payload
    if args.json:
        print(json.dumps(body))
        return 0
    verdict = "marked" if found.detected else "not marked"
    console.print(f"{args.file}: {verdict} (score {found.score:.2f}, p = {found.p_value:.2g})")
    if payload is not None:
        console.print(
            f"  id {payload['id']}  tenant {payload['tenant'] or '?'}  "
            f"response {payload['response_id'] or '?'}  time {payload['time'] or '?'}"
        )
    return 0 if found.detected else 1
