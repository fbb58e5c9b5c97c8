"""``parley models pull``: name resolution, and the real hub client against a fake hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley.errors import ClientError
from parley.models import PIPER_REPO, piper_voices_dir, resolve
from tests.fakes.hub import serve_fake_hub


def _pull(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley.cli", "models", "pull", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "kind", "repo", "setting"),
    [
        ("whisper:tiny.en", "whisper", "Systran/faster-whisper-tiny.en", "tiny.en"),
        ("whisper:large-v3", "whisper", "Systran/faster-whisper-large-v3", "large-v3"),
        ("whisper:me/my-ct2-whisper", "whisper", "me/my-ct2-whisper", "me/my-ct2-whisper"),
        ("facebook/mms-tts-eng", "repo", "facebook/mms-tts-eng", "facebook/mms-tts-eng"),
        ("piper:en_US-lessac-medium", "piper", PIPER_REPO, "en_US-lessac-medium"),
    ],
)
def test_names_resolve(name: str, kind: str, repo: str, setting: str) -> None:
    ref = resolve(name)
    assert (ref.kind, ref.repo_id, ref.setting) == (kind, repo, setting)


def test_piper_voice_names_map_to_the_voices_repository_layout() -> None:
    ref = resolve("piper:de_DE-thorsten-high")
    assert ref.files == (
        "de/de_DE/thorsten/high/de_DE-thorsten-high.onnx",
        "de/de_DE/thorsten/high/de_DE-thorsten-high.onnx.json",
    )


@pytest.mark.parametrize(
    "name", ["tiny.en", "whisper:huge-v9", "piper:lessac", "piper:en_US-lessac-ultra", "a/b/c"]
)
def test_bad_names_are_client_errors(name: str) -> None:
    with pytest.raises(ClientError):
        resolve(name)


def test_voices_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert piper_voices_dir() == tmp_path / "parley" / "piper"


def test_cli_bad_name_is_one_line(tmp_path: Path) -> None:
    result = _pull("tiny.en", env={"HF_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "whisper:SIZE" in result.stderr


def test_cli_offline_is_one_clear_line(tmp_path: Path) -> None:
    result = _pull("whisper:tiny.en", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert result.stderr.startswith("parley: error: could not fetch 'whisper:tiny.en'")
    assert "Traceback" not in result.stderr


def test_pull_piper_voice_through_the_hub_client(tmp_path: Path) -> None:
    ref = resolve("piper:en_US-test-medium")
    config = json.dumps({"audio": {"sample_rate": 22050}}).encode()
    files = {ref.files[0]: b"onnx bytes", ref.files[1]: config}
    with serve_fake_hub({PIPER_REPO: files}) as hub:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "HF_HUB_OFFLINE": "0",  # the fake hub on loopback, not the internet
        }
        result = _pull("piper:en_US-test-medium", env=env)
    assert result.returncode == 0, result.stderr
    voices = tmp_path / "data" / "parley" / "piper"
    assert (voices / "en_US-test-medium.onnx").read_bytes() == b"onnx bytes"
    assert (voices / "en_US-test-medium.onnx.json").read_bytes() == config
    assert "tts.options.model" in result.stdout


def test_pull_whisper_snapshot_through_the_hub_client(tmp_path: Path) -> None:
    files = {
        "config.json": b"{}",
        "model.bin": b"\x00" * 64,
        "tokenizer.json": b"{}",
        "vocabulary.txt": b"a\nb\n",
        "README.md": b"not fetched: faster-whisper asks only for model files",
    }
    with serve_fake_hub({"Systran/faster-whisper-tiny.en": files}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        result = _pull("whisper:tiny.en", "--dir", str(tmp_path / "w"), env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "w" / "model.bin").read_bytes() == b"\x00" * 64
    assert not (tmp_path / "w" / "README.md").exists()
    assert f'asr.options.model="{tmp_path / "w"}"' in result.stdout


def test_without_the_neural_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper.utils", None)  # import fails
    with pytest.raises(ClientError, match=r"pip install 'parley\[neural\]'"):
        resolve("whisper:tiny.en")
