"""``parley prompts``: import, list, show and delete a tenant's prompt templates."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from parley.bench.report import print_table
from parley.commands.options import settings_from
from parley.errors import ClientError

__all__ = ["run_prompts"]


def _tenant_name(tenant: str) -> str:
    return f"tenant {tenant!r}" if tenant else "the default tenant (that of --no-auth servers)"


def _unknown_prompt(database: Any, prompt_id: str, tenant: str, exc: ClientError) -> ClientError:
    """The store's error, plus where the prompt is when another tenant has it (the usual slip:
    imported with --tenant, shown without)."""
    rows = database.query(
        "SELECT DISTINCT tenant FROM prompt_templates WHERE id = :id AND tenant != :tenant"
        " ORDER BY tenant",
        {"id": prompt_id, "tenant": tenant},
    )
    others = [row["tenant"] for row in rows]
    if not others:
        return ClientError(f"{exc.message} for {_tenant_name(tenant)}", param=exc.param)
    hint = " or ".join(f"--tenant {name}" if name else "no --tenant" for name in others[:3])
    return ClientError(
        f"{exc.message} for {_tenant_name(tenant)}; {_tenant_name(others[0])} has it: try {hint}",
        param=exc.param,
    )


async def run_prompts(args: argparse.Namespace, console: Console) -> int:
    from parley.store import Database, PromptStore, load_template_file

    settings = settings_from(args)
    tenant = args.tenant or ""
    with Database(settings.server.database) as database:
        store = PromptStore(database, tenant)
        match args.action:
            case "import":
                for path in args.files:
                    template = store.put(load_template_file(path))
                    console.print(
                        f"imported {template.id} version {template.version} for "
                        f"{_tenant_name(tenant)}",
                        markup=False,
                    )
            case "list":
                rows = [
                    [
                        template.id,
                        template.version,
                        ", ".join(t.version for t in store.versions(template.id)),
                        template.description,
                    ]
                    for template in store.list()
                ]
                if not rows:
                    console.print(f"no prompt templates for {_tenant_name(tenant)}", markup=False)
                    return 0
                headers = ["id", "latest version", "versions", "description"]
                print_table(console, headers, rows, wrap={2, 3})
            case "show":
                try:
                    template = store.get(args.id, args.version)
                except ClientError as exc:
                    if exc.param != "prompt.id":
                        raise
                    raise _unknown_prompt(database, args.id, tenant, exc) from exc
                console.print_json(
                    json.dumps(
                        {
                            "id": template.id,
                            "version": template.version,
                            "description": template.description,
                            "instructions": template.instructions,
                            "variables": {
                                v.name: None if v.default is None else str(v.default)
                                for v in template.variables
                            },
                        }
                    )
                )
            case "delete":
                try:
                    store.delete(args.id, args.version)
                except ClientError as exc:
                    if exc.param != "prompt.id":
                        raise
                    raise _unknown_prompt(database, args.id, tenant, exc) from exc
                console.print(
                    f"deleted {args.id}" + (f" version {args.version}" if args.version else ""),
                    markup=False,
                )
    return 0
