"""``parley bench realtime``: many concurrent callers on the Realtime API, measured as they hear it;
and ``parley bench report``, which redraws a run from its JSON.

This module is the command line: its options and what the commands print. The load test lives
beside it: the configuration and records in :mod:`parley.bench.records`, the clips in
:mod:`parley.bench.utterances`, a caller's socket in :mod:`parley.bench.line`, a caller in
:mod:`parley.bench.caller`, a level and a sweep in :mod:`parley.bench.sweep`; summaries, the SLO,
the table and the PNG in :mod:`parley.bench.report`. Their public names are importable from here
too. It must not import the server: it measures parley from outside, as any client would.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from parley.bench.caller import session_url
from parley.bench.records import BargeIn, BenchConfig, Playback, TurnRecord, simulate_playback
from parley.bench.report import print_results, require_matplotlib
from parley.bench.sweep import check_reachable, run_bench, run_level
from parley.bench.utterances import Utterance, load_utterances, prepare_utterance
from parley.errors import ConfigError

__all__ = [
    "BargeIn",
    "BenchConfig",
    "Playback",
    "TurnRecord",
    "Utterance",
    "add_bench_parser",
    "check_reachable",
    "load_utterances",
    "prepare_utterance",
    "run_bench",
    "run_level",
    "session_url",
    "simulate_playback",
]


def _levels(args: argparse.Namespace) -> tuple[int, ...]:
    if args.sweep is None:
        levels: tuple[int, ...] = (args.sessions,)
    else:
        try:
            levels = tuple(int(x) for x in args.sweep.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"--sweep expects counts like 1,5,10, got {args.sweep!r}") from None
    if not levels or min(levels) < 1:
        raise ConfigError("session counts must be at least 1")
    return levels


async def _run_realtime(args: argparse.Namespace, console: Console) -> int:
    if args.turns < 1:
        raise ConfigError("--turns must be at least 1")
    config = BenchConfig(
        url=args.url,
        levels=_levels(args),
        turns=args.turns,
        silence_ms=0 if args.semantic_vad else args.silence_ms,
        semantic=args.semantic_vad,
        slo_p95_ms=args.slo_p95_ms,
        barge_in=args.barge_in,
        seed=args.seed,
        keep_going=args.keep_going,
        api_key=args.api_key or os.environ.get("PARLEY_API_KEY") or None,
    )
    if args.png is not None:
        require_matplotlib()
    # Before any clip is decoded: a wrong URL or key fails at once.
    await check_reachable(config.url, config.api_key)
    utterances, skipped = await load_utterances(args.clips, args.max_clip_s, args.silence_ms)
    if skipped:
        console.print(f"skipped clips with pauses (several turns each): {', '.join(skipped)}")
    result = await run_bench(config, utterances, console)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if args.png is not None:
        from parley.bench.report import write_png

        write_png(result, args.png)
    print_results(console, result)
    answer = result["answer"]["max_sessions_within_slo"]
    console.print(
        f"largest level within the SLO ({result['answer']['slo']}): "
        + ("none" if answer is None else f"{answer} session" + ("" if answer == 1 else "s"))
    )
    for path in (args.json, args.png):
        if path is not None:
            console.print(f"wrote {path}")
    return 0 if answer is not None else 1


async def _run_report(args: argparse.Namespace, console: Console) -> int:
    from parley.bench.report import load_result, write_png

    result = load_result(args.result)
    output = args.output or args.result.with_suffix(".png")
    write_png(result, output)
    print_results(console, result)
    console.print(f"wrote {output}")
    return 0


def add_bench_parser(subparsers: Any) -> None:
    """Add ``parley bench realtime`` and ``parley bench report`` to the CLI's subparsers."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks")
    summary = "load-test a Realtime server, time the engines, redraw a load test's report"
    bench = subparsers.add_parser(
        "bench", parents=[debug], help=summary, description=summary[0].upper() + summary[1:] + "."
    )
    actions = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    from parley.bench import engines as engine_bench

    engine_bench.add_parser(actions, [debug])

    rt = actions.add_parser(
        "realtime",
        parents=[debug],
        help="many concurrent callers speaking clips in real time; turn gaps, stages, underruns",
        description="Many concurrent callers speak clips to a running Realtime server in real "
        "time; the table shows each level's turn gap (last speech sample sent -> first reply "
        "audio), the server's stages, underruns and the SLO verdict. Drawing --png needs the "
        "bench extra: pip install 'parley[bench]'.",
    )
    rt.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="Realtime endpoint")
    rt.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    rt.add_argument("--turns", type=int, default=3, help="turns per session (default 3)")
    rt.add_argument("--sweep", metavar="N,N,...", help="run at each concurrency, e.g. 1,5,10,20")
    rt.add_argument(
        "--keep-going", action="store_true", help="run every sweep level even after an SLO miss"
    )
    rt.add_argument("--clips", type=Path, help="folder with manifest.jsonl (default shared clips)")
    rt.add_argument(
        "--max-clip-s", type=float, default=8.0, help="skip clips longer than this (default 8)"
    )
    rt.add_argument(
        "--slo-p95-ms",
        type=float,
        default=500.0,
        help="limit on the p95 turn gap minus the silence window, in ms (default 500)",
    )
    rt.add_argument(
        "--silence-ms",
        type=int,
        default=500,
        help="server VAD silence_duration_ms set on each session (default 500)",
    )
    rt.add_argument(
        "--semantic-vad",
        choices=("low", "medium", "high", "auto"),
        metavar="EAGERNESS",
        help="semantic_vad at this eagerness instead of server_vad (the gap is then judged "
        "whole: no silence window is subtracted)",
    )
    rt.add_argument(
        "--barge-in",
        action="store_true",
        help="in each session's last turn, speak over a long reply and time how fast it stops",
    )
    rt.add_argument("--seed", type=int, default=0, help="seed for the start stagger")
    rt.add_argument("--api-key", help="API key for the server (default $PARLEY_API_KEY)")
    rt.add_argument("--json", type=Path, help="write the full result here")
    rt.add_argument(
        "--png",
        type=Path,
        help="draw the report here (needs matplotlib: pip install 'parley[bench]')",
    )
    rt.set_defaults(run=_run_realtime)

    report = actions.add_parser(
        "report",
        parents=[debug],
        help="redraw the PNG report from a bench JSON result",
        description="Redraw the PNG report and print the table from the JSON that 'parley bench "
        "realtime --json' wrote. Needs matplotlib: pip install 'parley[bench]'.",
    )
    report.add_argument("result", type=Path, help="JSON written by 'parley bench realtime --json'")
    report.add_argument("-o", "--output", type=Path, help="PNG to write (default RESULT.png)")
    report.set_defaults(run=_run_report)
