"""``parley audit verify|checkpoint|prove|export|key``: the tamper-evident audit log, from a shell.

Each opens the server's database (``server.database``) and the audit key
(``trust.audit_key_file``), so it works beside a running server. ``verify`` prints
``ok: N records, root HEX`` or ``first bad record: index N (0-based), id ID`` and exits 1;
the other commands print what an auditor keeps: the signed checkpoint, an inclusion proof (JSON),
the records (JSON Lines) and the note verifier key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from parley.commands.options import EXIT_ERROR, settings_from
from parley.commands.usage import parse_since
from parley.errors import ConfigError, NotFoundError

__all__ = ["add_audit_parser", "run_audit"]


def add_audit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``parley audit ACTION`` to the CLI's subparsers."""

    def command(parent: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            parents=[common],
            **kwargs,
        )
        return parser

    audit = command(sub, "audit", "verify and read the tamper-evident audit log")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = command(
        actions,
        "verify",
        "recompute every record, the Merkle tree and every signed checkpoint; exit 1 naming "
        "the first bad record",
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a checkpoint published earlier: the log must still contain and agree with it",
    )
    command(actions, "checkpoint", "sign a checkpoint if the log grew; print the latest")
    prove = command(actions, "prove", "print a record's inclusion proof (JSON)")
    prove.add_argument("record_id", metavar="RECORD_ID", help="the record's id, aud_...")
    export = command(actions, "export", "print the records, oldest first")
    export.add_argument("--since", help="YYYY-MM-DD or an ISO datetime (UTC unless it says)")
    export.add_argument(
        "--jsonl", action="store_true", required=True, help="one JSON object a line"
    )
    command(actions, "key", "print the note verifier key (NAME+ID+BASE64)")
    audit.set_defaults(run=run_audit)


async def run_audit(args: argparse.Namespace, console: Console) -> int:
    from parley.store import Database
    from parley.trust.audit import AuditLog, AuditSigner

    settings = settings_from(args)
    key_file = settings.trust.audit_key_file
    if args.action == "key":
        print(AuditSigner.load_or_create(key_file).public_key_text())
        return 0
    if args.action == "export":
        signer = AuditSigner.generate()  # reading needs no key
    elif not key_file.exists():
        raise ConfigError(f"no audit key at {key_file} (set trust.audit_key_file)")
    else:
        signer = AuditSigner.load_or_create(key_file)
    given = args.checkpoint.read_text() if getattr(args, "checkpoint", None) else None
    with Database(settings.server.database) as database:
        log = AuditLog(database, signer)
        match args.action:
            case "verify":
                result = log.verify(given)
                print(result.line())
                if not result.ok:
                    print(f"parley: audit: {result.reason}", file=sys.stderr)
                    return EXIT_ERROR
            case "checkpoint":
                print(log.checkpoint(), end="")
            case "prove":
                try:
                    proof = log.prove(args.record_id)
                except KeyError:
                    raise NotFoundError(f"no audit record {args.record_id!r}") from None
                print(json.dumps(proof, indent=2, ensure_ascii=False))
            case "export":
                since = parse_since(args.since) if args.since else None
                for record in log.export(since):
                    print(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
            case _:
                raise AssertionError(args.action)
    return 0
