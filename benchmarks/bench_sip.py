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
import sys
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_webrtc import CLIP, _trimmed, report, sweep, ws_gaps  # noqa: E402
from tests.fakes.llm_http import free_port  # noqa: E402
from tests.server.conftest import Server, start_server  # noqa: E402
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


_SIP_PORTS: dict[int, int] = {}  # a server's HTTP port -> its SIP port


async def _phase(
    transport: str, server: Server, calls: int, seconds: float, clip: Path | None
) -> list[float]:
    if transport != "sip":
        trimmed = _trimmed(read_audio(clip)) if clip is not None else None
        return await ws_gaps(server.port, calls, seconds, trimmed)
    sip_port = _SIP_PORTS[server.port]
    results = await asyncio.gather(*(_sip_call(sip_port, seconds, clip) for _ in range(calls)))
    return [g for gaps in results for g in gaps]


def _start(tmp: Path) -> Server:
    sip_port = free_port()
    server = start_server(
        tmp,
        *("--set", f"telephony.sip_listen=127.0.0.1:{sip_port}"),
        *("--set", "telephony.tenant=default"),
        env={"PARLEY_LLM_BASE_URL": "", "PARLEY_PROFILE": "fast"},
    )
    _SIP_PORTS[server.port] = sip_port
    return server


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
    report(await sweep(args, lambda: _start(tmp), _phase, clip))


if __name__ == "__main__":
    asyncio.run(main())
