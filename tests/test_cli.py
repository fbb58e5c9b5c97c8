"""``parley`` end to end on real speech, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parley.bench.clips import Clip
from parley.cli import main
from tests.conftest import shared_words


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_call_prints_transcript_reply_timeline_and_writes_reply(
    clips: dict[str, Clip], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = clips["en_jfk_wav"]
    reply = tmp_path / "reply.wav"
    code, out, err = run(["call", str(clip.path), "-o", str(reply), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    turns = result["turns"]
    assert turns
    # JFK (archival, narrowband) is this recogniser's worst clip: some words, not many.
    heard = " ".join(t["transcript"] for t in turns)
    assert shared_words(heard, clip.transcript), heard
    assert all(t["reply"] for t in turns)
    for t in turns:
        marks = list(t["timeline"]["marks_ms"].values())
        assert marks == sorted(marks)
        assert t["timeline"]["response_latency_ms"] > 0
    data, rate = sf.read(reply, dtype="int16")
    assert rate == 24000 and len(data) / rate > 1.0
    assert np.abs(data.astype(np.int32)).max() > 1000


def test_cli_call_recognises_clean_speech(
    clips: dict[str, Clip], capsys: pytest.CaptureFixture[str]
) -> None:
    clip = clips["en_librivox_0920"]
    code, out, _ = run(["call", str(clip.path), "--json"], capsys)
    assert code == 0
    heard = " ".join(t["transcript"] for t in json.loads(out)["turns"])
    assert len(shared_words(heard, clip.transcript)) >= 5, heard


def test_cli_call_human_output(clips: dict[str, Clip], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["call", str(clips["en_goforward_raw"].path)], capsys)
    assert code == 0
    assert "you" in out and "parley" in out
    assert "end of turn -> first audio" in out
    assert "forward" in out


def test_cli_entry_point_runs_as_a_command(clips: dict[str, Clip], tmp_path: Path) -> None:
    reply = tmp_path / "reply.wav"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "call",
            str(clips["en_sb_culprit"].path),
            "-o",
            str(reply),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert reply.stat().st_size > 10_000


def test_cli_say_and_transcribe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clips: dict[str, Clip]
) -> None:
    out_file = tmp_path / "hello.flac"
    code, out, err = run(
        ["say", "Hello there, how are you?", "-o", str(out_file), "--rate", "16000"], capsys
    )
    assert code == 0, err
    data, rate = sf.read(out_file, dtype="int16")
    assert rate == 16000 and 0.8 < len(data) / rate < 4
    code, out, _ = run(["transcribe", str(clips["en_goforward_raw"].path), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert "forward" in result["text"]
    starts = [w["start"] for w in result["words"]]
    assert starts == sorted(starts) and starts[-1] < 3.0


def write_silence(path: Path) -> Path:
    sf.write(path, np.zeros(16000 * 2, np.int16), 16000)
    return path


@pytest.mark.parametrize(
    ("make_argv", "needle"),
    [
        (lambda d: ["call", str(d / "missing.wav")], "missing.wav"),
        (lambda d: ["call", str(d)], "directory"),
        (lambda d: ["call", str(_text_file(d))], "notes.wav"),
        (lambda d: ["call", str(write_silence(d / "quiet.wav"))], "no speech"),
        (lambda d: ["transcribe", str(write_silence(d / "quiet.wav"))], "no speech"),
        (lambda d: ["call", str(_empty_wav(d))], "empty.wav"),
        (lambda d: ["say", "  ", "-o", str(d / "x.wav")], "empty"),
        (lambda d: ["say", "x" * 5000, "-o", str(d / "x.wav")], "limit"),
        (lambda d: ["say", "hi", "-o", str(d / "x.xyz")], "xyz"),
        (lambda d: ["say", "hi", "--voice", "no-such-voice", "-o", str(d / "x.wav")], "voice"),
        (lambda d: ["say", "hi", "-o", str(d / "no" / "dir" / "x.wav")], "x.wav"),
        (lambda d: ["call", str(d / "x.wav"), "--set", "tts.speed"], "KEY=VALUE"),
        (lambda d: ["voices", "--set", "tts.engine=nonesuch"], "nonesuch"),
        (lambda d: ["voices", "--config", str(d / "nope.toml")], "nope.toml"),
    ],
)
def test_cli_bad_input_gets_one_clear_line(
    make_argv,
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    code, _, err = run(make_argv(tmp_path), capsys)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("parley: error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def _text_file(d: Path) -> Path:
    p = d / "notes.wav"
    p.write_text("this is not audio")
    return p


def _empty_wav(d: Path) -> Path:
    p = d / "empty.wav"
    sf.write(p, np.zeros(0, np.int16), 16000)
    return p
