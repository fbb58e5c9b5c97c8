"""Server-side Realtime figures for ``parley serve`` on this machine (issue: Realtime server).

1. ``speech_stopped`` -> first ``response.output_audio.delta``, per turn, with 1 session and with
   ``--sessions`` concurrent sessions, each streaming real speech at real-time pace.
2. Barge-in: after ``speech_started`` during a response, when the last audio delta of that
   response arrives. Embedded engines finish a reply in milliseconds, long before a caller can
   interrupt, so this part runs parley's ``openai`` engine against a paced LLM simulator that
   streams ~30 tokens/s, as a hosted model does: the response is still being generated when the
   caller speaks.
3. Memory per idle session: server RSS with ``--idle`` idle sessions open, minus RSS before.

Timestamps are taken on the client, on loopback, right as each message arrives.

    python benchmarks/bench_server.py [--sessions 20] [--turns 3] [--idle 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from parley.audio.files import read_audio
from parley.audio.resample import resample
from parley.bench import load_clips, summarize

ROOT = Path(__file__).resolve().parents[1]
PACKET = 480  # 20 ms at 24 kHz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a paced LLM simulator (OpenAI-compatible streaming chat completions) ------------------------


def paced_llm(port: int, tokens_per_s: float) -> uvicorn.Server:
    async def complete(request: Request) -> StreamingResponse:
        await request.json()

        async def stream() -> AsyncIterator[str]:
            for i in range(300):
                await asyncio.sleep(1 / tokens_per_s)
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0,
                         "model": "paced", "choices": [{"index": 0, "delta": {
                             "content": f"word{i}, " if i % 8 else f"Sentence {i}. "},
                             "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server


# --- parley serve ------------------------------------------------------------------------------


def start_parley(port: int, env: dict[str, str], db: Path, sets: list[str]
                 ) -> subprocess.Popen[bytes]:
    extra = [arg for item in sets for arg in ("--set", item)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "parley.cli", "serve", "--port", str(port), "--log-level",
         "error", "--no-auth", "--set", f"server.database={db}", *extra],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("parley serve did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- one caller -----------------------------------------------------------------------------------


def packets(pcm: np.ndarray) -> list[str]:
    return [base64.b64encode(pcm[i : i + PACKET].astype("<i2").tobytes()).decode()
            for i in range(0, len(pcm), PACKET)]


async def stream(ws: Any, frames: list[str], start: float) -> None:
    """Send 20 ms packets at real-time pace against a monotonic schedule."""
    for i, audio in enumerate(frames):
        delay = start + i * 0.02 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))


async def caller(url: str, clips: list[np.ndarray], turns: int, seed: int) -> list[float]:
    """Real-time speech turns; returns speech_stopped -> first audio delta for each."""
    rng = random.Random(seed)
    await asyncio.sleep(rng.random())
    gaps: list[float] = []
    silence = packets(np.zeros(24 * 1500, np.int16))
    async with websockets.connect(url, max_size=None) as ws:
        state: dict[str, float | None] = {"stopped": None}
        got_first = asyncio.Event()
        done = asyncio.Event()

        async def reader() -> None:
            async for raw in ws:
                event = json.loads(raw)
                kind = event["type"]
                if kind == "input_audio_buffer.speech_stopped":
                    state["stopped"] = time.perf_counter()
                elif kind == "response.output_audio.delta" and not got_first.is_set():
                    stopped = state["stopped"]
                    if stopped is not None:
                        gaps.append((time.perf_counter() - stopped) * 1000)
                    got_first.set()
                elif kind == "response.done":
                    done.set()

        await ws.recv()  # session.created; only then may the reader take over the socket
        task = asyncio.create_task(reader())
        try:
            for t in range(turns):
                got_first.clear()
                done.clear()
                state["stopped"] = None
                pcm = clips[(seed + t) % len(clips)]
                await stream(ws, packets(pcm) + silence, time.perf_counter())
                try:
                    await asyncio.wait_for(done.wait(), 20)
                except TimeoutError:
                    gaps.append(float("inf"))  # no reply within 20 s: counted, never hidden
        finally:
            task.cancel()
    return gaps


async def barge_in(url: str, speech: np.ndarray) -> dict[str, Any]:
    """Interrupt a reply that is still being generated; when does its audio stop arriving?"""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a long story."}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        response_id = None
        while response_id is None:
            event = json.loads(await ws.recv())
            if event["type"] == "response.output_audio.delta":
                response_id = event["response_id"]
        sender = asyncio.create_task(stream(ws, packets(speech), time.perf_counter() + 0.3))
        started = last_delta = None
        status = reason = None
        async for raw in ws:
            event = json.loads(raw)
            now = time.perf_counter()
            if event["type"] == "input_audio_buffer.speech_started" and started is None:
                started = now
            elif (event["type"] == "response.output_audio.delta"
                  and event["response_id"] == response_id):
                last_delta = now
            elif event["type"] == "response.done" and event["response"]["id"] == response_id:
                status = event["response"]["status"]
                reason = (event["response"].get("status_details") or {}).get("reason")
                break
        sender.cancel()
        assert started is not None
        stop_ms = max(0.0, ((last_delta or started) - started) * 1000)
        return {"stop_ms": stop_ms, "status": status, "reason": reason}


async def idle_sessions(url: str, n: int, pid: int) -> float:
    before = rss_mb(pid)
    sockets = []
    for _ in range(n):
        ws = await websockets.connect(url, max_size=None)
        await ws.recv()
        sockets.append(ws)
    await asyncio.sleep(1.0)
    after = rss_mb(pid)
    for ws in sockets:
        await ws.close()
    return (after - before) / n


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to parley serve, e.g. asr.options={...}")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--barge-ins", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    clips = [
        np.asarray(resample(read_audio(c.path), 24000).samples)
        for c in load_clips() if c.duration_s < 8
    ]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "python": platform.python_version(),
    }

    port = free_port()
    proc = start_parley(port, {"PARLEY_LLM_BASE_URL": ""}, tmp / "bench-server.db", args.set)
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=parley"
    try:
        for n in (1, args.sessions):
            gaps = [g for gs in await asyncio.gather(*(
                caller(url, clips, args.turns, seed) for seed in range(n)
            )) for g in gs]
            missed = sum(g == float("inf") for g in gaps)
            gaps = [g for g in gaps if g != float("inf")]
            result[f"speech_stopped_to_first_audio_{n}_sessions"] = {
                **summarize(gaps).to_dict(), "missed_turns": missed}
            print(f"{n:3d} sessions: speech_stopped -> first audio delta {summarize(gaps)} ms, "
                  f"{missed} turns without a reply")
        per = await idle_sessions(url, args.idle, proc.pid)
        result["idle_session_mb"] = round(per, 3)
        print(f"memory per idle session: {per:.2f} MB ({args.idle} sessions)")
    finally:
        proc.terminate()
        proc.wait()

    llm_port = free_port()
    llm = paced_llm(llm_port, tokens_per_s=30)
    port = free_port()
    proc = start_parley(port, {"PARLEY_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1"},
                        tmp / "bench-server-llm.db", args.set)
    try:
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=parley"
        speech = clips[0]
        runs = [await barge_in(url, speech) for _ in range(args.barge_ins)]
        stops = summarize(r["stop_ms"] for r in runs)
        result["barge_in_last_delta_after_speech_started_ms"] = stops.to_dict()
        result["barge_in_statuses"] = sorted({f"{r['status']}/{r['reason']}" for r in runs})
        print(f"barge-in: last audio delta after speech_started {stops} ms; "
              f"{result['barge_in_statuses']}")
    finally:
        proc.terminate()
        proc.wait()
        llm.should_exit = True
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
