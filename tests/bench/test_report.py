"""Level summaries, the SLO verdict, the sweep's answer, the table and the PNG, from JSON alone."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from parley.bench.realtime import add_bench_parser
from parley.bench.report import (
    STAGES,
    evaluate_slo,
    load_result,
    results_table,
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


def test_table_has_a_row_per_level() -> None:
    table = results_table(result([level(1, [turn(600.0)]), level(5, [turn(2000.0)])]))
    out = io.StringIO()
    Console(file=out, width=220).print(table)
    text = out.getvalue()
    assert "pass" in text and "fail: p95 1500 ms > 500 ms" in text
    assert table.row_count == 2


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
