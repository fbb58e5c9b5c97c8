"""Policy evaluation time per turn: ``decide()`` on real transcripts and on sentences with PII.

    python benchmarks/bench_policy.py [--policy examples/policy.yaml] [--rounds 200]

Prints p50, p99 and max in microseconds over every (text, round); the target is p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from parley.routing.decide import decide
from parley.routing.pii import PII_KINDS, find_pii
from parley.routing.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
SPEECH = Path("/work/shared/speech/manifest.jsonl")

PII_SENTENCES = [
    "my card number is 4111 1111 1111 1111 and it expires in december",
    "it's four one one one one one one one one one one one one one one one",
    "my order number is 1234 5678 9012 3456, can you check where it is",
    "please send the refund to DE89 3704 0044 0532 0130 00 by friday",
    "the account is GB82 WEST 1234 5698 7654 32",
    "my social security number is five three six two two five two three two",
    "my social is 123-45-6789",
    "you can reach me at jane.doe@example.com or on +1 415 555 2671",
    "call me back on oh two oh seven nine four six oh nine five eight",
    "I have 12 apples, 3 pears and it cost 1,250 dollars in 2024",
    "john dot smith at example dot com is my email",
    "room 101, floor 3, building 7, extension 4412",
]


def texts() -> list[str]:
    out = list(PII_SENTENCES)
    if SPEECH.exists():
        for line in SPEECH.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line)["transcript"])
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", type=Path, default=ROOT / "examples" / "policy.yaml")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    policy = load_policy(args.policy)
    corpus = texts()
    for text in corpus:  # warm caches (phone metadata, regexes)
        decide(policy, tenant="acme", text=text)
    rows = []
    for label, run in (
        ("decide (policy's kinds)", lambda t: decide(policy, tenant="acme", text=t)),
        ("find_pii (all kinds)", lambda t: find_pii(t, PII_KINDS)),
    ):
        times: list[float] = []
        for _ in range(args.rounds):
            for text in corpus:
                start = time.perf_counter_ns()
                run(text)
                times.append((time.perf_counter_ns() - start) / 1000)
        times.sort()
        rows.append((label, len(times), *(percentile(times, q) for q in (0.5, 0.99)), times[-1]))
    print(
        f"{len(corpus)} texts x {args.rounds} rounds; {platform.processor() or platform.machine()}"
    )
    print(f"{'':26} {'n':>7} {'p50 µs':>8} {'p99 µs':>8} {'max µs':>8}")
    for label, n, p50, p99, worst in rows:
        print(f"{label:26} {n:>7} {p50:>8.1f} {p99:>8.1f} {worst:>8.1f}")
    slowest = max(corpus, key=lambda t: _time(lambda: find_pii(t, PII_KINDS)))
    print(f"slowest text for find_pii: {slowest[:60]!r}")


def _time(fn: object) -> float:
    assert callable(fn)
    runs = []
    for _ in range(20):
        start = time.perf_counter_ns()
        fn()
        runs.append(time.perf_counter_ns() - start)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
