"""The ``parley`` command: its argument parser, its help text and its entry point.

Errors print as one line (``parley: error: ...``) with a non-zero exit, never a traceback, unless
``--debug`` is given. Commands build engines from the same configuration the server uses; what
each one does lives in :mod:`parley.commands` (and ``parley bench`` in :mod:`parley.bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from parley import __version__
from parley.bench.realtime import add_bench_parser
from parley.commands import (
    EXIT_ERROR,
    EXIT_USAGE,
    run_call,
    run_keys,
    run_models,
    run_prompts,
    run_say,
    run_serve,
    run_transcribe,
    run_voices,
)
from parley.commands.audit import add_audit_parser
from parley.commands.policy import add_policy_parser
from parley.commands.usage import add_usage_parsers
from parley.commands.watermark import add_watermark_parser
from parley.config import PROFILES
from parley.errors import ClientError, ParleyError

__all__ = ["main"]


_DESCRIPTION = (
    "parley: a self-hosted realtime voice AI server, compatible with the OpenAI Realtime API. "
    "Run 'parley COMMAND --help' for a command's options. Errors print as one line; add "
    "--debug to a command to see the traceback."
)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a line never breaks inside a hyphenated word such as --no-auth."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


class _Parser(argparse.ArgumentParser):
    """The help formatter for this parser and, through add_subparsers, every subcommand's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _command(sub: Any, name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with the line its parent's --help lists it by."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".", **kwargs
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML configuration file")
    common.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set llm.model=llama3 (repeatable)",
    )
    common.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="engines where the config names none: neural (Whisper + Piper, the default) or "
        "fast (pocketsphinx + espeak-ng: more callers per core, espeak's languages)",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    parser = _Parser(prog="parley", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    call = _command(
        sub, "call", "talk to parley with a recording; write and print its reply", parents=[common]
    )
    call.add_argument("input", type=Path, help="recording (wav, flac, ogg, mp3)")
    call.add_argument("-o", "--output", type=Path, help="write the spoken reply here")
    call.add_argument("--json", action="store_true", help="print the result as JSON")
    call.add_argument(
        "--realtime",
        action="store_true",
        help="feed the recording at real-time pace instead of as fast as possible",
    )
    call.set_defaults(run=run_call)

    say = _command(sub, "say", "speak text into an audio file", parents=[common])
    say.add_argument("text", help="what to say")
    say.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="audio file to write (wav, flac, ogg, opus, mp3)",
    )
    say.add_argument("--voice", help="voice id, name or language code (see 'parley voices')")
    say.add_argument("--speed", type=float, help="1.0 is normal")
    say.add_argument("--rate", type=int, default=24000, help="sample rate (default 24000)")
    say.set_defaults(run=run_say)

    tr = _command(sub, "transcribe", "print the words in a recording", parents=[common])
    tr.add_argument("input", type=Path, help="recording (wav, flac, ogg, mp3)")
    tr.add_argument("--json", action="store_true", help="print text, words and timings as JSON")
    tr.set_defaults(run=run_transcribe)

    serve = _command(sub, "serve", "run the OpenAI Realtime-compatible server", parents=[common])
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="accept every caller without a key, as the default tenant (local development only)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="routing policy (YAML, docs/policy.md): engines, prices, routes, failover",
    )
    serve.add_argument(
        "--web-demo-tenant",
        metavar="NAME",
        help="let the web page at / get ephemeral keys of tenant NAME for clients on this "
        "machine (web.demo_allow for others); off by default",
    )
    serve.set_defaults(run=run_serve)

    prompts = _command(sub, "prompts", "manage reusable prompt templates", parents=[common])
    actions = prompts.add_subparsers(dest="action", required=True, metavar="ACTION")
    tenant = argparse.ArgumentParser(add_help=False)
    tenant.add_argument(
        "--tenant",
        help="the tenant that owns the templates (default: the one tenant of a server run "
        "with --no-auth)",
    )
    imp = _command(actions, "import", "store templates from TOML files", parents=[common, tenant])
    imp.add_argument("files", nargs="+", type=Path, help="template files (TOML)")
    _command(actions, "list", "list stored templates", parents=[common, tenant])
    for name in ("show", "delete"):
        action = _command(actions, name, f"{name} a template", parents=[common, tenant])
        action.add_argument("id", help="the template's id, e.g. pmpt_support")
        action.add_argument("--version", help="one version (default: the latest)")
    prompts.set_defaults(run=run_prompts)

    keys = _command(sub, "keys", "manage API keys and tenants", parents=[common])
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    owner = argparse.ArgumentParser(add_help=False)
    owner.add_argument("--tenant", required=True, help="the tenant the keys belong to")
    create = _command(
        key_actions, "create", "create a key (and the tenant if new)", parents=[common, owner]
    )
    create.add_argument("--name", help="a label for the key")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--max-sessions", type=int, help="concurrent Realtime sessions")
    create.add_argument("--max-session-seconds", type=int, help="longest Realtime session")
    _command(key_actions, "list", "list a tenant's keys", parents=[common, owner])
    revoke = _command(key_actions, "revoke", "revoke a key", parents=[common, owner])
    revoke.add_argument("key", help="key id or prefix, as 'parley keys list' shows")
    keys.set_defaults(run=run_keys)

    models = _command(
        sub, "models", "fetch weights for the neural engines (needs internet)", parents=[common]
    )
    model_actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    pull = _command(
        model_actions,
        "pull",
        "download a model: whisper:SIZE, piper:VOICE or a hub repository id ORG/NAME",
        parents=[common],
    )
    pull.add_argument(
        "name", help="e.g. whisper:tiny.en, piper:en_US-lessac-medium, facebook/mms-tts-eng"
    )
    pull.add_argument("--dir", type=Path, help="put the files here instead of the shared cache")
    models.set_defaults(run=run_models)

    voices = _command(sub, "voices", "list the TTS voices", parents=[common])
    voices.set_defaults(run=run_voices)
    add_bench_parser(sub)
    add_usage_parsers(sub, common)
    add_policy_parser(sub, common)
    add_audit_parser(sub, common)
    add_watermark_parser(sub, common)
    return parser


def _fail(message: str) -> None:
    """One line on stderr, whatever the message holds (a library's error may span several)."""
    print(" ".join(message.split()), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    try:
        code: int = asyncio.run(args.run(args, console))
        return code
    except ParleyError as exc:
        if args.debug:
            raise
        _fail(f"parley: error: {exc.message}")
        return EXIT_USAGE if isinstance(exc, ClientError) else EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"parley: error:{where} {exc.strerror or exc}")
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            raise
        _fail(
            f"parley: internal error: {type(exc).__name__}: {exc} (run with --debug "
            "for the traceback)"
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
