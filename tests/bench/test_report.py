"""Level summaries, the SLO verdict, the sweep's answer, the table and the PNG, from JSON alone."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from parley.bench.realtime import add_bench_parser
from parley.bench.report import (
    STAGES,
    evaluate_slo,
    fit_table,
    load_result,
    print_results,
    print_table,
    summarize_level,
    sweep_answer,
    write_png,
)
from parley.errors import ConfigError


def turn(
    gap: float, *, error: str | None = None, underruns: int = 0, **extra: Any
) -> dict[str, Any]:
    stages = {"endpointing": 500.0, "asr_final": 20.0, "llm_first_token": 5.0}
    stages |= {"tts_first_audio": 10.0, "send": 0.1}
    return {
        "session": 0,
        "turn": 0,
        "kind": "speech",
        "turn_gap_ms": None if error else gap,
        "turn_gap_minus_silence_ms": None if error else gap - 500,
        "stages_ms": {} if error else stages,
        "server_turn_gap_ms": None if error else sum(stages.values()),
        "response_latency_ms": None,
        "socket_send_ms": None,
        "overhead_ms": None if error else gap - sum(stages.values()),
        "underruns": underruns,
        "underrun_ms": 25.0 * underruns,
        "error": error,
        "barge_in": None,
        **extra,
    }


def level(
    sessions: int, turns: list[dict[str, Any]], *, limit: float = 500, dropped: int = 0
) -> dict[str, Any]:
    errors = [t["error"] for t in turns if t["error"]]
    out: dict[str, Any] = {
        "sessions": sessions,
        "turns_per_session": 1,
        "expected_turns": len(turns),
        "completed_turns": sum(1 for t in turns if t["error"] is None),
        "dropped_sessions": dropped,
        "error_count": len(errors),
        "errors": errors,
        "summary": summarize_level(turns),
        "turns": turns,
    }
    out["slo"] = evaluate_slo(out, limit)
    return out


def result(levels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "machine": {"platform": "test", "cores": 2, "processor": "x"},
        "created": "2025-01-01T00:00:00+00:00",
        "config": {"silence_ms": 500, "slo_p95_ms": 500},
        "levels": levels,
        "answer": {"max_sessions_within_slo": sweep_answer(levels)},
    }


def test_summary_percentiles_of_successful_turns_only() -> None:
    turns = [turn(g) for g in (600.0, 620.0, 640.0, 660.0)] + [turn(0, error="timeout")]
    summary = summarize_level(turns)
    assert summary["turns"] == 4
    assert summary["turn_gap_ms"]["n"] == 4
    assert summary["turn_gap_ms"]["p50"] == pytest.approx(630.0)
    assert summary["turn_gap_minus_silence_ms"]["max"] == pytest.approx(160.0)
    assert set(summary["stages_ms"]) == set(STAGES)
    assert summary["stages_ms"]["asr_final"]["mean"] == pytest.approx(20.0)
    assert summary["barge_in"] is None


def test_summary_of_nothing_is_json_safe() -> None:
    summary = summarize_level([turn(0, error="dropped")])
    assert summary["turn_gap_ms"] == {"n": 0, "p50": None, "p95": None, "mean": None, "max": None}
    json.dumps(summary, allow_nan=False)


def test_summary_counts_barge_ins() -> None:
    barge = {"stop_ms": 0.0, "already_complete": True, "status": "completed", "detect_ms": 300.0}
    cut = {"stop_ms": 80.0, "already_complete": False, "status": "cancelled", "detect_ms": None}
    summary = summarize_level([turn(600, barge_in=barge), turn(600, barge_in=cut)])
    assert summary["barge_in"]["n"] == 2
    assert summary["barge_in"]["already_complete"] == 1
    assert summary["barge_in"]["cancelled"] == 1
    assert summary["barge_in"]["stop_ms"]["max"] == 80.0
    assert summary["barge_in"]["detect_ms"]["n"] == 1


def test_slo_passes_within_limit_and_says_why_it_fails() -> None:
    assert level(1, [turn(600.0)])["slo"]["pass"] is True
    slow = level(5, [turn(600.0), turn(1200.0)])["slo"]
    assert slow["pass"] is False and "p95" in slow["reasons"][0]
    starved = level(5, [turn(600.0, underruns=2)])["slo"]
    assert starved["pass"] is False and "underruns" in starved["reasons"][0]
    failed = level(5, [turn(600.0), turn(0, error="no reply within 20 s")])["slo"]
    assert failed["pass"] is False
    assert any("errors" in r for r in failed["reasons"])
    assert any("incomplete" in r for r in failed["reasons"])
    assert level(5, [turn(600.0)], dropped=1)["slo"]["pass"] is False
    assert level(5, [turn(0, error="x")])["slo"]["reasons"][0] == "no turn completed"


def test_sweep_answer_is_the_largest_level_before_the_first_miss() -> None:
    ok, bad = [turn(600.0)], [turn(2000.0)]
    assert sweep_answer([level(1, ok), level(5, ok), level(10, bad)]) == 5
    assert sweep_answer([level(1, ok), level(5, bad), level(10, ok)]) == 1
    assert sweep_answer([level(1, bad)]) is None
    assert sweep_answer([]) is None


def printed(width: int, draw: Callable[[Console], None]) -> str:
    out = io.StringIO()
    draw(Console(file=out, width=width))
    return out.getvalue()


SWEEP = result(
    [
        level(1, [turn(480.0), turn(490.0)]),  # replies within the silence window: below 0
        level(5, [turn(600.0), turn(2000.0, underruns=2)]),
        level(10, [turn(16064.0), turn(18017.0)]),
        level(20, [turn(26064.0), turn(28017.0)]),
    ]
)


@pytest.mark.parametrize("width", [250, 120, 80, 40])
def test_results_show_every_figure_whole_at_any_width(width: int) -> None:
    text = printed(width, lambda c: print_results(c, SWEEP))
    assert "…" not in text
    lines = text.splitlines()
    for figure in ("-15 / -10", "1300 / 1930", "27040 / 27919", "-50 / -46", "2/2"):
        assert any(figure in line for line in lines), f"{figure!r} cut at {width}:\n{text}"
    # The SLO's reasons, whatever the layout.
    flat = " ".join(text.split())
    assert "pass" in flat and "fail: p95 1430 ms > 500 ms; 2 underruns (50 ms)" in flat
    # The gap column says what it is, and the footnote says why it can be negative.
    assert "gap minus 500 ms silence" in flat
    assert "Below 0 is normal" in flat and "silence window began earlier" in flat


def test_results_layout_follows_the_width() -> None:
    wide = printed(250, lambda c: print_results(c, SWEEP))
    assert any(line.split()[:2] == ["5", "2/2"] for line in wide.splitlines())  # row per level
    turned = printed(80, lambda c: print_results(c, SWEEP))
    assert max(map(len, turned.splitlines())) <= 80
    header = next(line for line in turned.splitlines() if "1 session" in line)
    assert header.split() == ["1", "session", "5", "sessions", "10", "sessions", "20", "sessions"]
    assert "SLO at 5 sessions: fail: p95 1430 ms" in turned
    blocks = printed(40, lambda c: print_results(c, SWEEP))
    assert "10 sessions" in blocks.splitlines()


def test_results_label_the_gap_by_the_configured_silence() -> None:
    data = result([level(1, [turn(600.0)])])
    data["config"]["silence_ms"] = 300
    text = printed(250, lambda c: print_results(c, data))
    assert "gap minus 300 ms silence" in text and "gap - " not in text


IDS = [f"key_{'x' * 16}{i}" for i in range(3)]
ROWS = [
    [i, f"sk-parley-{n}...", "a rather long name for a key " * 2, "rpm 600"]
    for n, i in enumerate(IDS)
]


@pytest.mark.parametrize("width", [200, 80, 50, 30, 10])
def test_print_table_never_cuts_or_wraps_an_id(width: int) -> None:
    text = printed(
        width, lambda c: print_table(c, ["id", "prefix", "name", "limits"], ROWS, wrap={2})
    )
    lines = text.splitlines()
    for row in ROWS:
        assert row[0] in lines or any(line.split()[:2] == row[:2] for line in lines), text
        assert any(row[1] in line for line in lines)
    assert "…" not in text


def test_fit_table_wraps_only_the_wrap_columns_then_gives_up() -> None:
    headers = ["id", "description"]
    rows = [["pmpt_support", "one two three four five six"]]

    def fit(width: int) -> Table | None:
        return fit_table(Console(file=io.StringIO(), width=width), headers, rows, wrap={1})

    assert fit(200) is not None
    # The narrowest table holds the id and the description's longest piece (its header) side by
    # side, plus the gap between them; anything narrower is no table at all.
    narrowest = min(w for w in range(1, 60) if fit(w) is not None)
    assert len("pmpt_support") + len("description") < narrowest <= 23 + 4
    assert all(fit(w) is None for w in range(1, narrowest))
    text = printed(narrowest, lambda c: c.print(fit(narrowest)))
    assert "pmpt_support" in text.splitlines()[2]
    words = [w for w in text.split() if "─" not in w]
    assert " ".join(words) == "id description pmpt_support one two three four five six"
    assert len(text.splitlines()) > 3  # the description wrapped, between words
    assert max(map(len, text.splitlines())) == narrowest
    # Markup in a cell is text, not style.
    text = printed(80, lambda c: print_table(c, ["id"], [["[bold]x[/bold]"]]))
    assert "[bold]x[/bold]" in text


def test_png_is_drawn_from_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = result([level(n, [turn(600.0 + n), turn(650.0 + n)]) for n in (1, 5, 10)])
    path = tmp_path / "r.png"
    write_png(json.loads(json.dumps(data)), path)
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width >= 1000 and height >= 800
    assert path.stat().st_size > 20_000


def test_png_of_a_level_with_no_completed_turn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_png(result([level(1, [turn(0, error="dropped")])]), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_report_command_redraws_and_defaults_next_to_the_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    source = tmp_path / "run.json"
    source.write_text(json.dumps(result([level(2, [turn(610.0)])])))
    parser = argparse.ArgumentParser(prog="parley")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "report", str(source)])
    code = asyncio.run(args.run(args, Console(file=io.StringIO())))
    assert code == 0 and (tmp_path / "run.png").is_file()


def test_load_result_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_result(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a 'parley bench realtime' result"):
        load_result(tmp_path / "other.json")
