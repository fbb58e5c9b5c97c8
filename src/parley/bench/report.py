"""Reports of ``parley bench realtime``: level summaries, the SLO verdict, a table, a PNG.

Also the tables the CLI prints (:func:`print_table`): they never cut an id or a figure to fit the
terminal.

Everything here works on the JSON result (plain dicts), so ``parley bench report`` can redraw a
run long after it happened. Nothing here opens a socket or reads a clock. matplotlib is an optional
dependency, imported only when a PNG is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from parley.bench.stats import summarize
from parley.errors import ConfigError

__all__ = [
    "STAGES",
    "evaluate_slo",
    "fit_table",
    "gap_footnote",
    "gap_label",
    "load_result",
    "print_records",
    "print_results",
    "print_table",
    "require_matplotlib",
    "results_rows",
    "summarize_level",
    "sweep_answer",
    "write_png",
]

# The server's stages in order (parley.turn.timeline's stages_ms), and their short labels.
STAGES: tuple[str, ...] = ("endpointing", "asr_final", "llm_first_token", "tts_first_audio", "send")
_LABELS = {
    "endpointing": "endpointing wait",
    "asr_final": "ASR final",
    "llm_first_token": "LLM first token",
    "tts_first_audio": "TTS first audio",
    "send": "send",
    "rest": "rest (network, queueing)",
}
_COLOURS = {
    "endpointing": "#9aa5b1",
    "asr_final": "#4e79a7",
    "llm_first_token": "#f28e2b",
    "tts_first_audio": "#59a14f",
    "send": "#b07aa1",
    "rest": "#e15759",
}


def _summary(values: Iterable[float]) -> dict[str, float | None]:
    """``Summary.to_dict`` with JSON-safe None where there was nothing to summarise."""
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in summarize(values).to_dict().items()
    }


def _ok(turns: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [t for t in turns if t.get("error") is None and t.get("turn_gap_ms") is not None]


def _values(turns: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return [float(t[key]) for t in turns if t.get(key) is not None]


def summarize_level(turns: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Percentiles of one level's successful turns; underruns and barge-ins over all turns."""
    ok = _ok(turns)
    barge = [t["barge_in"] for t in turns if t.get("barge_in")]
    return {
        "turns": len(ok),
        **{
            key: _summary(_values(ok, key))
            for key in (
                "turn_gap_ms",
                "turn_gap_minus_silence_ms",
                "server_turn_gap_ms",
                "response_latency_ms",
                "socket_send_ms",
                "overhead_ms",
            )
        },
        "stages_ms": {
            stage: _summary(t["stages_ms"][stage] for t in ok if stage in t["stages_ms"])
            for stage in STAGES
        },
        "underruns": sum(int(t.get("underruns") or 0) for t in turns),
        "underrun_ms": round(sum(float(t.get("underrun_ms") or 0.0) for t in turns), 1),
        "turns_with_underruns": sum(1 for t in turns if t.get("underruns")),
        "barge_in": {
            "n": len(barge),
            "stop_ms": _summary(float(b["stop_ms"]) for b in barge),
            "already_complete": sum(1 for b in barge if b["already_complete"]),
            "cancelled": sum(1 for b in barge if b["status"] == "cancelled"),
            "detect_ms": _summary(_values(barge, "detect_ms")),
        }
        if barge
        else None,
    }


def evaluate_slo(level: Mapping[str, Any], p95_limit_ms: float) -> dict[str, Any]:
    """Pass when the turn gap minus the silence window has p95 within the limit, every expected
    turn completed, and nothing underran, errored or dropped."""
    summary = level["summary"]
    p95 = summary["turn_gap_minus_silence_ms"]["p95"]
    reasons = []
    if p95 is None:
        reasons.append("no turn completed")
    elif p95 > p95_limit_ms:
        reasons.append(f"p95 {p95:.0f} ms > {p95_limit_ms:g} ms")
    if summary["underruns"]:
        reasons.append(f"{summary['underruns']} underruns ({summary['underrun_ms']:.0f} ms)")
    if level["error_count"]:
        reasons.append(f"{level['error_count']} errors")
    if level["dropped_sessions"]:
        reasons.append(f"{level['dropped_sessions']} sessions dropped")
    missing = level["expected_turns"] - level["completed_turns"]
    if missing:
        reasons.append(f"{missing} of {level['expected_turns']} turns incomplete")
    return {
        "metric": "turn_gap_minus_silence_ms",
        "p95_limit_ms": p95_limit_ms,
        "p95_ms": p95,
        "pass": not reasons,
        "reasons": reasons,
    }


def sweep_answer(levels: Sequence[Mapping[str, Any]]) -> int | None:
    """The largest concurrency that met the SLO with every smaller level run meeting it too."""
    answer = None
    for level in sorted(levels, key=lambda lv: int(lv["sessions"])):
        if not level["slo"]["pass"]:
            break
        answer = int(level["sessions"])
    return answer


def load_result(path: Path) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(result, dict) or not isinstance(result.get("levels"), list):
        raise ConfigError(f"{path} is not a 'parley bench realtime' result")
    return result


# --- tables that never cut a value ----------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split() or [""]


def fit_table(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    wrap: Collection[int] = (),
    right: Collection[int] = (),
) -> Table | None:
    """A table of ``rows`` that fits the console's width with every cell whole, or None.

    Cells of the ``wrap`` columns may break between words; every other cell (ids, numbers) is
    shown on one line, uncut, so that it can be copied. rich alone would shorten such a cell with
    an ellipsis once the table is wider than the terminal, so each column's width is set here:
    its natural width when everything fits, else the narrowest that keeps every cell whole,
    sharing what is left among the columns that would like more. Headers may wrap.
    """
    n = len(headers)
    natural = [max([cell_len(headers[i]), *(cell_len(r[i]) for r in rows)]) for i in range(n)]
    need = []  # the narrowest width that shows the column's cells whole (words, if it wraps)
    for i in range(n):
        pieces = [w for r in rows for w in (_words(r[i]) if i in wrap else [r[i]])]
        need.append(max([1, *map(cell_len, _words(headers[i])), *map(cell_len, pieces)]))

    def table(widths: Sequence[int]) -> Table:
        out = Table(
            title=title,
            box=box.SIMPLE_HEAD,
            header_style="bold",
            padding=(0, 1),
            pad_edge=False,
            show_edge=False,
        )
        for i, (name, width) in enumerate(zip(headers, widths, strict=True)):
            out.add_column(
                Text(name), justify="right" if i in right else "left", width=width, overflow="fold"
            )
        for row in rows:
            out.add_row(*(Text(cell) for cell in row))  # Text: no markup, "[x]" stays "[x]"
        return out

    unbounded = console.options.update_width(1_000_000)
    extra = Measurement.get(console, unbounded, table(natural)).maximum - sum(natural)
    room = console.width - extra
    if sum(natural) <= room:
        return table(natural)
    if sum(need) > room:
        return None
    widths = list(need)
    spare = room - sum(widths)
    while spare > 0:
        wanting = [i for i in range(n) if widths[i] < natural[i]]
        for i in wanting[:spare]:
            widths[i] += 1
        spare -= len(wanting[:spare])
    return table(widths)


def print_records(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> None:
    """Each row as a block: its first cell alone, then one ``header  value`` line per other cell.

    For consoles too narrow for any table: nothing is shortened or folded by rich (a line longer
    than the terminal is left to the terminal), so an id on its own line is always whole.
    """
    if title:
        console.print(Text(title, style="bold"), soft_wrap=True)
    label = max((cell_len(h) for h in headers[1:]), default=0)
    for n, row in enumerate(rows):
        if n or title:
            console.print()
        console.print(Text(row[0], style="bold"), soft_wrap=True)
        for name, cell in zip(headers[1:], row[1:], strict=True):
            if cell:
                console.print(Text(f"  {name.ljust(label)}  {cell}"), soft_wrap=True)


def print_table(
    console: Console,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    wrap: Collection[int] = (),
    right: Collection[int] = (),
) -> None:
    """``rows`` as a table when one fits the console (see :func:`fit_table`), else as blocks."""
    table = fit_table(console, headers, rows, title=title, wrap=wrap, right=right)
    if table is None:
        print_records(console, headers, rows, title=title)
    else:
        console.print(table)


# --- the results table -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pair(summary: Mapping[str, Any] | None) -> str:
    if not summary or summary.get("p50") is None:
        return "-"
    return f"{summary['p50']:.0f} / {summary['p95']:.0f}"


def gap_label(silence_ms: float) -> str:
    """The header of the turn gap minus the silence window, as tables and the PNG name it."""
    return f"gap minus {silence_ms:g} ms silence"


def gap_footnote(silence_ms: float) -> str:
    """What the gap-minus-silence figures mean, and why some are negative."""
    return (
        f"{gap_label(silence_ms)}: the turn gap (last speech sample sent -> first reply audio) "
        f"less the {silence_ms:g} ms the server waits in silence before it answers; what parley "
        "adds. Below 0 is normal: the server's voice detector heard the speech end before the "
        "client's mark (a soft word ending is speech to one, silence to the other), so its "
        "silence window began earlier."
    )


_RESULT_HEADERS = (
    "sessions",
    "turns ok",
    "turn gap",
    "",  # gap_label(silence), per result
    "ASR final",
    "LLM first token",
    "TTS first audio",
    "rest",
    "underruns",
    "barge-in stop",
    "errors",
    "dropped",
    "client lag",
    "SLO",
)


def results_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The headers and one row per level (p50 / p95 in ms, counts, the SLO verdict)."""
    silence = result.get("config", {}).get("silence_ms", 500)
    headers = list(_RESULT_HEADERS)
    headers[3] = gap_label(silence)
    rows = []
    for level in result["levels"]:
        s = level["summary"]
        stages = s["stages_ms"]
        barge = s.get("barge_in")
        barge_text = "-"
        if barge:
            barge_text = _pair(barge["stop_ms"])
            if barge["already_complete"]:
                barge_text += f" ({barge['already_complete']}/{barge['n']} done)"
        slo = level["slo"]
        rows.append(
            [
                str(level["sessions"]),
                f"{level['completed_turns']}/{level['expected_turns']}",
                _pair(s["turn_gap_ms"]),
                _pair(s["turn_gap_minus_silence_ms"]),
                _pair(stages["asr_final"]),
                _pair(stages["llm_first_token"]),
                _pair(stages["tts_first_audio"]),
                _pair(s["overhead_ms"]),
                str(s["underruns"]),
                barge_text,
                str(level["error_count"]),
                str(level["dropped_sessions"]),
                _ms(level.get("client_lag_ms")),
                "pass" if slo["pass"] else "fail: " + "; ".join(slo["reasons"]),
            ]
        )
    return headers, rows


def print_results(console: Console, result: Mapping[str, Any]) -> None:
    """The results table, every figure whole at any terminal width, and what the gap means.

    One row per level where that fits; else one row per figure and one column per level, with
    the SLO's reasons listed below; else one block per level.
    """
    title = "parley bench realtime (ms, p50 / p95)"
    headers, rows = results_rows(result)
    slo = len(headers) - 1
    right = set(range(slo))
    table = fit_table(console, headers, rows, title=title, wrap={slo}, right=right)
    if table is not None:
        console.print(table)
    else:
        names = [f"{row[0]} session" + ("" if row[0] == "1" else "s") for row in rows]
        turned = [
            [name, *(row[i] if i != slo else row[i].partition(":")[0] for row in rows)]
            for i, name in enumerate(headers)
            if i
        ]
        columns = ["", *names]
        table = fit_table(
            console, columns, turned, title=title, wrap={0}, right=range(1, len(columns))
        )
        if table is None:
            blocks = [[name, *row[1:]] for name, row in zip(names, rows, strict=True)]
            print_records(console, headers, blocks, title=title)
        else:
            console.print(table)
            for n, row in zip(names, rows, strict=True):
                if row[slo] != "pass":
                    console.print(Text(f"SLO at {n}: {row[slo]}"))
    console.print(Text(gap_footnote(result.get("config", {}).get("silence_ms", 500))))


# --- the PNG -----------------------------------------------------------------------------------


def _breakdown(turns: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean ms of each stage and of the rest, over turns with every stage: they add up to the
    mean client-observed turn gap."""
    full = [t for t in _ok(turns) if all(s in t["stages_ms"] for s in STAGES)]
    if not full:
        return {}
    out = {s: sum(t["stages_ms"][s] for t in full) / len(full) for s in STAGES}
    out["rest"] = sum(t["turn_gap_ms"] - sum(t["stages_ms"].values()) for t in full) / len(full)
    return out


def require_matplotlib() -> None:
    """Fail before a long run, not after it, when the PNG cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "drawing the report needs matplotlib, which comes with the bench extra: "
            "pip install 'parley[bench]' (in a checkout: pip install -e '.[bench]')"
        ) from None


def write_png(result: Mapping[str, Any], path: Path) -> None:
    """Per level, the distribution of each stage (box plots, symlog ms); a stacked bar of where
    the mean turn gap goes per level; and the p50/p95 against the SLO across levels."""
    require_matplotlib()
    from matplotlib.figure import Figure

    levels = list(result["levels"])
    if not levels:
        raise ConfigError("the result has no levels to draw")
    config = result.get("config", {})
    silence = config.get("silence_ms", 500)
    machine = result.get("machine", {})

    fig = Figure(figsize=(max(12.0, 3.2 * len(levels)), 9.0), dpi=100, layout="constrained")
    fig.suptitle(
        f"parley bench realtime: {machine.get('cpu') or machine.get('processor', '?')}, "
        f"{machine.get('cores', '?')} "
        f"cores, {result.get('created', '')}",
        fontsize=11,
    )
    # Top row: one box plot per level; bottom row: the breakdown bars and the SLO lines.
    n = len(levels)
    grid = fig.add_gridspec(2, 2 * n, height_ratios=[1.1, 1.0])
    boxes = [fig.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(n)]
    for ax in boxes[1:]:
        ax.sharey(boxes[0])
    keys = [*STAGES, "rest", "gap"]
    names = ["endpoint", "ASR", "LLM", "TTS", "send", "rest", "gap"]
    for ax, level in zip(boxes, levels, strict=True):
        ok = _ok(level["turns"])
        series: dict[str, list[float]] = {
            s: [float(t["stages_ms"][s]) for t in ok if s in t["stages_ms"]] for s in STAGES
        }
        series["rest"] = _values(ok, "overhead_ms")
        series["gap"] = _values(ok, "turn_gap_ms")
        shown = [i for i, k in enumerate(keys) if series[k]]
        if shown:
            ax.boxplot(
                [series[keys[i]] for i in shown],
                positions=[i + 1 for i in shown],
                widths=0.6,
                showfliers=True,
                flierprops={"markersize": 3},
            )
        ax.set_xticks(range(1, len(keys) + 1), names, rotation=45, fontsize=8)
        ax.set_yscale("symlog", linthresh=1.0)
        plural = "" if level["sessions"] == 1 else "s"
        turns = "turn" if len(ok) == 1 else "turns"
        ax.set_title(f"{level['sessions']} session{plural} (n={len(ok)} {turns})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    boxes[0].set_ylabel("ms (symlog)")

    bars = fig.add_subplot(grid[1, :n])
    lines = fig.add_subplot(grid[1, n:])
    x = list(range(len(levels)))
    breakdowns = [_breakdown(level["turns"]) for level in levels]
    floor = [0.0] * len(levels)
    for part in [*STAGES, "rest"]:
        heights = [b.get(part, 0.0) for b in breakdowns]
        bars.bar(x, heights, bottom=floor, label=_LABELS[part], color=_COLOURS[part], width=0.6)
        floor = [f + h for f, h in zip(floor, heights, strict=True)]
    for xi, total in zip(x, floor, strict=True):
        if total:
            bars.annotate(f"{total:.0f}", (xi, total), ha="center", va="bottom", fontsize=8)
    bars.set_xticks(x, [str(level["sessions"]) for level in levels])
    bars.set_xlim(-0.75, len(levels) - 0.25)
    bars.set_ylim(0, max([*floor, 1.0]) * 1.5)  # headroom for the legend
    bars.set_xlabel("concurrent sessions")
    bars.set_ylabel("mean ms")
    bars.set_title("where the turn gap goes (last speech sample -> first reply audio)", fontsize=10)
    bars.legend(fontsize=8, loc="upper left", ncols=3)

    sessions = [int(level["sessions"]) for level in levels]
    lowest = 0.0
    for stat, style in (("p50", "o-"), ("p95", "s-")):
        ys = [level["summary"]["turn_gap_minus_silence_ms"][stat] for level in levels]
        lowest = min([lowest, *(y for y in ys if y is not None)])
        lines.plot(sessions, [math.nan if y is None else y for y in ys], style, label=stat)
    stops = [(level["summary"].get("barge_in") or {}).get("stop_ms", {}) for level in levels]
    if any(s.get("p95") is not None for s in stops):
        ys = [s.get("p95") for s in stops]
        lines.plot(
            sessions,
            [math.nan if y is None else y for y in ys],
            "^--",
            label="barge-in stop p95",
        )
    limit = config.get("slo_p95_ms")
    if limit is not None:
        lines.axhline(limit, color="#e15759", linestyle=":", label=f"SLO p95 {limit:g} ms")
    if len(set(sessions)) > 1:
        lines.set_xscale("log")
    lines.set_xticks(sessions, [str(n) for n in sessions])
    lines.minorticks_off()
    lines.set_yscale("symlog", linthresh=10.0)
    lines.set_ylim(bottom=lowest)
    lines.set_xlabel("concurrent sessions")
    lines.set_ylabel("ms (symlog)")
    lines.set_title(f"turn gap minus the {silence} ms silence window", fontsize=10)
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.savefig(path, format="png")
