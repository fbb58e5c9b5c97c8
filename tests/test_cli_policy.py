"""``parley policy check`` and ``parley policy explain``, and ``parley serve --policy``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.cli import _parser, main
from parley.commands.options import settings_from

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policy.yaml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_policy_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["policy", "check", str(EXAMPLE)], capsys)
    assert (code, out, err) == (0, f"{EXAMPLE}: ok\n", "")


def test_cli_policy_check_prints_each_error_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "engines:\n  x: {stage: llm, engine: nope}\nroutes:\n  - name: r\n    llm: [ghost]\n",
        encoding="utf-8",
    )
    code, out, _ = run(["policy", "check", str(bad), str(EXAMPLE)], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{bad}:2: ") and "'nope' is not known" in lines[0]
    assert lines[1].startswith(f"{bad}:5: ") and "'ghost'" in lines[1]
    assert lines[2] == f"{EXAMPLE}: ok"


def test_cli_policy_check_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: [unclosed\n", encoding="utf-8")
    code, out, _ = run(["policy", "check", str(bad)], capsys)
    assert code == 1 and out.startswith(f"{bad}:3: invalid YAML")


def test_cli_policy_explain_table(capsys: pytest.CaptureFixture[str]) -> None:
    text = "my card is four one one one one one one one one one one one one one one one"
    argv = ["policy", "explain", "--policy", str(EXAMPLE), "--tenant", "acme", "--text", text]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "payment-data-stays-local" in out
    assert "payment_card ************1111" in out
    assert "local-llm (faq, on_prem)" in out
    assert "sticky  yes" in out
    assert "one one" not in out


def test_cli_policy_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "explain", "--policy", str(EXAMPLE), "--tenant", "acme"]
    code, out, _ = run([*argv, "--text", "hello", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {
        "route": "acme-premium",
        "rule": {"tenant": ["acme"]},
        "sticky": False,
        "pii": [],
        "chain": {"asr": [], "llm": ["cloud-llm", "local-llm"], "tts": []},
    }
    code, out, _ = run([*argv, "--text", "SSN 123-45-6789", "--json"], capsys)
    result = json.loads(out)
    assert result["pii"] == [{"kind": "us_ssn", "value": "*****6789"}]
    assert result["route"] == "payment-data-stays-local" and result["sticky"] is True
    code, out, _ = run(
        [*argv, "--text", "hi", "--sticky-route", "payment-data-stays-local", "--json"], capsys
    )
    assert json.loads(out)["chain"]["llm"] == ["local-llm"]


def test_cli_policy_explain_bad_policy_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {llm: [ghost]}\n", encoding="utf-8")
    argv = ["policy", "explain", "--policy", str(bad), "--tenant", "a", "--text", "x"]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"parley: error: {bad}:1: default: llm names engine 'ghost'")
    assert len(err.splitlines()) == 1


def test_cli_serve_policy_flag_sets_the_setting() -> None:
    args = _parser().parse_args(["serve", "--policy", str(EXAMPLE)])
    assert settings_from(args).policy.file == EXAMPLE
    assert settings_from(_parser().parse_args(["serve"])).policy.file is None
