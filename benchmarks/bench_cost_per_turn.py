"""Cost per turn over a long call, and what the control plane adds to each turn.

A 50-turn text call through the real pipeline (faq LLM, espeak-ng TTS) under a policy with the
example's prices, metered into a SQLite ledger. Each user turn is a transcript of
``../shared/speech``. The history has a token budget (``pipeline.history_tokens``), so the
LLM's input, and with it the cost of a turn, stops growing once the budget is full.

Printed: cost per turn (USD) at turns 1, 5, 10, 20, 30, 40, 50 with the LLM's input tokens;
the spread of the cost over turns 11-50; and the time the control plane spends per turn
(route + reservation before the LLM, settle + ledger write before response.done), p50/p99.

python benchmarks/bench_cost_per_turn.py [--turns 50] [--history-tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from parley.config import load_settings
from parley.engines.base import Message
from parley.engines.registry import build_engines
from parley.ledger import Budgets, Ledger
from parley.pipeline import Pipeline
from parley.pipeline.control import Caller, ControlPlane, ResponsePlan
from parley.routing import load_policy
from parley.routing.build import build_policy_engines
from parley.store import Database

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "speech"

POLICY = """
engines:
  local-llm: {stage: llm, engine: faq, location: on_prem}
prices:
  local-llm: {input_token: 0.0000025, output_token: 0.00001}
  asr: {audio_second: 0.0001}
  tts: {character: 0.000015}
routes: []
default: {llm: [local-llm]}
"""


def transcripts() -> list[str]:
    lines = (SPEECH / "manifest.jsonl").read_text().splitlines()
    clips = [json.loads(line) for line in lines if line.strip()]
    return [c["transcript"] for c in clips if c.get("language") == "en" and c.get("transcript")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(turns: int, history_tokens: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "policy.yaml").write_text(POLICY)
    settings = load_settings(
        env={},
        overrides={
            "profile": "fast",
            "pipeline.history_tokens": history_tokens,
            "tts.engine": "espeak",
        },
    )
    policy = load_policy(tmp / "policy.yaml")
    engines = build_engines(settings)
    db = Database(tmp / "parley.db")
    plane = ControlPlane(
        engines,
        policy=policy,
        named=build_policy_engines(policy, settings),
        ledger=Ledger(db),
        budgets=Budgets(db),
    )
    overhead_ms: list[float] = []
    original_close = ResponsePlan.close

    def timed_close(self: ResponsePlan) -> list:  # type: ignore[type-arg]
        start = time.perf_counter()
        out = original_close(self)
        overhead_ms.append(1000 * (time.perf_counter() - start))
        return out

    ResponsePlan.close = timed_close  # type: ignore[method-assign]
    texts = transcripts()
    rows: list[tuple[int, float, int]] = []
    plan_ms: list[float] = []
    async with Pipeline(engines, settings, control=plane, caller=Caller("bench")) as pipeline:
        control = pipeline.control
        assert control is not None
        original_plan = control.plan

        def timed_plan(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            out = original_plan(*args, **kwargs)
            plan_ms.append(1000 * (time.perf_counter() - start))
            return out

        control.plan = timed_plan  # type: ignore[method-assign]
        for turn in range(turns):
            pipeline.history.add(Message("user", texts[turn % len(texts)]))
            rid = pipeline.start_response()
            await pipeline.settle()
            records = Ledger(db).records(tenant="bench")
            mine = [r for r in records if r.response_id == rid]
            cost = sum(r.cost_nusd for r in mine) / 1e9
            tokens = sum(r.input_tokens for r in mine if r.stage == "llm")
            rows.append((turn + 1, cost, tokens))
    per_turn = [p + c for p, c in zip(plan_ms, overhead_ms, strict=False)]
    print(f"turns: {turns}, history budget: {history_tokens} tokens, prices as examples/policy")
    print("| turn | cost (USD) | LLM input tokens |")
    print("|---|---|---|")
    for turn, cost, tokens in rows:
        if turn in (1, 5, 10, 20, 30, 40, 50):
            print(f"| {turn} | {cost:.6f} | {tokens} |")
    # Once the history budget is full (input within 5% of its peak), the cost is flat.
    peak = max(tokens for _, _, tokens in rows)
    full = [(t, c) for t, c, tokens in rows if tokens >= 0.95 * peak]
    if full:
        costs = [c for _, c in full]
        print(
            f"turns {full[0][0]}-{turns} (history budget full): cost min {min(costs):.6f}, "
            f"max {max(costs):.6f}, mean {statistics.mean(costs):.6f} USD "
            f"(spread {100 * (max(costs) - min(costs)) / statistics.mean(costs):.1f}%)"
        )
    print(
        f"control plane per turn: p50 {pct(per_turn, 0.5):.3f} ms, "
        f"p99 {pct(per_turn, 0.99):.3f} ms (route + reserve: p50 {pct(plan_ms, 0.5):.3f} ms; "
        f"settle + ledger write: p50 {pct(overhead_ms, 0.5):.3f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--history-tokens", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(run(args.turns, args.history_tokens))


if __name__ == "__main__":
    main()
