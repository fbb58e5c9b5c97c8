"""SIP calls vs WebSocket sessions on one `parley serve`: the turn gap as the phone hears it,
and the server's CPU per call.

    python benchmarks/bench_sip.py --calls 1 4 --seconds 20

For each transport and number of concurrent calls it runs two phases against a fresh server
(fast profile: pocketsphinx, espeak, the FAQ LLM; loopback only; ``telephony.sip_listen`` on):

- *media*: every call is up for ``--seconds`` with silence both ways: what carrying a call
  costs (for SIP: PJSIP's RTP, G.711 and the 20 ms conference bridge, plus the frames crossing
  into asyncio; for the WebSocket: base64 JSON at 24 kHz);
- *talk*: every call speaks a real clip, waits for the reply to end, and again: the turn gap
  from the last speech sample sent to the first voiced reply audio received, and the CPU of
  whole conversations.

SIP calls come from real SIP phones (pjsua2, one subprocess each:
tests/telephony/sip_caller.py): the gap covers G.711 both ways, RTP over loopback, both jitter
buffers and both conference bridges' 20 ms ticks. CPU is the server's process tree (utime +
stime from /proc) over the phase, divided by its wall time: cores busy. Callers are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_webrtc import CLIP, WsCaller, _pct, _tree_cpu_s, _trimmed  # noqa: E402
from tests.fakes.llm_http import free_port  # noqa: E402
from tests.server.conftest import start_server, stop_server  # noqa: E402
from tests.telephony.sip_caller import SipPhone  # noqa: E402

from parley.audio.files import read_audio  # noqa: E402
from parley.audio.resample import resample  # noqa: E402


async def _sip_call(sip_port: int, seconds: float, clip: Path | None) -> list[float]:
    phone = SipPhone(free_port())
    gaps: list[float] = []
    try:
        await phone.start()
        phone.send("call", uri=f"sip:+15550100@127.0.0.1:{sip_port};transport=udp")
        await phone.until("state", 30, state="CONFIRMED")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if clip is None:
                await asyncio.sleep(min(left, 0.5))
                continue
            mark = len(phone.events)
            phone.send("say", path=str(clip))
            said = await phone.until("said", left + 10, since=mark)
            heard = await phone.until("heard", max(left, 1) + 20, since=mark)
            gaps.append(heard["at"] - said["at"])
            await phone.until("quiet", max(left, 1) + 30, since=mark)
    except TimeoutError:
        pass
    finally:
        phone.send("bye")
        await phone.close()
    return gaps


async def _phase(
    transport: str, port: int, sip_port: int, calls: int, seconds: float, clip: Path | None
) -> list[float]:
    if transport == "sip":
        results = await asyncio.gather(*(_sip_call(sip_port, seconds, clip) for _ in range(calls)))
        return [g for gaps in results for g in gaps]
    callers = [
        WsCaller(f"ws://127.0.0.1:{port}/v1/realtime?parley_timeline=1") for _ in range(calls)
    ]
    trimmed = _trimmed(read_audio(clip)) if clip is not None else None
    await asyncio.gather(*(c.run(seconds, trimmed) for c in callers))
    return [g for c in callers for g in c.gaps]


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", nargs="+", default=["websocket", "sip"])
    parser.add_argument("--phases", nargs="+", default=["media", "talk"])
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-sip-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    # The clip ends on speech: its last sample is the end of the turn. The phone speaks 8 kHz.
    clip = tmp / "clip-8k.wav"
    sf.write(clip, resample(_trimmed(read_audio(CLIP)), 8000).samples, 8000, subtype="PCM_16")
    rows = []
    for calls in args.calls:
        for transport in args.transports:
            for phase in args.phases:
                sip_port = free_port()
                server = start_server(
                    tmp,
                    *("--set", f"telephony.sip_listen=127.0.0.1:{sip_port}"),
                    *("--set", "telephony.tenant=default"),
                    env={"PARLEY_LLM_BASE_URL": "", "PARLEY_PROFILE": "fast"},
                )
                try:
                    cpu0, t0 = _tree_cpu_s(server.process.pid), time.monotonic()
                    gaps = await _phase(
                        transport,
                        server.port,
                        sip_port,
                        calls,
                        args.seconds,
                        clip if phase == "talk" else None,
                    )
                    cores = (_tree_cpu_s(server.process.pid) - cpu0) / (time.monotonic() - t0)
                finally:
                    stop_server(server)
                rows.append((calls, transport, phase, cores, gaps))
                print(
                    f"{calls} x {transport} {phase}: {cores:.3f} cores "
                    f"({cores / calls:.3f} per call); gaps {len(gaps)}",
                    flush=True,
                )
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
        t: statistics.median(g for r in rows if r[1] == t for g in r[4])
        for t in ("websocket", "sip")
        if any(r[4] for r in rows if r[1] == t)
    }
    print("\nmedian turn gap by transport:", {k: f"{v * 1000:.0f} ms" for k, v in medians.items()})


if __name__ == "__main__":
    asyncio.run(main())
