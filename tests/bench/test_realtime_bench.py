"""``parley bench realtime`` against a real ``parley serve``, and its pure helpers."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from parley.bench.clips import Clip
from parley.bench.realtime import (
    BenchConfig,
    Utterance,
    add_bench_parser,
    check_reachable,
    prepare_utterance,
    run_bench,
    run_level,
    session_url,
    simulate_playback,
)
from parley.errors import ConfigError, EngineUnavailableError, ParleyError
from tests.fakes.llm_http import free_port
from tests.server.conftest import Server, start_server, stop_server

CLIPS = ("en_sb_culprit", "en_goforward_raw")
STAGES = {"endpointing", "asr_final", "llm_first_token", "tts_first_audio", "send"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parley")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def run(argv: list[str]) -> tuple[int, str]:
    """Run a bench command through the function the CLI calls; its exit code and output."""
    args = parse(argv)
    out = io.StringIO()
    code = await args.run(args, Console(file=out, width=200))
    return code, out.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- pure helpers ------------------------------------------------------------------------------


def test_playback_no_underrun_when_audio_arrives_ahead() -> None:
    # 100 ms chunks, all at once: faster than real time.
    playback = simulate_playback([(0.0, 100.0)] * 5)
    assert (playback.underruns, playback.starved_ms, playback.end_ms) == (0, 0.0, 500.0)


def test_playback_counts_each_late_chunk_and_the_starved_time() -> None:
    arrivals = [(0.0, 100.0), (50.0, 100.0), (260.0, 100.0), (360.0, 100.0), (500.0, 100.0)]
    playback = simulate_playback(arrivals)
    # Plays until 200, next at 260 (60 ms starved); then until 360, on time, until 460; the
    # last arrives at 500 (40 ms starved) and plays until 600.
    assert playback.underruns == 2
    assert playback.starved_ms == pytest.approx(100.0)
    assert playback.end_ms == pytest.approx(600.0)


def test_playback_exactly_on_time_is_no_underrun() -> None:
    playback = simulate_playback([(0.0, 20.0), (20.0, 20.0), (40.0, 20.0)])
    assert playback.underruns == 0
    assert playback.end_ms == 60.0


def test_playback_of_nothing() -> None:
    assert simulate_playback([]).underruns == 0


def test_utterance_marks_the_last_speech_sample_inside_its_packet() -> None:
    loud = (np.sin(np.arange(24000) / 5) * 10000).astype(np.int16)
    samples = np.concatenate([np.zeros(4800, np.int16), loud, np.zeros(4800, np.int16)])
    # Speech ends 10 ms into the 51st packet after the leading silence is trimmed.
    utterance = prepare_utterance("x", samples, speech_end_ms=200 + 1010)
    assert utterance.speech_ms == pytest.approx(1010.0)
    assert utterance.end_packet == 50
    assert utterance.end_offset_ms == pytest.approx(10.0)
    # The loud second, plus the packet the VAD's end falls in; the rest of the zeros trimmed.
    assert len(utterance.packets) == 51
    event = json.loads(utterance.packets[0])
    assert event["type"] == "input_audio_buffer.append"


def test_session_url_adds_model_and_timeline() -> None:
    assert session_url("ws://127.0.0.1:9/v1/realtime") == (
        "ws://127.0.0.1:9/v1/realtime?model=parley&parley_timeline=1"
    )
    assert "model=m" in session_url("ws://h/v1/realtime?model=m")
    with pytest.raises(ConfigError):
        session_url("http://127.0.0.1:9/v1/realtime")


# --- against a server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Faster speech keeps the replies, which each caller listens to in real time, short.
    s = start_server(
        tmp_path_factory.mktemp("bench"),
        "--set",
        "tts.speed=3.0",
        env={"PARLEY_LLM_BASE_URL": ""},
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, clips: dict[str, Clip]) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    rows = [
        {
            "id": clips[c].id,
            "file": str(clips[c].path),
            "language": "en",
            "duration_s": clips[c].duration_s,
            "transcript": clips[c].transcript,
        }
        for c in CLIPS
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def result(
    bench_server: Server, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out")
    argv = [
        "bench",
        "realtime",
        "--url",
        bench_server.ws_url,
        "--sessions",
        "2",
        "--turns",
        "2",
        "--barge-in",
        "--clips",
        str(clip_dir),
        "--slo-p95-ms",
        "5000",
        "--json",
        str(out / "result.json"),
    ]
    if _has_matplotlib():
        argv += ["--png", str(out / "result.png")]
    code, printed = asyncio.run(run(argv))
    data: dict[str, Any] = json.loads((out / "result.json").read_text())
    data["_exit"], data["_printed"], data["_out"] = code, printed, str(out)
    return data


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_result_has_machine_command_and_answer(result: dict[str, Any]) -> None:
    assert result["_exit"] == 0
    assert result["machine"]["cores"] >= 1 and result["machine"]["platform"]
    assert result["command"].startswith("parley bench realtime --url ws://127.0.0.1:")
    assert set(result["config"]["clips"]) == set(CLIPS)
    assert result["answer"]["max_sessions_within_slo"] == 2
    assert "turns ok" in result["_printed"] and "pass" in result["_printed"]
    # The gap column is named for what it is, and its footnote explains values below 0.
    assert "gap minus 500 ms silence" in result["_printed"]
    assert "Below 0 is normal" in result["_printed"]


def test_bench_level_records_every_turn_without_errors(result: dict[str, Any]) -> None:
    (level,) = result["levels"]
    assert level["errors"] == [] and level["error_count"] == 0
    assert level["dropped_sessions"] == 0
    assert level["expected_turns"] == level["completed_turns"] == 4
    assert level["slo"]["pass"] is True
    assert [(t["session"], t["turn"]) for t in level["turns"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for turn in level["turns"]:
        assert turn["error"] is None
        assert turn["clip"] in CLIPS
        assert 0 < turn["turn_gap_ms"] < 5000
        assert turn["turn_gap_minus_silence_ms"] == pytest.approx(turn["turn_gap_ms"] - 500)
        assert set(turn["stages_ms"]) == STAGES
        assert turn["stages_ms"]["endpointing"] >= 450
        assert turn["server_turn_gap_ms"] > 0 and turn["overhead_ms"] is not None
        assert turn["underruns"] >= 0 and turn["underrun_ms"] >= 0
        assert turn["reply_audio_ms"] > 0 and turn["reply"]
        assert turn["transcript"]  # what the server heard
        assert turn["status"] == "completed"


def test_bench_summaries_cover_gap_stages_and_barge_in(result: dict[str, Any]) -> None:
    summary = result["levels"][0]["summary"]
    for key in ("turn_gap_ms", "turn_gap_minus_silence_ms", "overhead_ms"):
        assert summary[key]["n"] == 4
        assert {"p50", "p95", "mean", "max"} <= set(summary[key])
    assert set(summary["stages_ms"]) == STAGES
    assert summary["barge_in"]["n"] == 2


def test_bench_barge_in_turn_records_stop_time(result: dict[str, Any]) -> None:
    barge = [t for t in result["levels"][0]["turns"] if t["kind"] == "barge_in"]
    assert [t["turn"] for t in barge] == [1, 1]
    for turn in barge:
        record = turn["barge_in"]
        assert record["stop_ms"] >= 0
        assert isinstance(record["already_complete"], bool)
        if record["already_complete"]:
            # The embedded engines finish a reply long before the caller interrupts it.
            assert record["stop_ms"] == 0 and record["playback_left_ms"] > 0
        else:
            assert record["status"] in ("cancelled", "in_progress", "completed")
        assert record["detect_ms"] is None or record["detect_ms"] > 0


def test_bench_png_and_report_redraw(result: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = Path(result["_out"])
    width, height = png_size(out / "result.png")
    assert width >= 800 and height >= 600
    assert (out / "result.png").stat().st_size > 20_000
    redrawn = tmp_path / "again.png"
    code, printed = asyncio.run(
        run(["bench", "report", str(out / "result.json"), "-o", str(redrawn)])
    )
    assert code == 0 and "wrote" in printed
    assert png_size(redrawn) == (width, height)


async def test_bench_nothing_listening_is_one_clear_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    started = time.monotonic()
    with pytest.raises(EngineUnavailableError) as caught:
        await run(["bench", "realtime", "--url", url, "--turns", "1"])
    assert time.monotonic() - started < 10
    assert isinstance(caught.value, ParleyError)
    assert url in caught.value.message and "\n" not in caught.value.message


async def test_bench_rejects_a_bad_sweep_and_url() -> None:
    with pytest.raises(ConfigError, match="--sweep"):
        await run(["bench", "realtime", "--sweep", "1,x"])
    with pytest.raises(ConfigError, match="ws://"):
        await run(["bench", "realtime", "--url", "http://127.0.0.1:1/v1/realtime"])


# --- against a misbehaving fake server ---------------------------------------------------------


def tone() -> Utterance:
    samples = (np.sin(np.arange(4800) / 5) * 10000).astype(np.int16)
    return prepare_utterance("tone", samples, speech_end_ms=200)


@asynccontextmanager
async def fake_server(behaviour: str) -> AsyncIterator[str]:
    """A Realtime endpoint that sets sessions up, then closes mid-turn or never replies."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        appends = 0
        async for raw in ws:
            kind = json.loads(raw)["type"]
            if kind == "session.update":
                await ws.send(json.dumps({"type": "session.updated", "session": {}}))
                error = {"type": "server_error", "code": "boom", "message": "engine on fire"}
                await ws.send(json.dumps({"type": "error", "error": error}))
            elif kind == "input_audio_buffer.append":
                appends += 1
                if behaviour == "close" and appends == 5:
                    await ws.close(1011, "going away")
                    return

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/realtime"


async def test_bench_counts_unexpected_closes_as_dropped_sessions() -> None:
    async with fake_server("close") as url:
        level = await run_level(BenchConfig(url, (2,), turns=2), [tone()], 2)
    assert level["dropped_sessions"] == 2
    assert level["completed_turns"] == 0
    assert len(level["turns"]) == 2  # each caller's first turn, cut short
    assert all(t["error"].startswith("dropped: connection closed") for t in level["turns"])
    assert sum("boom: engine on fire" in e for e in level["errors"]) == 2
    assert level["slo"]["pass"] is False


async def test_bench_times_out_turns_and_stops_the_sweep_at_the_first_miss() -> None:
    async with fake_server("silent") as url:
        config = BenchConfig(url, (1, 2), turns=2, reply_timeout_s=0.3)
        result = await run_bench(config, [tone()], Console(file=io.StringIO()))
    (level,) = result["levels"]  # level 2 never ran
    assert level["dropped_sessions"] == 0
    assert [t["error"] for t in level["turns"]] == ["no reply within 0.3 s"] * 2
    assert level["error_count"] == 3  # two timeouts and the error event
    assert result["answer"]["max_sessions_within_slo"] is None


async def test_bench_sends_the_api_key_and_names_it_when_refused() -> None:
    def require_key(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != "Bearer sk-test":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing key\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, process_request=require_key) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/v1/realtime"
        with pytest.raises(EngineUnavailableError, match=r"HTTP 401.*--api-key"):
            await check_reachable(url)
        await check_reachable(url, "sk-test")


def test_bench_semantic_vad_judges_the_gap_whole(
    bench_server: Server, clip_dir: Path, tmp_path: Path
) -> None:
    argv = ["bench", "realtime", "--url", bench_server.ws_url, "--sessions", "1", "--turns", "1"]
    argv += ["--semantic-vad", "high", "--clips", str(clip_dir), "--slo-p95-ms", "5000"]
    code, printed = asyncio.run(run([*argv, "--json", str(tmp_path / "r.json")]))
    data = json.loads((tmp_path / "r.json").read_text())
    assert code == 0, printed
    assert data["config"]["semantic_vad"] == "high" and data["config"]["silence_ms"] == 0
    assert "--semantic-vad high" in data["command"] and "--silence-ms" not in data["command"]
    [level] = data["levels"]
    [turn] = level["turns"]
    assert turn["error"] is None and turn["status"] == "completed"
    assert turn["turn_gap_minus_silence_ms"] == turn["turn_gap_ms"]
