"""A level of ``parley bench realtime`` (many concurrent callers) and a sweep of levels, with the
JSON result they make: the machine, the command line, each level's turns and the SLO answer.

The callers do the measuring (:mod:`parley.bench.caller`); the summaries and the SLO verdict come
from :mod:`parley.bench.report`. It must not import the server: it measures parley from outside.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import shlex
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from parley.bench.caller import Caller, session_url
from parley.bench.line import clock
from parley.bench.records import BenchConfig
from parley.bench.report import evaluate_slo, summarize_level, sweep_answer
from parley.bench.utterances import PACKET_MS, RATE, Utterance
from parley.errors import ConfigError, EngineUnavailableError

__all__ = ["SCHEMA", "check_reachable", "command_line", "run_bench", "run_level"]

SCHEMA = "parley.bench.realtime/1"


async def check_reachable(url: str, api_key: str | None = None) -> None:
    """Fail fast, with one line, when nothing answers at the URL or it refuses the key."""
    target = session_url(url)
    headers = BenchConfig(url, (1,), 1, api_key=api_key).headers()
    try:
        async with connect(
            target, additional_headers=headers, proxy=None, open_timeout=5, compression=None
        ):
            pass
    except InvalidURI as exc:
        raise ConfigError(f"--url is not a WebSocket address: {exc}") from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (pass --api-key or set PARLEY_API_KEY)" if status == 401 else ""
        raise EngineUnavailableError(f"{url} refused the connection: HTTP {status}{hint}") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        reason = str(exc) or type(exc).__name__
        raise EngineUnavailableError(f"cannot reach a Realtime server at {url}: {reason}") from exc


async def run_level(
    config: BenchConfig,
    utterances: Sequence[Utterance],
    sessions: int,
    on_turn: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """``sessions`` concurrent callers, ``config.turns`` turns each; the level as a JSON dict."""
    rng = random.Random(config.seed * 100_003 + sessions)
    delays = [rng.uniform(0.0, 1.0) for _ in range(sessions)]
    callers = [Caller(config, s, utterances, on_turn) for s in range(sessions)]
    started = clock()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.call(d)) for c, d in zip(callers, delays, strict=True)]
    outcomes = [t.result() for t in tasks]
    records = sorted((r for o in outcomes for r in o.records), key=lambda r: (r.session, r.turn))
    turns = [r.to_dict() for r in records]
    errors = [e for o in outcomes for e in o.errors]
    errors += [f"session {r.session} turn {r.turn}: {r.error}" for r in records if r.error]
    level: dict[str, Any] = {
        "sessions": sessions,
        "turns_per_session": config.turns,
        "expected_turns": sessions * config.turns,
        "completed_turns": sum(1 for r in records if r.error is None),
        "wall_s": round(clock() - started, 2),
        "client_lag_ms": round(max((o.lag_ms for o in outcomes), default=0.0), 1),
        "dropped_sessions": sum(1 for o in outcomes if o.dropped),
        "error_count": len(errors),
        "errors": errors,
        "summary": summarize_level(turns),
        "turns": turns,
    }
    level["slo"] = evaluate_slo(level, config.slo_p95_ms)
    return level


async def run_bench(
    config: BenchConfig, utterances: Sequence[Utterance], console: Console
) -> dict[str, Any]:
    """Every level of the sweep (stopping after the first that misses the SLO unless
    ``keep_going``), with rich progress bars; the whole result as a JSON dict. A server that
    cannot be reached shows up as dropped sessions: check first with ``check_reachable``."""
    levels: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("turns"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for n, sessions in enumerate(config.levels):
            if n:
                await asyncio.sleep(1.0)  # let the previous level's sessions wind down
            label = f"{sessions:>4} session" + ("" if sessions == 1 else "s")
            task = progress.add_task(label, total=sessions * config.turns)
            level = await run_level(config, utterances, sessions, partial(progress.advance, task))
            progress.update(task, completed=sessions * config.turns)
            levels.append(level)
            if not level["slo"]["pass"] and not config.keep_going:
                break
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": command_line(config),
        "config": {
            "url": config.url,
            "levels": list(config.levels),
            "turns": config.turns,
            "silence_ms": config.silence_ms,
            "semantic_vad": config.semantic,
            "slo_p95_ms": config.slo_p95_ms,
            "barge_in": config.barge_in,
            "seed": config.seed,
            "clips": [u.id for u in utterances],
            "packet_ms": PACKET_MS,
            "sample_rate": RATE,
        },
        "levels": levels,
        "answer": {
            "max_sessions_within_slo": sweep_answer(levels),
            "slo": (
                f"turn gap minus the {config.silence_ms} ms silence window p95 <= "
                f"{config.slo_p95_ms:g} ms, no underruns, no errors"
            ),
        },
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def command_line(config: BenchConfig) -> str:
    args = ["parley", "bench", "realtime", "--url", config.url, "--turns", str(config.turns)]
    if len(config.levels) == 1:
        args += ["--sessions", str(config.levels[0])]
    else:
        args += ["--sweep", ",".join(map(str, config.levels))]
    if config.semantic is not None:
        args += ["--semantic-vad", config.semantic]
    else:
        args += ["--silence-ms", str(config.silence_ms)]
    args += ["--slo-p95-ms", f"{config.slo_p95_ms:g}"]
    args += ["--seed", str(config.seed)]
    if config.barge_in:
        args.append("--barge-in")
    if config.keep_going:
        args.append("--keep-going")
    return shlex.join(args)
