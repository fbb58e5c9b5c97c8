"""The control plane inside one pipeline: failover, reservations, records, refusals.

Engines are test doubles (``tests/fakes``); the ledger and budgets are real, on a SQLite file
(and PostgreSQL where the ``database`` fixture runs there).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.engines.base import Message
from parley.errors import EngineError, InsufficientQuotaError
from parley.ledger import Budgets, Ledger
from parley.pipeline import Pipeline, PipelineEvent, ResponseDone, StageError
from parley.pipeline.control import Caller, ControlPlane
from parley.routing import Policy
from parley.store import Database
from tests.fakes.engines import fake_engines, fake_settings, tone
from tests.fakes.flaky import FlakyLLM

PRICES = {
    "cloud": {"input_token": 0.0000025, "output_token": 0.00001},
    "local": {"input_token": 0.0000001, "output_token": 0.0000001},
    "asr": {"audio_second": 0.0001},
    "tts": {"character": 0.000015},
}


def policy() -> Policy:
    return Policy.model_validate(
        {
            "engines": {
                "cloud": {"stage": "llm", "engine": "openai", "base_url": "http://x.test/v1"},
                "local": {"stage": "llm", "engine": "faq"},
            },
            "prices": PRICES,
            "routes": [],
            "default": {"llm": ["cloud", "local"]},
            "failover": {"first_token_timeout_ms": 500, "breaker": {"failures": 3, "open_s": 30}},
        }
    )


def plane(database: Database, cloud: Any, local: Any, **engines: Any) -> tuple[ControlPlane, Any]:
    built, asr, llm, tts = fake_engines(**engines)
    control = ControlPlane(
        built,
        policy=policy(),
        named={"cloud": cloud, "local": local},
        ledger=Ledger(database),
        budgets=Budgets(database),
    )
    return control, (asr, llm, tts)


async def reply(p: Pipeline, text: str, events: list[PipelineEvent]) -> ResponseDone:
    p.history.add(Message("user", text))
    rid = p.start_response()
    await p.settle()
    done = [e for e in events if isinstance(e, ResponseDone) and e.response_id == rid]
    assert len(done) == 1
    return done[0]


def budget_state(database: Database, tenant: str) -> tuple[int, int]:
    (budget,) = Budgets(database).list(tenant)
    return budget.spent_nusd, budget.reserved_nusd


async def test_control_failover_records_each_attempt_and_settles(database: Database) -> None:
    local = fake_engines()[2]
    cloud = FlakyLLM(name="openai", error=EngineError("HTTP 503"))
    control, _ = plane(database, cloud, local)
    Budgets(database).set("acme", limit_usd=10)
    events: list[PipelineEvent] = []
    async with Pipeline(
        control.engines, fake_settings(), sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        done = await reply(p, "Hello?", events)
    assert done.status == "completed" and done.text.startswith("Hello there")
    records = Ledger(database).records(tenant="acme")
    llm = [(r.engine, r.outcome) for r in records if r.stage == "llm"]
    assert llm == [("cloud", "failed_over"), ("local", "ok")]
    tts = [r for r in records if r.stage == "tts"]
    assert tts and all(r.outcome == "ok" and r.characters > 0 for r in tts)
    assert all(r.response_id == done.response_id and r.route == "default" for r in records)
    spent, reserved = budget_state(database, "acme")
    assert reserved == 0  # every reservation settled or released
    assert spent == sum(r.cost_nusd for r in records) > 0


async def test_control_barge_in_records_what_was_consumed(database: Database) -> None:
    local = fake_engines(llm_delay_s=0.02, llm_reply=" ".join(["word"] * 60))[2]
    cloud = FlakyLLM(name="openai", error=EngineError("down"))
    control, _ = plane(database, cloud, local)
    Budgets(database).set("acme", limit_usd=10)
    events: list[PipelineEvent] = []
    async with Pipeline(
        control.engines, fake_settings(), sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        p.history.add(Message("user", "Talk for a while."))
        p.start_response()
        await asyncio.sleep(0.3)
        assert await p.cancel_response("turn_detected")
    records = Ledger(database).records(tenant="acme")
    cut = [r for r in records if r.stage == "llm" and r.outcome == "cancelled"]
    assert len(cut) == 1 and cut[0].engine == "local"
    assert 0 < cut[0].output_tokens < 60  # some words were generated, not all
    spent, reserved = budget_state(database, "acme")
    assert reserved == 0 and spent == sum(r.cost_nusd for r in records)


async def test_control_spent_budget_refuses_before_any_engine_call(database: Database) -> None:
    local = fake_engines()[2]
    cloud = FlakyLLM(name="openai")
    control, _ = plane(database, cloud, local)
    budgets = Budgets(database)
    budgets.set("acme", limit_usd=0.001)
    events: list[PipelineEvent] = []
    async with Pipeline(
        control.engines, fake_settings(), sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        p.history.add(Message("user", "Hello?"))
        # The bound: the prompt's bytes at the cloud's price plus max_output_tokens.
        assert isinstance(p.admit(), InsufficientQuotaError)
        with pytest.raises(InsufficientQuotaError):
            p.start_response()
    assert cloud.calls == 0 and local.requests == []
    assert not [e for e in events if isinstance(e, ResponseDone)]
    assert budget_state(database, "acme") == (0, 0)
    # Another tenant is not held to acme's budget.
    other = control.for_caller(Caller("globex"))
    assert other.refusal() is None


async def test_control_asr_audio_is_reserved_as_it_is_fed(database: Database) -> None:
    """A 40 s turn against a budget that holds 30 s of audio: the recogniser gets 30 s, the
    turn fails with insufficient_quota, and what was heard is charged."""
    local = fake_engines()[2]
    control, (asr, _, _) = plane(database, FlakyLLM(name="openai"), local)
    Budgets(database).set("acme", limit_usd=0.004)  # 30 s at $0.0001/s is $0.003
    events: list[PipelineEvent] = []
    settings = fake_settings(silence_duration_ms=500)
    async with Pipeline(
        control.engines, settings, sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        speech = tone(40_000)
        step = 320
        for i in range(0, len(speech), step):  # 20 ms packets, each taken before the next
            await p.push(type(speech)(speech.samples[i : i + step], speech.sample_rate))
            await p.settle()
        for _ in range(40):
            await p.push(tone(20, amplitude=0))
        await p.settle()
    errors = [e for e in events if isinstance(e, StageError)]
    assert errors and isinstance(errors[0].error, InsufficientQuotaError)
    (record,) = [r for r in Ledger(database).records(tenant="acme") if r.stage == "asr"]
    assert 29.0 <= record.audio_in_s <= 30.0 and record.outcome == "cancelled"
    assert sum(asr.utterances) <= 30 * asr.sample_rate
    spent, reserved = budget_state(database, "acme")
    assert reserved == 0 and spent == record.cost_nusd


async def test_control_silent_engine_times_out_to_the_next(database: Database) -> None:
    """No first token within first_token_timeout_ms (500 here): the same reply goes on."""
    local = fake_engines()[2]
    cloud = FlakyLLM(name="openai", hang_after=0)
    control, _ = plane(database, cloud, local)
    events: list[PipelineEvent] = []
    async with Pipeline(
        control.engines, fake_settings(), sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        done = await reply(p, "Hello?", events)
    assert done.status == "completed" and done.text.startswith("Hello there")
    assert cloud.closed == 1  # the hung stream was closed, not leaked
    llm = [r for r in Ledger(database).records(tenant="acme") if r.stage == "llm"]
    assert [(r.engine, r.outcome) for r in llm] == [("cloud", "failed_over"), ("local", "ok")]
    assert 450 <= (llm[0].latency_ms or 0) < 2000


async def test_control_every_engine_failing_fails_the_reply_and_charges_nothing(
    database: Database,
) -> None:
    cloud = FlakyLLM(name="openai", error=EngineError("HTTP 503"))
    local = FlakyLLM(name="faq", error=EngineError("crashed"))
    control, _ = plane(database, cloud, local)
    Budgets(database).set("acme", limit_usd=10)
    events: list[PipelineEvent] = []
    async with Pipeline(
        control.engines, fake_settings(), sink=events.append, control=control, caller=Caller("acme")
    ) as p:
        done = await reply(p, "Hello?", events)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "engine_unavailable"
    outcomes = {r.outcome for r in Ledger(database).records(tenant="acme") if r.stage == "llm"}
    assert "cancelled" not in outcomes and outcomes <= {"failed_over", "error"}
    assert budget_state(database, "acme") == (0, 0)
