"""20 concurrent Realtime responses racing one hard budget, on a real ``parley serve``.

A policy prices the faq engine (the LLM) and the TTS; a tenant gets a hard monthly limit that
holds a few replies' reservations. 20 sessions of that tenant each send a user message and
``response.create`` at the same moment, for several rounds. Printed per round and in total: the
limit, what the ledger says was spent, the replies completed, the requests refused with
``insufficient_quota`` (before ``response.created``, or as a failed ``response.done`` when a
reservation lost the race after the budget was read), and whether spend ever passed the limit.

python benchmarks/bench_budget_race.py [--sessions 20] [--rounds 3] [--limit-usd 0.3]
    [--max-output-tokens N] [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

from parley.ledger import Budgets, Ledger
from parley.store import Database

ROOT = Path(__file__).resolve().parents[1]
POLICY = """
engines:
  local-llm: {stage: llm, engine: faq, location: on_prem}
prices:
  local-llm: {input_token: 0.000005, output_token: 0.00002}
  tts: {character: 0.000015}
routes: []
default: {llm: [local-llm]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parley(db: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "parley.cli", *args, "--set", f"server.database={db}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout


async def one(url: str, key: str, text: str, max_output_tokens: int | None) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.recv()  # session.created
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["audio"],
                        **({"max_output_tokens": max_output_tokens} if max_output_tokens else {}),
                    },
                }
            )
        )
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": text}],
                    },
                }
            )
        )
        await ws.send(json.dumps({"type": "response.create"}))
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "error" and event["error"]["code"] == "insufficient_quota":
                return "refused"
            if event["type"] == "response.done":
                status = event["response"]["status"]
                details = event["response"].get("status_details") or {}
                error = details.get("error") or {}
                if status == "failed" and error.get("code") == "insufficient_quota":
                    return "refused_late"
                return status


def start(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """``parley serve`` with the policy, and a key of the racing tenant: (process, db, key, url)."""
    tmp = Path(tempfile.mkdtemp())
    db = args.database or str(tmp / "parley.db")
    (tmp / "policy.yaml").write_text(POLICY)
    key = parley(db, "keys", "create", "--tenant", "racer").strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "serve",
            "--profile",
            "fast",
            "--port",
            str(port),
            "--policy",
            str(tmp / "policy.yaml"),
            "--set",
            f"server.database={db}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server, db, key, f"ws://127.0.0.1:{port}/v1/realtime"
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("parley serve did not start")
        time.sleep(0.2)


async def run(args: argparse.Namespace, db: str, key: str, url: str) -> None:
    database = Database(db)
    print(f"{args.sessions} sessions x {args.rounds} rounds, hard limit ${args.limit_usd}")
    print("| round | limit USD | spent USD | completed | refused | refused late | over? |")
    print("|---|---|---|---|---|---|---|")
    over = False
    for round_ in range(args.rounds):
        tenant_budget = Budgets(database)
        before = sum(r.cost_nusd for r in Ledger(database).records(tenant="racer"))
        # A fresh budget each round: changing the period starts a new one, nothing spent.
        tenant_budget.set("racer", limit_usd=args.limit_usd, period="day")
        tenant_budget.set("racer", limit_usd=args.limit_usd, period="total")
        outcomes = await asyncio.gather(
            *(
                one(url, key, f"What are your opening hours, caller {i}?", args.max_output_tokens)
                for i in range(args.sessions)
            )
        )
        spent = sum(r.cost_nusd for r in Ledger(database).records(tenant="racer")) - before
        passed = spent > args.limit_usd * 1e9
        over |= passed
        done = outcomes.count("completed")
        print(
            f"| {round_ + 1} | {args.limit_usd} | {spent / 1e9:.6f} | {done} "
            f"| {outcomes.count('refused')} | {outcomes.count('refused_late')} | "
            f"{'YES' if passed else 'no'} |"
        )
    print(f"spend ever over the limit: {'YES' if over else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit-usd", type=float, default=0.3)
    parser.add_argument(
        "--max-output-tokens", type=int, help="each session's bound on its reply (default: none)"
    )
    parser.add_argument("--database", help="a path or postgresql:// URL (default: a temp file)")
    args = parser.parse_args()
    server, db, key, url = start(args)
    try:
        asyncio.run(run(args, db, key, url))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
