"""The ``parley`` command.

Errors print as one line (``parley: error: ...``) with a non-zero exit, never a traceback, unless
``--debug`` is given. Commands build engines from the same configuration the server uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from rich.console import Console
from rich.table import Table

from parley import __version__
from parley.audio.files import read_audio, write_audio
from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.bench.realtime import add_bench_parser
from parley.bench.report import print_table
from parley.config import Settings, load_settings
from parley.engines.base import SpeechOptions
from parley.engines.registry import build_asr, build_engines, build_tts, build_vad, warm_up
from parley.errors import ClientError, InputTooLargeError, ParleyError, SilentAudioError
from parley.pipeline import (
    Pipeline,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    SpeechStarted,
    StageError,
    TranscriptFinal,
)
from parley.pipeline.segments import find_speech

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_ERROR = 1
# Frames the CLI feeds, as a client would stream them.
PACKET_MS = 20


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return load_settings(args.config, overrides=overrides)


# --- parley call -------------------------------------------------------------------------------


@dataclass
class _Turn:
    transcript: str = ""
    reply: str = ""
    heard_text: str | None = None
    status: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    audio_ms: float = 0.0
    heard_ms: float | None = None
    timeline: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


async def _call(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args)
    recording = read_audio(args.input)
    engines = build_engines(settings)
    await warm_up(engines)
    pipeline = Pipeline(engines, settings, input_rate=recording.sample_rate)
    turns: dict[str, _Turn] = {}  # by response id
    transcripts: list[str] = []
    errors: list[str] = []
    heard_speech = False

    async def collect() -> None:
        nonlocal heard_speech
        async for event in pipeline.events():
            match event:
                case SpeechStarted():
                    heard_speech = True
                case TranscriptFinal(text=text):
                    transcripts.append(text)
                case ResponseAudio(response_id=rid, frame=frame):
                    turns.setdefault(rid, _Turn()).audio.append(frame.samples)
                case ResponseDone() as done:
                    turn = turns.setdefault(done.response_id, _Turn())
                    turn.transcript = transcripts[-1] if transcripts else ""
                    turn.reply, turn.status, turn.audio_ms = (
                        done.text.strip(),
                        done.status,
                        done.audio_ms,
                    )
                    turn.timeline = done.timeline.to_dict()
                    if done.error is not None:
                        turn.error = done.error.message
                case PlaybackInterrupted(response_id=rid) as cut:
                    turn = turns.setdefault(rid, _Turn())
                    turn.heard_ms, turn.heard_text = cut.heard_ms, cut.heard_text
                case StageError(stage=stage, error=error):
                    errors.append(f"{stage}: {error.message}")
                case _:
                    pass

    n = recording.sample_rate * PACKET_MS // 1000
    async with asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        async with pipeline:
            start = time.perf_counter()
            for i in range(0, len(recording), n):
                await pipeline.push(Frame(recording.samples[i : i + n], recording.sample_rate))
                if args.realtime:
                    due = start + (i + n) / recording.sample_rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                else:
                    await pipeline.settle()
            # Trailing silence lets the turn end as it would on a live line.
            tail = settings.turn_detection.silence_duration_ms + 2 * PACKET_MS
            for _ in range(tail // PACKET_MS):
                await pipeline.push(Frame.silence(PACKET_MS, recording.sample_rate))
                if args.realtime:
                    await asyncio.sleep(PACKET_MS / 1000)
                else:
                    await pipeline.settle()
            await pipeline.end_of_input()

    if not heard_speech:
        raise SilentAudioError(f"no speech found in {args.input}")
    replies = list(turns.values())
    audio = _reply_audio(replies, pipeline.output_rate)
    if args.output is not None and len(audio):
        write_audio(args.output, Frame(audio, pipeline.output_rate))
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "input": str(args.input),
                    "output": str(args.output) if args.output is not None and len(audio) else None,
                    "turns": [_turn_json(t) for t in replies],
                    "unanswered_transcripts": transcripts[len(replies) :],
                    "errors": errors,
                }
            )
        )
    else:
        _print_call(
            console,
            replies,
            errors,
            args.output if len(audio) else None,
            len(audio) / pipeline.output_rate,
        )
    return 0 if replies and not errors else EXIT_ERROR


def _reply_audio(replies: list[_Turn], rate: int) -> np.ndarray:
    """Each reply as it was heard (cut where the caller interrupted), 300 ms apart."""
    parts: list[np.ndarray] = []
    for turn in replies:
        if not turn.audio:
            continue
        samples = np.concatenate(turn.audio)
        if turn.heard_ms is not None:
            samples = samples[: int(turn.heard_ms * rate / 1000)]
        parts += [samples, np.zeros(rate * 3 // 10, np.int16)]
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.int16)


def _turn_json(turn: _Turn) -> dict[str, Any]:
    return {
        "transcript": turn.transcript,
        "reply": turn.reply,
        "status": turn.status,
        "interrupted": turn.heard_ms is not None,
        "heard_text": turn.heard_text if turn.heard_ms is not None else turn.reply,
        "audio_ms": round(turn.audio_ms, 1),
        "heard_ms": round(turn.heard_ms if turn.heard_ms is not None else turn.audio_ms, 1),
        "timeline": turn.timeline,
        "error": turn.error,
    }


def _print_call(
    console: Console, replies: list[_Turn], errors: list[str], output: Path | None, seconds: float
) -> None:
    for i, turn in enumerate(replies, 1):
        console.print(f"[bold]turn {i}[/bold]")
        console.print(f"  [cyan]you[/cyan]     {turn.transcript or '(nothing recognised)'}")
        console.print(f"  [green]parley[/green]  {turn.reply or '(no reply)'}")
        if turn.heard_ms is not None:
            console.print(
                f"  [yellow]interrupted after {turn.heard_ms:.0f} ms of "
                f"{turn.audio_ms:.0f} ms; heard:[/yellow] {turn.heard_text}"
            )
        if turn.error:
            console.print(f"  [red]error[/red]   {turn.error}")
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        table.add_column("stage")
        table.add_column("ms", justify="right")
        stages: dict[str, float] = turn.timeline.get("stages_ms", {})
        for name, value in stages.items():
            table.add_row(name, f"{value:.1f}")
        latency = turn.timeline.get("response_latency_ms")
        if latency is not None:
            table.add_row("[bold]end of turn -> first audio[/bold]", f"[bold]{latency:.1f}[/bold]")
        console.print(table)
    for error in errors:
        console.print(f"[red]error[/red] {error}")
    if output is not None:
        console.print(f"reply audio: {output} ({seconds:.1f} s)")


# --- parley say / transcribe / voices ------------------------------------------------------------


async def _say(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args)
    text = args.text.strip()
    if not text:
        raise ClientError("nothing to say: the text is empty")
    limit = settings.pipeline.max_speech_chars
    if len(text) > limit:
        raise InputTooLargeError(f"text is {len(text)} characters; the limit is {limit}")
    tts = build_tts(settings.tts)
    options = SpeechOptions(
        voice=args.voice or settings.tts.voice,
        speed=args.speed or settings.tts.speed,
        sample_rate=args.rate,
    )
    chunks = [frame.samples async for frame in tts.synthesize(text, options)]
    if not chunks:
        raise ClientError("the voice produced no audio for this text")
    frame = Frame(np.concatenate(chunks), args.rate)
    write_audio(args.output, frame)
    console.print(f"wrote {args.output} ({frame.duration_s:.2f} s at {args.rate} Hz)")
    return 0


async def _transcribe(args: argparse.Namespace, console: Console) -> int:
    settings = _settings(args)
    recording = read_audio(args.input)
    speech = await find_speech(
        build_vad(settings.vad), recording, threshold=settings.turn_detection.threshold
    )
    if not speech:
        raise SilentAudioError(f"no speech found in {args.input}")
    asr = build_asr(settings.asr)
    transcript = await asr.transcribe(
        resample(recording, asr.sample_rate), language=settings.asr.language
    )
    if not transcript.text.strip():
        raise SilentAudioError(f"no speech recognised in {args.input}")
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "text": transcript.text,
                    "language": transcript.language or settings.asr.language,
                    "duration_s": round(recording.duration_s, 3),
                    "words": [
                        {"word": w.text, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
                        for w in transcript.words
                    ],
                }
            )
        )
    else:
        console.print(transcript.text, markup=False)
    return 0


async def _models(args: argparse.Namespace, console: Console) -> int:
    from parley.models import pull, resolve

    ref = resolve(args.name)  # a bad name fails before any network call
    console.print(f"fetching {args.name} from {ref.repo_id} ...")
    path = await asyncio.to_thread(pull, args.name, directory=args.dir)
    setting = str(path) if args.dir is not None else ref.setting
    section, engine = ("asr", "whisper") if ref.kind == "whisper" else ("tts", ref.kind)
    if ref.kind == "repo":
        engine = "vits"
    console.print(f"saved in {path}", markup=False, soft_wrap=True)
    console.print(
        f'use it with: --set {section}.engine={engine} --set {section}.options.model="{setting}"',
        markup=False,
        soft_wrap=True,
    )
    return 0


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM end the process with status 0 after the graceful
    shutdown (uvicorn re-raises the signal, which reads as a crash to a supervisor)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


async def _serve(args: argparse.Namespace, console: Console) -> int:
    from parley.logs import configure_logging
    from parley.server.app import WS_MAX_BYTES, create_app
    from parley.store import Database

    settings = _settings(args)
    configure_logging(settings.log_level)  # observability (issue 4): JSON lines on stderr
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    engines = build_engines(settings)
    await warm_up(engines)
    database = Database(settings.server.database)
    app = create_app(settings, engines, database=database, auth=not args.no_auth)
    if args.no_auth:
        console.print(
            "[bold red]WARNING: authentication is OFF (--no-auth). Anyone who can reach "
            f"{host}:{port} can use this server. For local development only.[/bold red]"
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


def _tenant_name(tenant: str) -> str:
    return f"tenant {tenant!r}" if tenant else "the default tenant (that of --no-auth servers)"


def _unknown_prompt(database: Any, prompt_id: str, tenant: str, exc: ClientError) -> ClientError:
    """The store's error, plus where the prompt is when another tenant has it (the usual slip:
    imported with --tenant, shown without)."""
    rows = database.query(
        "SELECT DISTINCT tenant FROM prompt_templates WHERE id = ? AND tenant != ? ORDER BY tenant",
        (prompt_id, tenant),
    )
    others = [row["tenant"] for row in rows]
    if not others:
        return ClientError(f"{exc.message} for {_tenant_name(tenant)}", param=exc.param)
    hint = " or ".join(f"--tenant {name}" if name else "no --tenant" for name in others[:3])
    return ClientError(
        f"{exc.message} for {_tenant_name(tenant)}; {_tenant_name(others[0])} has it: try {hint}",
        param=exc.param,
    )


async def _prompts(args: argparse.Namespace, console: Console) -> int:
    from parley.store import Database, PromptStore, load_template_file

    settings = _settings(args)
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


async def _keys(args: argparse.Namespace, console: Console) -> int:
    from parley.store import Database
    from parley.store.keys import KeyStore, Limits

    settings = _settings(args)
    with Database(settings.server.database) as database:
        keys = KeyStore(database)
        match args.action:
            case "create":
                limits = Limits(args.rpm, args.max_sessions, args.max_session_seconds)
                token, key = keys.create_key(args.tenant, name=args.name or "", limits=limits)
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
                console.print(f"revoked {key.id} ({key.prefix}...) of tenant {args.tenant}")
    return 0


async def _voices(args: argparse.Namespace, console: Console) -> int:
    tts = build_tts(_settings(args).tts)
    rows = [[voice.id, voice.name, voice.language] for voice in tts.voices()]
    print_table(console, ["id", "name", "language"], rows, wrap={1})
    return 0


# --- entry point -------------------------------------------------------------------------------

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
    call.set_defaults(run=_call)

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
    say.set_defaults(run=_say)

    tr = _command(sub, "transcribe", "print the words in a recording", parents=[common])
    tr.add_argument("input", type=Path, help="recording (wav, flac, ogg, mp3)")
    tr.add_argument("--json", action="store_true", help="print text, words and timings as JSON")
    tr.set_defaults(run=_transcribe)

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
    serve.set_defaults(run=_serve)

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
    prompts.set_defaults(run=_prompts)

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
    keys.set_defaults(run=_keys)

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
    models.set_defaults(run=_models)

    voices = _command(sub, "voices", "list the TTS voices", parents=[common])
    voices.set_defaults(run=_voices)
    add_bench_parser(sub)
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
