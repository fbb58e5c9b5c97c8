"""Choosing a route: first match wins; tenant, key, language and PII conditions; stickiness."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.routing.decide import decide, pii_kinds_of
from parley.routing.policy import Policy, load_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
CARD = "my card is 4111 1111 1111 1111"


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


def test_decide_default_when_nothing_matches(policy: Policy) -> None:
    decision = decide(policy, tenant="globex", text="what are your opening hours?")
    assert decision.route == "default"
    assert decision.rule is None and decision.findings == () and not decision.sticky
    assert decision.chains == {"asr": (), "llm": ("cloud-llm", "local-llm"), "tts": ()}


def test_decide_tenant_route(policy: Policy) -> None:
    decision = decide(policy, tenant="acme", text="hello there")
    assert decision.route == "acme-premium"
    assert decision.rule == {"tenant": ["acme"]}
    assert decision.chains["llm"] == ("cloud-llm", "local-llm")
    assert not decision.sticky


def test_decide_pii_route_wins_because_it_comes_first(policy: Policy) -> None:
    decision = decide(policy, tenant="acme", text=CARD)
    assert decision.route == "payment-data-stays-local"
    assert decision.rule == {"pii": ["payment_card", "iban", "us_ssn"]}
    assert decision.chains == {"asr": (), "llm": ("local-llm",), "tts": ()}
    assert decision.sticky
    assert [f.kind for f in decision.findings] == ["payment_card"]
    assert decision.pii_kinds == ("payment_card",)
    assert "4111" not in repr(decision)


def test_decide_spoken_ssn_and_iban_take_the_pii_route(policy: Policy) -> None:
    for text in (
        "my social security number is five three six two two five two three two",
        "send it to DE89 3704 0044 0532 0130 00",
    ):
        assert decide(policy, tenant="x", text=text).route == "payment-data-stays-local"


def test_decide_pii_the_policy_does_not_key_on_is_not_searched(policy: Policy) -> None:
    assert "email" not in pii_kinds_of(policy)
    decision = decide(policy, tenant="x", text="write to jane@example.com or +1 415 555 2671")
    assert decision.route == "default" and decision.findings == ()


def test_decide_invalid_card_does_not_restrict(policy: Policy) -> None:
    decision = decide(policy, tenant="x", text="my order number is 1234 5678 9012 3456")
    assert decision.route == "default"


def test_decide_sticky_route_holds_whatever_the_text(policy: Policy) -> None:
    first = decide(policy, tenant="acme", text=CARD)
    later = decide(policy, tenant="acme", text="and the weather?", sticky_route=first.route)
    assert later.route == "payment-data-stays-local" and later.sticky
    assert later.chains["llm"] == ("local-llm",)
    assert later.findings == ()


def test_decide_unknown_sticky_route_is_ignored(policy: Policy) -> None:
    decision = decide(policy, tenant="acme", text="hi", sticky_route="gone-after-reload")
    assert decision.route == "acme-premium"


def test_decide_all_conditions_must_hold_and_first_match_wins() -> None:
    policy = Policy.model_validate(
        {
            "engines": {
                "a": {"stage": "llm", "engine": "faq"},
                "b": {"stage": "llm", "engine": "faq"},
                "t": {"stage": "tts", "engine": "espeak"},
            },
            "routes": [
                {"name": "acme-key", "when": {"tenant": ["acme"], "key_id": ["k1"]}, "llm": "a"},
                {"name": "german", "when": {"language": ["de"]}, "tts": ["t"]},
                {"name": "acme", "when": {"tenant": ["acme"]}, "llm": ["b"]},
                {"name": "emails", "when": {"pii": ["email"]}, "llm": ["a"], "sticky": False},
                {"name": "acme-again", "when": {"tenant": ["acme"]}, "llm": ["a"]},
            ],
        }
    )
    assert decide(policy, tenant="acme", text="hi", key_id="k1").route == "acme-key"
    assert decide(policy, tenant="acme", text="hi", key_id="k2").route == "acme"
    assert decide(policy, tenant="acme", text="hi", language="de").route == "german"
    german = decide(policy, tenant="x", text="hi", language="de")
    assert german.chains == {"asr": (), "llm": (), "tts": ("t",)}
    emails = decide(policy, tenant="x", text="jane@example.com")
    assert emails.route == "emails" and not emails.sticky  # sticky: false overrides
    assert decide(policy, tenant="x", text="hi").route == "default"
