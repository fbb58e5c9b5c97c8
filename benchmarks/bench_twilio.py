"""Twilio Media Streams vs WebSocket sessions on one `parley serve`: the turn gap as the phone
side hears it, and the server's CPU per call (calls per core) at 8 kHz.

    python benchmarks/bench_twilio.py --calls 1 4 --seconds 20

For each transport and number of concurrent calls it runs two phases against a fresh server
(fast profile: pocketsphinx, espeak, the FAQ LLM; loopback only):

- *media*: every call streams silence for ``--seconds`` (Twilio: 20 ms mu-law ``media``
  messages in base64 JSON, as Twilio sends them; WebSocket: 20 ms 24 kHz pcm16
  ``input_audio_buffer.append``): what carrying an idle call costs;
- *talk*: every call speaks a real clip, waits for the reply to play out, and again, for
  ``--seconds``: the turn gap from the last speech sample sent to the first voiced reply audio
  received (Twilio: a ``media`` message; WebSocket: a ``response.output_audio.delta``), and
  the CPU of whole conversations.

The Twilio side is ``tests/telephony/twilio_caller.py``: the signed webhook, then the stream,
playing the reply in real time and echoing its marks. CPU is the server's process tree over the
phase, divided by its wall time: cores busy. Clients run in this process and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_webrtc import CLIP, _trimmed, report, sweep, ws_gaps  # noqa: E402
from tests.server.conftest import Server, start_server  # noqa: E402
from tests.telephony.twilio_caller import TwilioCaller  # noqa: E402

from parley.audio.files import read_audio  # noqa: E402
from parley.audio.frames import Frame  # noqa: E402
from parley.audio.g711 import ulaw_decode  # noqa: E402

TOKEN = "bench-twilio-token"


def _voiced(codes: bytes, threshold: float = 300.0) -> bool:
    pcm = ulaw_decode(codes).astype(np.float64)
    return bool(len(pcm)) and float(np.sqrt(np.mean(pcm**2))) > threshold


async def _twilio_call(base: str, seconds: float, clip: Frame | None) -> list[float]:
    caller = TwilioCaller(base, TOKEN)
    gaps: list[float] = []
    try:
        await caller.dial()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if clip is None:
                await asyncio.sleep(min(left, 0.5))
                continue
            heard = len(caller.media_arrivals)
            scanned = [heard]
            first: list[float] = []

            def replied(scanned: list[int] = scanned, first: list[float] = first) -> bool:
                for at, _, codes in caller.media_arrivals[scanned[0] :]:
                    scanned[0] += 1
                    if _voiced(codes):
                        first.append(at)
                        return True
                return bool(first)

            caller.say(clip)
            await caller.wait(replied, left)
            sent = caller.last_speech_sent
            if sent is not None:
                gaps.append(first[0] - sent)
            # The reply plays out: Twilio's buffer empties and no more audio comes.
            await caller.wait(
                lambda: (
                    not caller._buffer.items
                    and time.monotonic() - caller.media_arrivals[-1][0] > 0.5
                ),
                max(deadline - time.monotonic(), 0.1),
            )
            await asyncio.sleep(0.5)
    except TimeoutError:
        pass
    finally:
        await caller.close()
    return gaps


async def _phase(
    transport: str, server: Server, calls: int, seconds: float, clip: Frame | None
) -> list[float]:
    if transport != "twilio":
        return await ws_gaps(server.port, calls, seconds, clip)
    base = f"http://127.0.0.1:{server.port}"
    results = await asyncio.gather(*(_twilio_call(base, seconds, clip) for _ in range(calls)))
    return [g for gaps in results for g in gaps]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", nargs="+", default=["websocket", "twilio"])
    parser.add_argument("--phases", nargs="+", default=["media", "talk"])
    args = parser.parse_args()
    clip = _trimmed(read_audio(CLIP))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-twilio-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    flags = ("--set", f"telephony.twilio_auth_token={TOKEN}")
    env = {"PARLEY_LLM_BASE_URL": "", "PARLEY_PROFILE": "fast"}
    report(await sweep(args, lambda: start_server(tmp, *flags, env=env), _phase, clip))


if __name__ == "__main__":
    asyncio.run(main())
