"""The policy file: the shipped example loads; every mistake is reported at its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from parley.config import Settings
from parley.routing.build import build_policy_engines, instance_settings
from parley.routing.policy import EngineSpec, Policy, PolicyError, check_policy, load_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


GOOD = """
engines:
  cloud-llm: {stage: llm, engine: openai, base_url: "http://127.0.0.1:1/v1", location: external}
  local-llm: {stage: llm, engine: faq}
  local-tts: {stage: tts, engine: espeak}
routes:
  - name: local
    when: {pii: [payment_card]}
    llm: [local-llm]
default: {llm: [cloud-llm, local-llm]}
"""


def test_policy_example_loads_as_written() -> None:
    assert check_policy(EXAMPLE) == []
    policy = load_policy(EXAMPLE)
    assert set(policy.engines) == {"cloud-llm", "local-llm"}
    cloud = policy.engines["cloud-llm"]
    assert (cloud.stage, cloud.engine, cloud.location) == ("llm", "openai", "external")
    assert (cloud.model, cloud.base_url) == ("gpt-4o-mini", "http://127.0.0.1:8799/v1")
    assert policy.engines["local-llm"].location == "on_prem"
    assert policy.prices["cloud-llm"] == {"input_token": 0.0000025, "output_token": 0.00001}
    assert policy.prices["asr"] == {"audio_second": 0.0001}
    assert [r.name for r in policy.routes] == ["payment-data-stays-local", "acme-premium"]
    first, second = policy.routes
    assert first.when.pii == ["payment_card", "iban", "us_ssn"] and first.is_sticky
    assert second.when.tenant == ["acme"] and not second.is_sticky
    assert second.chains() == {"asr": (), "llm": ("cloud-llm", "local-llm"), "tts": ()}
    assert policy.default.llm == ["cloud-llm", "local-llm"]
    assert policy.failover.first_token_timeout_ms == 2000
    assert (policy.failover.breaker.failures, policy.failover.breaker.open_s) == (3, 30)


def test_policy_defaults_and_scalars_as_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        engines:
          local-llm: {stage: llm, engine: faq, knowledge: kb.md, timeout_s: 5}
        routes:
          - {name: acme, when: {tenant: acme}, llm: local-llm, sticky: true}
        """,
    )
    policy = load_policy(path)
    assert policy.routes[0].when.tenant == ["acme"]
    assert policy.routes[0].llm == ["local-llm"] and policy.routes[0].is_sticky
    assert policy.engines["local-llm"].options == {"knowledge": "kb.md", "timeout_s": 5}
    assert policy.default.chains() == {"asr": (), "llm": (), "tts": ()}
    assert policy.failover.breaker.failures == 3


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("engines: {a: {stage: llm\n", 2, "invalid YAML"),
        ("engines:\n  a: [1, 2\n", 3, "invalid YAML"),
        ("- just\n- a list\n", 1, "must be a mapping"),
        ("", 1, "the policy is empty"),
        (GOOD + "extra: 1\n", 10, "unknown key 'extra'"),
        (GOOD.replace("engine: faq", "engine: gpt5"), 3, "llm engine 'gpt5' is not known"),
        (GOOD.replace("engine: espeak", "engine: faq"), 4, "tts engine 'faq' is not known"),
        (GOOD.replace("llm: [local-llm]", "llm: [ghost]"), 8, "'ghost', which engines does"),
        (GOOD.replace("llm: [local-llm]", "llm: [local-tts]"), 8, "is a tts engine, not llm"),
        (GOOD.replace("{llm: [cloud-llm", "{llm: [nope"), 9, "default: llm names engine 'nope'"),
        (GOOD.replace("[payment_card]", "[credit_card]"), 7, "unknown PII kind 'credit_card'"),
        (GOOD.replace("  - name: local\n", "  - sticky: true\n"), 6, "route #1 has no name"),
        (GOOD.replace("default:", "  - {name: local}\ndefault:"), 9, "duplicate route name"),
        (GOOD.replace("name: local", "name: default"), 6, "'default' is reserved"),
        (GOOD.replace("when: {pii", "when: {colour: red, pii"), 7, "unknown key 'colour'"),
        (GOOD.replace("when: {pii: [payment_card]}", "when: {tenant: []}"), 7, "empty tenant"),
        (GOOD.replace("llm: [local-llm]", "llm: []"), 8, "empty llm chain"),
        (GOOD + "prices:\n  local-llm: {input_token: -1}\n", 11, "negative price"),
        (GOOD + "prices:\n  local-llm:\n    tokens: 1\n", 12, "unknown price unit 'tokens'"),
        (GOOD + "prices:\n  nowhere: {character: 1}\n", 11, "price for unknown engine"),
        (GOOD + "prices:\n  local-llm: {input_token: cheap}\n", 11, "input_token"),
        (GOOD + "failover: {breaker: {failures: 0}}\n", 10, "failures"),
        (GOOD.replace("  local-tts:", "  local-llm:"), 4, "duplicate key 'local-llm'"),
        (GOOD.replace("{stage: llm, engine: faq}", "{engine: faq}"), 3, "stage: missing"),
        (GOOD.replace("stage: tts", "stage: speech"), 4, "engines.local-tts.stage"),
    ],
)
def test_policy_check_reports_each_error_at_its_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text) if text else tmp_path / "policy.yaml"
    if not text:
        path.write_text("", encoding="utf-8")
    errors = check_policy(path)
    assert errors, "expected an error"
    assert any(e.startswith(f"{path}:{line}: ") and message in e for e in errors), errors
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.message == errors[0]


def test_policy_check_reports_every_error(tmp_path: Path) -> None:
    text = GOOD.replace("engine: faq", "engine: gpt5").replace("[payment_card]", "[cc]")
    errors = check_policy(write(tmp_path, text + "prices:\n  x: {character: 1}\n"))
    assert len(errors) == 3
    assert [int(e.split(":")[1]) for e in errors] == [3, 7, 11]


def test_policy_unreadable_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    (error,) = check_policy(missing)
    assert error.startswith(f"{missing}:1: cannot read the policy")


def test_policy_model_checks_consistency_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="which engines does not define"):
        Policy.model_validate({"default": {"llm": ["ghost"]}})


def test_policy_instance_settings_overlay_the_configured_section() -> None:
    settings = Settings.model_validate(
        {"llm": {"base_url": "http://a/v1", "api_key": "secret", "model": "m0", "options": {}}}
    )
    same_server = EngineSpec(stage="llm", engine="openai", model="m1", timeout_s=5, seed=1)
    llm = instance_settings("x", same_server, settings.llm)
    dumped = llm.model_dump()
    assert (dumped["model"], dumped["timeout_s"], dumped["api_key"]) == ("m1", 5, "secret")
    assert dumped["options"] == {"seed": 1}
    other_server = EngineSpec(stage="llm", engine="openai", base_url="http://b/v1")
    # A key is never sent to a server it was not configured for.
    assert instance_settings("y", other_server, settings.llm).model_dump()["api_key"] is None
    faq = EngineSpec(stage="llm", engine="faq", knowledge="kb.md")
    assert str(instance_settings("z", faq, settings.llm).model_dump()["knowledge"]) == "kb.md"


def test_policy_build_engines_through_the_registry() -> None:
    policy = load_policy(EXAMPLE)
    built = build_policy_engines(policy, Settings())
    assert set(built) == {"cloud-llm", "local-llm"}
    assert type(built["local-llm"]).__name__ == "FAQLLM"
    assert type(built["cloud-llm"]).__name__ == "OpenAILLM"
