"""``parley say`` watermarks what it writes; key and budget changes from the CLI are audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.audio.files import read_audio
from parley.cli import main
from parley.trust.watermark import WatermarkKey, detect


def sets(tmp: Path) -> list[str]:
    return [
        "--set",
        f"server.database={tmp / 'parley.db'}",
        "--set",
        f"trust.watermark_key_file={tmp / 'watermark.key'}",
        "--set",
        f"trust.audit_key_file={tmp / 'audit.key'}",
    ]


def test_say_writes_a_watermarked_file_that_detect_resolves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hello.wav"
    text = "Thank you for calling. Your order is on its way and will arrive on Thursday."
    assert main(["say", text, "-o", str(out), *sets(tmp_path)]) == 0
    found = detect(WatermarkKey.load_or_create(tmp_path / "watermark.key"), read_audio(out))
    assert found.detected and found.payload is not None
    capsys.readouterr()
    assert main(["watermark", "detect", str(out), "--json", *sets(tmp_path)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["payload"]["id"] == found.payload
    assert answer["payload"]["response_id"].startswith("say_")


def test_say_without_watermark_writes_an_unmarked_file(tmp_path: Path) -> None:
    out = tmp_path / "plain.wav"
    text = "Thank you for calling. Your order is on its way and will arrive on Thursday."
    args = ["say", text, "-o", str(out), *sets(tmp_path), "--set", "trust.watermark=false"]
    assert main(args) == 0
    key = WatermarkKey.load_or_create(tmp_path / "watermark.key")
    assert not detect(key, read_audio(out)).detected


def test_key_and_budget_changes_are_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--tenant", "acme", *sets(tmp_path)]) == 0
    key_id = capsys.readouterr().out.split()[1]
    assert main(["keys", "revoke", key_id, "--tenant", "acme", *sets(tmp_path)]) == 0
    budget = ["budgets", "set", "--tenant", "acme", "--limit-usd", "5", *sets(tmp_path)]
    assert main(budget) == 0
    capsys.readouterr()
    assert main(["audit", "export", "--jsonl", *sets(tmp_path)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in records] == ["key.created", "key.revoked", "budget.set"]
    assert records[1]["data"]["key_id"] == key_id
    assert main(["audit", "verify", *sets(tmp_path)]) == 0
