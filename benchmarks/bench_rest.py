"""REST figures for ``parley serve`` (issue: REST API and keys), measured with the official SDK.

1. ``/v1/audio/speech``: time to first byte and real-time factor (audio seconds / wall seconds),
   one request at a time and 10 concurrent, streamed as wav.
2. ``/v1/audio/transcriptions``: real-time factor over the shared English clips (wav upload).
3. Auth overhead: ``GET /v1/models`` latency with a key against a server with auth on, minus
   the same request against a ``--no-auth`` server, in the same run.

    python benchmarks/bench_rest.py [--requests 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from parley.bench import load_clips, summarize

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "Thank you for calling. Your order shipped this morning and should arrive on Thursday. "
    "Is there anything else I can help you with today?"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(db: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--set",
            f"server.database={db}",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PARLEY_LLM_BASE_URL": ""},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("parley serve did not start")


async def speech_once(client: openai.AsyncOpenAI) -> tuple[float, float]:
    """(time to first byte, real-time factor) of one streamed wav."""
    start = time.perf_counter()
    first = None
    size = 0
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    ) as response:
        async for chunk in response.iter_bytes():
            if first is None:
                first = time.perf_counter() - start
            size += len(chunk)
    wall = time.perf_counter() - start
    audio_s = (size - 44) / 2 / 24000
    return 1000 * (first or wall), audio_s / wall


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-rest-"))
    db = tmp / "parley.db"
    key = (
        subprocess.run(  # noqa: ASYNC221 - setup, before anything is measured
            [
                sys.executable,
                "-m",
                "parley.cli",
                "keys",
                "create",
                "--tenant",
                "bench",
                "--set",
                f"server.database={db}",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    }
    proc, port = start(db)
    open_proc, open_port = start(tmp / "open.db", "--no-auth")
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        await speech_once(client)  # warm
        for concurrency in (1, 10):
            rows: list[tuple[float, float]] = []
            for _ in range(max(1, args.requests // concurrency)):
                rows += await asyncio.gather(*(speech_once(client) for _ in range(concurrency)))
            ttfb, rtf = summarize(r[0] for r in rows), summarize(r[1] for r in rows)
            result[f"speech_{concurrency}"] = {"ttfb_ms": ttfb.to_dict(), "rtf": rtf.to_dict()}
            print(f"speech x{concurrency:<2} TTFB {ttfb} ms | real-time factor {rtf}")

        clips = [c for c in load_clips() if c.duration_s < 12]
        start_t = time.perf_counter()
        audio_s = 0.0
        for clip in clips:
            with clip.path.open("rb") as f:
                await client.audio.transcriptions.create(model="whisper-1", file=f)
            audio_s += clip.duration_s
        rtf_asr = audio_s / (time.perf_counter() - start_t)
        result["transcription_rtf"] = round(rtf_asr, 2)
        print(f"transcriptions: {audio_s:.0f} s of audio at {rtf_asr:.1f}x real time")

        open_client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{open_port}/v1", api_key="none"
        )

        async def latency(c: openai.AsyncOpenAI) -> float:
            t = time.perf_counter()
            await c.models.list()
            return 1000 * (time.perf_counter() - t)

        keyed: list[float] = []
        bare: list[float] = []
        for _ in range(10):  # warm both
            await latency(client)
            await latency(open_client)
        for _ in range(200):  # interleaved, so both see the same machine
            keyed.append(await latency(client))
            bare.append(await latency(open_client))
        k, b = summarize(keyed), summarize(bare)
        result["auth_overhead_ms"] = {
            "with_key": k.to_dict(),
            "no_auth": b.to_dict(),
            "p50_difference": round(k.p50 - b.p50, 3),
        }
        print(
            f"GET /v1/models with a key {k} ms; without auth {b} ms; "
            f"overhead p50 {k.p50 - b.p50:.2f} ms"
        )
        await client.close()
        await open_client.close()
    finally:
        for p in (proc, open_proc):
            p.terminate()
            p.wait()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
