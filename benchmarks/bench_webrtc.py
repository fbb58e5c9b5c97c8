"""WebRTC calls vs WebSocket sessions on one `parley serve`: the server's CPU per call, and the
turn gap as the caller hears it.

    python benchmarks/bench_webrtc.py --calls 1 4 --seconds 20

For each transport and number of concurrent calls it runs two phases against a fresh server
(fast profile: pocketsphinx, espeak, the FAQ LLM; loopback only):

- *media*: every call streams silence both ways for ``--seconds``: what carrying a call costs
  (for WebRTC: Opus decode and encode, SRTP, the 20 ms pacing; for the WebSocket: base64 JSON);
- *talk*: every call speaks a real clip, waits for the reply to play out, and again, for
  ``--seconds``: the turn gap from the last speech sample sent to the first voiced reply audio
  received, and the CPU of whole conversations.

CPU is the server's process tree (utime + stime from /proc) over the phase, divided by the
phase's wall time: cores busy. Clients run in this process and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.conftest import Server, start_server, stop_server  # noqa: E402
from tests.transports.rtc_client import RtcCaller  # noqa: E402

from parley.audio.files import read_audio  # noqa: E402
from parley.audio.frames import Frame  # noqa: E402
from parley.audio.resample import resample  # noqa: E402

CLIP = ROOT.parent / "shared" / "speech" / "en_new_home_stars.wav"
TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == p)
    return total


def _voiced(pcm: np.ndarray, threshold: float = 300.0) -> bool:
    return bool(len(pcm)) and float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) > threshold


def _trimmed(clip: Frame) -> Frame:
    """The clip without its trailing silence, so that its last sample is speech."""
    window = clip.sample_rate // 100
    levels = [_voiced(clip.samples[i : i + window], 500.0) for i in range(0, len(clip), window)]
    last = max(i for i, voiced in enumerate(levels) if voiced)
    return Frame(clip.samples[: (last + 1) * window], clip.sample_rate)


class WsCaller:
    """A raw GA WebSocket caller: 20 ms packets at real time, reply audio timed on arrival."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: list[np.ndarray] = []
        self.last_speech: float | None = None
        self.gaps: list[float] = []
        self.playing_until = 0.0
        self._waiting = False

    async def run(self, seconds: float, clip: Frame | None) -> None:
        async with connect(self.url, max_size=None) as ws:
            deadline = time.monotonic() + seconds
            reader = asyncio.ensure_future(self._read(ws))
            start, sent = time.monotonic(), 0
            pcm24 = resample(clip, 24000).samples if clip is not None else None
            while time.monotonic() < deadline:
                if (
                    pcm24 is not None
                    and not self.queue
                    and not self._waiting
                    and time.monotonic() >= self.playing_until + 0.5
                ):
                    self.queue.append(pcm24)
                chunk = np.zeros(480, np.int16)
                if self.queue:
                    piece = self.queue[0]
                    chunk[: min(480, len(piece))] = piece[:480]
                    self.queue[0] = piece[480:]
                    if not len(self.queue[0]):
                        self.queue.pop(0)
                        self.last_speech, self._waiting = time.monotonic(), True
                audio = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                sent += 1
                await asyncio.sleep(max(0.0, start + sent * 0.02 - time.monotonic()))
            reader.cancel()

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "response.output_audio.delta":
                pcm = np.frombuffer(base64.b64decode(event["delta"]), "<i2")
                now = time.monotonic()
                self.playing_until = max(self.playing_until, now) + len(pcm) / 24000
                if self._waiting and self.last_speech is not None and _voiced(pcm):
                    self.gaps.append(now - self.last_speech)
                    self._waiting = False
            elif event["type"] == "response.done":
                self._waiting = False  # a reply with no voiced audio: speak again


async def _rtc_call(base_url: str, seconds: float, clip: Frame | None) -> list[float]:
    caller = RtcCaller(base_url)
    gaps: list[float] = []
    try:
        answer = await caller.connect()
        assert answer.status_code == 201, answer.text
        await caller.until("session.created", 30)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if clip is None:
                await asyncio.sleep(min(left, 0.5))
                continue
            caller.mic.say(clip)
            timeline = await caller.until("parley.turn.timeline", left)
            rid = timeline["response_id"]
            await caller.until("output_audio_buffer.stopped", left, response_id=rid)
            sent = caller.mic.last_speech_sent
            first = caller.heard.first_voiced_after(sent) if sent is not None else None
            if first is not None:
                gaps.append(first - sent)
            caller.events.clear()
            await asyncio.sleep(0.5)
    except TimeoutError:
        pass
    finally:
        await caller.close()
    return gaps


async def ws_gaps(port: int, calls: int, seconds: float, clip: Frame | None) -> list[float]:
    """``calls`` WebSocket callers on the server at ``port`` for ``seconds``: their turn gaps."""
    callers = [
        WsCaller(f"ws://127.0.0.1:{port}/v1/realtime?parley_timeline=1") for _ in range(calls)
    ]
    await asyncio.gather(*(c.run(seconds, clip) for c in callers))
    return [g for c in callers for g in c.gaps]


async def _phase(
    transport: str, server: Server, calls: int, seconds: float, clip: Frame | None
) -> list[float]:
    if transport != "webrtc":
        return await ws_gaps(server.port, calls, seconds, clip)
    results = await asyncio.gather(
        *(_rtc_call(server.base_url, seconds, clip) for _ in range(calls))
    )
    return [g for gaps in results for g in gaps]


Row = tuple[int, str, str, float, list[float]]  # calls, transport, phase, cores, gaps
# (transport, server, calls, seconds, what the callers say or None) -> turn gaps
Phase = Callable[[str, Server, int, float, Any], Awaitable[list[float]]]


async def sweep(
    args: argparse.Namespace, start: Callable[[], Server], phase: Phase, clip: Any
) -> list[Row]:
    """Each number of calls x transport x phase against a fresh server from ``start``: the
    server's cores over the phase and the callers' turn gaps."""
    rows: list[Row] = []
    for calls in args.calls:
        for transport in args.transports:
            for name in args.phases:
                server = start()
                try:
                    cpu0, t0 = _tree_cpu_s(server.process.pid), time.monotonic()
                    said = clip if name == "talk" else None
                    gaps = await phase(transport, server, calls, args.seconds, said)
                    cores = (_tree_cpu_s(server.process.pid) - cpu0) / (time.monotonic() - t0)
                finally:
                    stop_server(server)
                rows.append((calls, transport, name, cores, gaps))
                print(
                    f"{calls} x {transport} {name}: {cores:.3f} cores "
                    f"({cores / calls:.3f} per call); gaps {len(gaps)}",
                    flush=True,
                )
    return rows


def report(rows: list[Row]) -> None:
    """The markdown table of :func:`sweep`'s rows, and the median gap by transport."""
    print()
    print("| calls | transport | phase | cores | per call | calls/core | turns | gap p50 | p90 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for calls, transport, phase, cores, gaps in rows:
        p50, p90 = _pct(gaps, 50), _pct(gaps, 90)
        per = cores / calls
        print(
            f"| {calls} | {transport} | {phase} | {cores:.3f} | {per:.3f} | "
            f"{1 / per if per else float('inf'):.0f} | {len(gaps)} | "
            + (
                f"{p50 * 1000:.0f} ms | {p90 * 1000:.0f} ms |"
                if p50 is not None and p90 is not None
                else "- | - |"
            )
        )
    medians = {
        transport: statistics.median(g for r in rows if r[1] == transport for g in r[4])
        for transport in dict.fromkeys(r[1] for r in rows)
        if any(r[4] for r in rows if r[1] == transport)
    }
    if medians:
        print(
            "\nmedian turn gap by transport:", {k: f"{v * 1000:.0f} ms" for k, v in medians.items()}
        )


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", nargs="+", default=["websocket", "webrtc"])
    parser.add_argument("--phases", nargs="+", default=["media", "talk"])
    parser.add_argument(
        "--jitter", type=int, default=2, help="webrtc.jitter_buffer_packets of the server"
    )
    args = parser.parse_args()
    clip = _trimmed(read_audio(CLIP))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-webrtc-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    flags = [
        *("--set", 'webrtc.host_addresses=["127.0.0.1"]'),
        *("--set", f"webrtc.jitter_buffer_packets={args.jitter}"),
    ]
    env = {"PARLEY_LLM_BASE_URL": "", "PARLEY_PROFILE": "fast"}
    report(await sweep(args, lambda: start_server(tmp, *flags, env=env), _phase, clip))


if __name__ == "__main__":
    asyncio.run(main())
