import json
from pathlib import Path

import pytest

from parley.bench.clips import Clip
from parley.cli import main


def test_bench_engines_reports_every_engine(
    clips: dict[str, Clip], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = clips["en_goforward_raw"]
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / clip.path.name).write_bytes(clip.path.read_bytes())
    (folder / "manifest.jsonl").write_text(
        json.dumps(
            {
                "id": clip.id,
                "file": clip.path.name,
                "language": "en",
                "duration_s": clip.duration_s,
                "transcript": clip.transcript,
            }
        )
        + "\n"
    )
    out = tmp_path / "engines.json"
    assert main(["bench", "engines", "--clips", str(folder), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "time to first token" in printed and "x real time" in printed
    result = json.loads(out.read_text())
    assert result["engines"] == {
        "vad": "silero",
        "asr": "pocketsphinx",
        "llm": "faq",
        "tts": "espeak",
    }
    assert 0 < result["vad"]["ms_per_window_p50"] < 50
    assert result["asr"]["x_real_time_overall"] > 0.5
    assert result["asr"]["clips"][0]["wer"] < 0.5
    assert result["tts"]["x_real_time_overall"] > 5
    assert len(result["llm"]["questions"]) == 5


def test_bench_engines_missing_clips_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "engines", "--clips", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.jsonl" in err[0]
