"""What every ``parley`` command shares: the settings it runs with (``--config`` and ``--set``
over the environment and defaults) and the exit statuses it returns.
"""

from __future__ import annotations

import argparse
from typing import Any

from parley.config import Settings, load_settings
from parley.errors import ClientError

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "audit_log", "settings_from"]

EXIT_USAGE = 2
EXIT_ERROR = 1


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of ``--config``, with each ``--set KEY=VALUE`` applied over them."""
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    if getattr(args, "policy", None) is not None:  # parley serve --policy FILE
        overrides["policy.file"] = args.policy
    if getattr(args, "web_demo_tenant", None):  # parley serve --web-demo-tenant NAME
        overrides["web.demo_tenant"] = args.web_demo_tenant
    return load_settings(args.config, overrides=overrides)


def audit_log(settings: Settings, database: Any) -> Any:
    """The audit log in ``database``, signed with the key of ``trust.audit_key_file`` (created
    on first use): what a command that changes keys or budgets appends to."""
    from parley.trust.audit import AuditLog, AuditSigner

    return AuditLog(database, AuditSigner.load_or_create(settings.trust.audit_key_file))
