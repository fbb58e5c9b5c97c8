"""``parley`` end to end on real speech, and one clear line for every kind of bad input."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from parley.bench.clips import Clip
from parley.cli import _parser, main
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


# --- help ----------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_cli_every_help_reads_as_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # argparse wraps to the terminal
    helps = dict((path, p.format_help()) for path, p in _parsers(_parser(), "parley"))
    assert {"parley", "parley keys list", "parley bench realtime", "parley prompts show"} <= set(
        helps
    )
    assert len(helps) >= 20
    for path, text in helps.items():
        for markup in ("``", ":class:", ":func:", ":mod:", ":meth:", ":attr:"):
            assert markup not in text, f"{path} --help shows {markup!r}:\n{text}"
        if path != "parley":  # each subcommand says what it does, not only its options
            description = text.split("\n\n")[1]
            assert description[0].isupper() and description.rstrip().endswith("."), text
    # A line never breaks inside a flag.
    assert "--no-auth" in helps["parley serve"] and "--no-\n" not in "".join(helps.values())
    assert "parley[bench]" in helps["parley bench realtime"]


def test_cli_help_exits_zero_with_the_plain_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "self-hosted realtime voice AI server" in out and "``" not in out


# --- prompts and keys, as the README writes them -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "prompts" / "support.toml"


def readme_commands(section: str) -> list[list[str]]:
    """The parley commands of the first bash block after the README heading ``section``,
    optional ``[...]`` parts taken as given."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(f"### {section}\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.replace("[", "").replace("]", "") for line in block.splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines]
    assert all(c[0] == "parley" for c in commands if c)
    return [c[1:] for c in commands if c]


def test_cli_readme_keys_and_prompts_commands_work_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the project root
    monkeypatch.setenv("PARLEY_SERVER_DATABASE", str(tmp_path / "parley.db"))
    keys = readme_commands("Keys and tenants")
    assert [c[:2] for c in keys] == [["keys", "create"], ["keys", "list"], ["keys", "revoke"]]
    code, out, err = run(keys[0], capsys)
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("sk-parley-")
    code, out, err = run(keys[1], capsys)
    assert code == 0, err
    assert token not in out  # never the key itself
    (key_id,) = KEY_ID.findall(out)
    code, out, err = run([key_id if a == "key_XXXX" else a for a in keys[2]], capsys)
    assert code == 0, err
    assert out.startswith(f"revoked {key_id}")

    prompts = readme_commands("Prompt templates")
    assert [c[:2] for c in prompts] == [
        ["prompts", "import"],
        ["prompts", "list"],
        ["prompts", "show"],
    ]
    code, out, err = run(prompts[0], capsys)
    assert code == 0, err
    code, out, err = run(prompts[1], capsys)
    assert code == 0 and "pmpt_support" in out, err
    code, out, err = run(prompts[2], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["version"]) == ("pmpt_support", "1")
    assert set(shown["variables"]) >= {"company"}


def test_cli_prompt_of_another_tenant_says_which_tenant_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--set", f"server.database={tmp_path / 'p.db'}"]
    assert main(["prompts", "import", str(EXAMPLE), "--tenant", "acme", *db]) == 0
    capsys.readouterr()
    for action in ("show", "delete"):
        code, _, err = run(["prompts", action, "pmpt_support", *db], capsys)
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line == (
            "parley: error: unknown prompt 'pmpt_support' for the default tenant (that of "
            "--no-auth servers); tenant 'acme' has it: try --tenant acme"
        )
    code, _, err = run(["prompts", "show", "pmpt_nope", "--tenant", "acme", *db], capsys)
    assert code == 2
    assert err.strip() == "parley: error: unknown prompt 'pmpt_nope' for tenant 'acme'"
    # A wrong version is not a wrong tenant.
    code, _, err = run(
        ["prompts", "show", "pmpt_support", "--version", "9", "--tenant", "acme", *db], capsys
    )
    assert code == 2 and "has no version '9'" in err and "--tenant" not in err


def test_cli_prompts_default_to_the_tenant_of_no_auth_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--set", f"server.database={tmp_path / 'p.db'}"]
    code, out, _ = run(["prompts", "list", *db], capsys)
    assert code == 0 and "no prompt templates for the default tenant" in out
    assert main(["prompts", "import", str(EXAMPLE), *db]) == 0
    assert "for the default tenant" in capsys.readouterr().out
    code, out, _ = run(["prompts", "show", "pmpt_support", *db], capsys)
    assert code == 0 and json.loads(out)["id"] == "pmpt_support"
    # The server with --no-auth reads the same tenant.
    from parley.store import Database, PromptStore

    with Database(tmp_path / "p.db") as database:
        assert PromptStore(database, "").get("pmpt_support").version == "1"
    code, out, _ = run(["prompts", "delete", "pmpt_support", *db], capsys)
    assert code == 0 and out.strip() == "deleted pmpt_support"


KEY_ID = re.compile(r"key_[0-9A-Za-z]{16}")


def _keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    """Two keys of tenant acme (one with every limit and a long name): their ids and prefixes."""
    db = ["--set", f"server.database={tmp_path / 'k.db'}"]
    ids, prefixes = [], []
    for extra in (
        [
            "--name",
            "support line for the night shift",
            "--rpm",
            "600",
            "--max-sessions",
            "20",
            "--max-session-seconds",
            "3600",
        ],
        [],
    ):
        code, out, err = run(["keys", "create", "--tenant", "acme", *extra, *db], capsys)
        assert code == 0, err
        ids += KEY_ID.findall(out)
        prefixes.append(out.strip().splitlines()[-1][:14])
    assert len(ids) == 2
    return ids, prefixes


@pytest.mark.parametrize("columns", ["200", "80", "40", "20"])
def test_cli_keys_list_shows_whole_ids_at_any_width(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    columns: str,
) -> None:
    ids, prefixes = _keys(tmp_path, capsys)
    monkeypatch.setenv("COLUMNS", columns)
    db = ["--set", f"server.database={tmp_path / 'k.db'}"]
    code, out, _ = run(["keys", "list", "--tenant", "acme", *db], capsys)
    assert code == 0
    assert "…" not in out
    # Each id and prefix whole, on one line, as 'keys revoke' takes it.
    lines = out.splitlines()
    for key_id, prefix in zip(ids, prefixes, strict=True):
        assert any(key_id in line for line in lines), out
        assert any(f"{prefix}..." in line for line in lines), out
    assert "support line for the night" in " ".join(out.split())
    assert "rpm 600, sessions 20, session s 3600" in " ".join(out.split())
    # What the listing shows is what revoke takes: an id, or a prefix copied with its dots.
    shown = KEY_ID.findall(out)
    assert shown == ids
    code, out, err = run(["keys", "revoke", shown[0], "--tenant", "acme", *db], capsys)
    assert code == 0, err
    code, out, err = run(["keys", "revoke", f"{prefixes[1]}...", "--tenant", "acme", *db], capsys)
    assert code == 0, err
    _, out, _ = run(["keys", "list", "--tenant", "acme", *db], capsys)
    assert out.count("revoked") == 2


def test_cli_keys_list_of_a_tenant_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--set", f"server.database={tmp_path / 'k.db'}"]
    code, _, err = run(["keys", "list", "--tenant", "nobody", *db], capsys)
    assert code == 2 and err.strip() == "parley: error: unknown tenant 'nobody'"


# --- bench without matplotlib ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make_argv",
    [
        lambda d: ["bench", "realtime", "--png", str(d / "r.png"), "--url", "ws://127.0.0.1:9/"],
        lambda d: ["bench", "report", str(_result_json(d))],
    ],
    ids=["realtime --png", "report"],
)
def test_cli_bench_png_without_matplotlib_names_the_extra(
    make_argv,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes "import matplotlib" raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(make_argv(tmp_path), capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("parley: error: ") and "pip install 'parley[bench]'" in line
    assert "Traceback" not in err and not out
    assert not (tmp_path / "r.png").exists()


def _result_json(d: Path) -> Path:
    path = d / "run.json"
    path.write_text(json.dumps({"levels": [], "config": {}}))
    return path


def test_cli_error_of_several_lines_prints_as_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from parley.errors import EngineUnavailableError

    def offline(name: str, *, directory: Path | None = None) -> Path:
        raise EngineUnavailableError(
            "could not fetch 'whisper:tiny.en': LocalEntryNotFoundError: Got: ConnectError\n"
            "An error happened while trying to locate the files on the Hub."
        )

    monkeypatch.setattr("parley.models.pull", offline)
    code, _, err = run(["models", "pull", "whisper:tiny.en"], capsys)
    assert code == 1
    assert err == (
        "parley: error: could not fetch 'whisper:tiny.en': LocalEntryNotFoundError: Got: "
        "ConnectError An error happened while trying to locate the files on the Hub.\n"
    )
