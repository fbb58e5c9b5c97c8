"""Voice-to-voice latency as heard in a browser (WebRTC), beside the WebSocket path (issue 15).

Starts ``parley serve`` (WebRTC on loopback only, the embedded FAQ LLM), then:

1. Browser: Debian's chromium, headless, opens the page and makes one call; its fake microphone
   plays the shared clips one after another, each followed by ``--gap-s`` of silence (long enough
   for the reply to finish playing, so no turn interrupts the last). Per turn, the page measures
   voice to voice with its own clock: the last loud 10 ms of the microphone -> the first loud
   10 ms of the reply as it plays (``window.parleyTurns[].v2v_ms``); the server's
   ``parley.turn.timeline`` gives its own ``turn_gap_ms`` (last voiced sample -> first reply
   audio sent as RTP).
2. WebSocket: the same clips in the same order through ``parley bench realtime``'s caller
   (:mod:`parley.bench.caller`): last speech sample sent -> first reply audio received.

Both sessions are configured alike (server VAD, 500 ms, the server's voice; no input
transcription, as the WebSocket caller asks for none, unless ``--transcription``). The two
clocks differ in what they hold: the browser's includes the way there (microphone processing,
Opus, the server's jitter buffer) and back (Opus, the browser's jitter buffer, playout); the
WebSocket caller's stops at the socket. Also printed: the server process's CPU time (user +
system) over each path's run, as a share of one core (the browser's run includes starting the
page and the call, and the pauses). chromium runs on the same machine and takes CPU of its own.

    python benchmarks/bench_browser.py [--turns 10] [--profile fast|neural] [--gap-s 11]
        [--transcription] [--json OUT]
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

import httpx
import numpy as np
import soundfile as sf

from parley.audio.files import read_audio
from parley.bench.clips import load_clips
from parley.bench.realtime import BenchConfig, load_utterances, run_level

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
RATE = 48000
LEAD_S = 2.0  # silence before the first clip: the call connects meanwhile
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_parley(tmp: Path, profile: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PARLEY_LLM_BASE_URL": "", "PARLEY_PROFILE": profile}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "parley.cli", "serve", "--no-auth",
            "--port", str(port),
            "--log-level", "warning",
            "--set", f"server.database={tmp / 'parley.db'}",
            "--set", f"trust.watermark_key_file={tmp / 'watermark.key'}",
            "--set", f"trust.audit_key_file={tmp / 'audit.key'}",
            "--set", 'webrtc.host_addresses=["127.0.0.1"]',
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "serve.log").open("wb"),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"parley serve did not start: see {tmp / 'serve.log'}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def capture(path: Path, clip_paths: list[Path], gap_s: float) -> float:
    """The fake microphone's file: a lead-in, then each clip followed by ``gap_s`` of silence.
    Returns its length in seconds."""
    parts = [np.zeros(round(LEAD_S * RATE), np.int16)]
    for clip in clip_paths:
        parts.append(read_audio(clip, sample_rate=RATE).samples)
        parts.append(np.zeros(round(gap_s * RATE), np.int16))
    audio = np.concatenate(parts)
    sf.write(path, audio, RATE, subtype="PCM_16")
    return len(audio) / RATE


def browser_turns(
    port: int, clip_paths: list[Path], gap_s: float, tmp: Path, transcription: bool
) -> dict[str, Any]:
    """One call from the page; each turn as the page recorded it."""
    from playwright.sync_api import sync_playwright

    wav = tmp / "mic.wav"
    length_s = capture(wav, clip_paths, gap_s)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*BROWSER_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#voice option", state="attached", timeout=30_000)
            page.set_checked("#transcription", transcription)
            page.click("#talk")
            page.wait_for_selector("body[data-state=live]", timeout=30_000)
            n = len(clip_paths)
            try:
                page.wait_for_function(
                    "window.parleyTurns.filter("
                    f"t => t.v2v_ms !== null && t.server_turn_gap_ms !== null).length >= {n}",
                    timeout=(length_s + 30) * 1000,
                )
            except Exception:  # report the turns that did come
                print(f"warning: fewer than {n} replies measured", file=sys.stderr)
            turns: list[dict[str, Any]] = page.evaluate("window.parleyTurns")
            page.screenshot(path=str(tmp / "bench-browser.png"), full_page=True)
            page.click("#talk")
            page.wait_for_selector("body[data-state=ended]", timeout=10_000)
        finally:
            browser.close()
    return {"turns": turns}


def websocket_turns(port: int, turns: int) -> list[dict[str, Any]]:
    """The same clips, in the same order, through ``parley bench realtime``'s caller."""

    async def run() -> list[dict[str, Any]]:
        utterances, _ = await load_utterances(None, MAX_CLIP_S)
        config = BenchConfig(url=f"ws://127.0.0.1:{port}/v1/realtime", levels=(1,), turns=turns)
        level = await run_level(config, utterances, sessions=1)
        records: list[dict[str, Any]] = level["turns"]
        return records

    return asyncio.run(run())


MAX_CLIP_S = 6.0


def pcts(values: list[float]) -> tuple[float, float, int]:
    if not values:
        return float("nan"), float("nan"), 0
    p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return float(p50), float(p90), len(values)


def row(name: str, heard: list[float], server: list[float], cpu_share: float) -> str:
    h50, h90, n = pcts(heard)
    s50, s90, _ = pcts(server)
    rest = [h - s for h, s in zip(heard, server, strict=False)]
    r50, _, _ = pcts(rest)
    return (
        f"| {name} | {n} | {h50:.0f} | {h90:.0f} | {s50:.0f} | {s90:.0f} | {r50:.0f} |"
        f" {cpu_share:.0f} % |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--profile", choices=("fast", "neural"), default="fast")
    parser.add_argument(
        "--gap-s", type=float, default=11.0, help="silence after each clip (the reply plays)"
    )
    parser.add_argument(
        "--transcription",
        action="store_true",
        help="let the page ask for input transcription (the WebSocket caller does not: off "
        "by default, so both sessions are configured alike)",
    )
    parser.add_argument("--json", type=Path, help="write every turn here")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    utterances, _ = asyncio.run(load_utterances(None, MAX_CLIP_S))
    files = {c.id: c.path for c in load_clips(language="en")}
    order = [utterances[i % len(utterances)].id for i in range(args.turns)]
    clip_paths = [files[cid] for cid in order]

    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp_name:
        tmp = Path(tmp_name)
        proc, port = start_parley(tmp, args.profile)
        try:
            cpu, wall = cpu_s(proc.pid), time.monotonic()
            web = browser_turns(port, clip_paths, args.gap_s, tmp, args.transcription)["turns"]
            web_cpu = (cpu_s(proc.pid) - cpu) / (time.monotonic() - wall) * 100
            time.sleep(1.0)
            cpu, wall = cpu_s(proc.pid), time.monotonic()
            ws = websocket_turns(port, args.turns)
            ws_cpu = (cpu_s(proc.pid) - cpu) / (time.monotonic() - wall) * 100
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    web_ok = [t for t in web if t["v2v_ms"] is not None and t["server_turn_gap_ms"] is not None]
    interrupted = sum(1 for t in web if t["interrupted"])
    ws_ok = [t for t in ws if t.get("error") is None and t.get("turn_gap_ms") is not None]
    print(
        f"parley bench browser: {args.turns} turns, profile {args.profile}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"transcription {'on' if args.transcription else 'off'} in the page, "
        f"clips {', '.join(dict.fromkeys(order))}"
    )
    print()
    print(
        "| path | turns | voice-to-voice p50 ms | p90 ms | server turn_gap p50 ms | p90 ms |"
        " client side p50 ms | server CPU (one core) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        row(
            "browser, WebRTC (page: last speech at the mic -> first reply sound played)",
            [float(t["v2v_ms"]) for t in web_ok],
            [float(t["server_turn_gap_ms"]) for t in web_ok],
            web_cpu,
        )
    )
    print(
        row(
            "WebSocket (bench caller: last speech sample sent -> first reply audio received)",
            [float(t["turn_gap_ms"]) for t in ws_ok],
            [float(t["server_turn_gap_ms"]) for t in ws_ok],
            ws_cpu,
        )
    )
    print()
    print(
        "client side = voice-to-voice minus the server's turn_gap (browser: the way there and "
        "back, Opus, jitter buffers and playout; WebSocket: the socket and JSON)."
    )
    if interrupted:
        print(f"note: {interrupted} browser turn(s) were interrupted: raise --gap-s")
    if len(web_ok) < args.turns or len(ws_ok) < args.turns:
        print(f"note: measured {len(web_ok)} browser and {len(ws_ok)} WebSocket turns")
    if args.json is not None:
        args.json.write_text(json.dumps({"browser": web, "websocket": ws}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
