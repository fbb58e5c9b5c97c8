"""``parley policy``: check a routing policy file; explain which route a request would take."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from parley.commands.options import EXIT_ERROR

__all__ = ["add_policy_parser", "run_policy"]


def add_policy_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``parley policy check`` and ``parley policy explain`` to the CLI's subparsers."""
    summary = "check a routing policy file, or explain the route a request takes"
    policy = sub.add_parser(
        "policy",
        help=summary,
        description=summary[0].upper() + summary[1:] + " (docs/policy.md).",
        parents=[common],
    )
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    check_summary = "check policy files; print FILE: ok, or each error as FILE:LINE: message"
    check = actions.add_parser(
        "check",
        help=check_summary,
        description=check_summary[0].upper() + check_summary[1:] + ".",
        parents=[common],
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="policy file (YAML)")
    explain_summary = (
        "show the route a request takes: the rule that matched, the personal data found "
        "(masked) and the engine chain"
    )
    explain = actions.add_parser(
        "explain",
        help=explain_summary,
        description=explain_summary[0].upper() + explain_summary[1:] + ".",
        parents=[common],
    )
    explain.add_argument(
        "--policy", dest="policy_file", type=Path, required=True, metavar="FILE", help="policy"
    )
    explain.add_argument("--tenant", required=True, help="the caller's tenant")
    explain.add_argument("--text", required=True, help="what the user said or wrote")
    explain.add_argument("--key-id", default="", help="the caller's API key id")
    explain.add_argument("--language", help="the session's language (ISO 639-1)")
    explain.add_argument(
        "--sticky-route", help="a sticky route the session already took (it is taken again)"
    )
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    policy.set_defaults(run=run_policy)


async def run_policy(args: argparse.Namespace, console: Console) -> int:
    match args.action:
        case "check":
            return _check(args.files)
        case "explain":
            return _explain(args, console)
    raise AssertionError(args.action)


def _check(files: list[Path]) -> int:
    from parley.routing.policy import check_policy

    failed = False
    for path in files:
        errors = check_policy(path)
        # Plain print: one error per line, never wrapped, as editors and CI read them.
        for line in errors or [f"{path}: ok"]:
            print(line)
        failed = failed or bool(errors)
    return EXIT_ERROR if failed else 0


def _explain(args: argparse.Namespace, console: Console) -> int:
    from parley.routing.decide import decide
    from parley.routing.policy import STAGES, load_policy

    policy = load_policy(args.policy_file)
    decision = decide(
        policy,
        tenant=args.tenant,
        text=args.text,
        sticky_route=args.sticky_route,
        key_id=args.key_id,
        language=args.language,
    )
    chains = {stage: list(decision.chains.get(stage, ())) for stage in STAGES}
    if args.json:
        result = {
            "route": decision.route,
            "rule": decision.rule,
            "sticky": decision.sticky,
            "pii": [{"kind": f.kind, "value": f.masked} for f in decision.findings],
            "chain": chains,
        }
        print(json.dumps(result, indent=2))
        return 0

    def engine(name: str) -> str:
        spec = policy.engines[name]
        return f"{name} ({spec.engine}, {spec.location})"

    rule = decision.rule or {}
    rows = [
        ["route", decision.route],
        ["rule", "; ".join(f"{k}: {', '.join(v)}" for k, v in rule.items()) or "-"],
        ["sticky", "yes" if decision.sticky else "no"],
        ["pii", ", ".join(f"{f.kind} {f.masked}" for f in decision.findings) or "none"],
    ]
    for stage, chain in chains.items():
        shown = " -> ".join(engine(name) for name in chain) or "the configured engine"
        rows.append([stage, shown])
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        console.print(Text(f"{label.ljust(width)}  {value}"), soft_wrap=True)
    return 0
