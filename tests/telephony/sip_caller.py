"""A real SIP phone for tests and benchmarks: PJSIP's pjsua2 in a subprocess of its own
(pjsua2 allows one endpoint per process, and the server under test has its own).

The phone calls over loopback with PCMU/PCMA only, speaks what it is told (recordings at
8 kHz, in real time on PJSIP's media clock, silence between), records everything it hears,
sends RFC 4733 keypad presses, holds, hangs up (BYE), and answers a REFER by calling the
target, which it can also be itself (any user at its address answers, but "busy": 486). It
is driven by JSON lines on stdin and reports JSON lines on stdout, timed with
``time.monotonic()`` (the same clock across processes):

    {"cmd": "call", "uri": "sip:+15550100@127.0.0.1:5070;transport=tcp", "headers": {...},
     "codecs": ["PCMU/8000/1"]}
    {"cmd": "say", "path": "clip.wav"}   -> {"event": "said", "at": T}  (last sample sent)
    -> {"event": "heard", "at": T} (first voiced frame after it), then "quiet" (a second without)
    {"cmd": "dtmf", "digits": "5"}  {"cmd": "hold"}  {"cmd": "unhold"}  {"cmd": "bye"}
    {"cmd": "save", "path": "heard.wav"} -> {"event": "saved"}
    events: ready, state (CALLING .. CONFIRMED, DISCONNECTED with code), media (status:
    1 active, 2 local hold), transfer_request, transfer_answered, error

:class:`SipPhone` runs it from asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FRAME = 160
RATE = 8000
VOICED_RMS = 300.0
QUIET_FRAMES = 50  # a second without voice after a reply began: "quiet"


# --- the test's side ---------------------------------------------------------------------------


class SipPhone:
    """The phone subprocess, seen from asyncio."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.telephony.sip_caller",
            str(self.port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        self._reader = asyncio.create_task(self._read())
        await self.until("ready", 30)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self._changed.set()
        self.events.append({"event": "exited"})
        self._changed.set()

    def send(self, command: str, **fields: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": command, **fields}) + "\n").encode())

    async def until(
        self, event: str, wait_s: float = 30, *, since: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first event of that kind (and fields) reported so far (from the ``since``-th
        on) or from now on."""
        async with asyncio.timeout(wait_s):
            while True:
                for e in self.events[since:]:
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                        return e
                if any(e["event"] == "exited" for e in self.events):
                    raise AssertionError(f"the phone exited before {event}: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    async def close(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                self.send("quit")
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()


# --- the phone (its own process) --------------------------------------------------------------


_printing = threading.Lock()


def _out(event: str, **fields: Any) -> None:
    with _printing:  # the media clock's thread reports too
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def main(port: int) -> None:
    import pjsua2 as pj
    import soundfile as sf

    from parley.audio.files import read_audio
    from parley.audio.resample import resample

    lock = threading.Lock()

    class Microphone(pj.AudioMediaPort):  # type: ignore[misc]
        """Speaks queued clips, then silence; hears the call; times both."""

        def __init__(self) -> None:
            super().__init__()
            self.clips: deque[np.ndarray] = deque()
            self.heard: list[bytes] = []
            self.waiting = self.sounded = False
            self.quiet_frames = -1  # counting unvoiced frames after a reply began; -1: none

        def onFrameRequested(self, frame: Any) -> None:
            out = np.zeros(FRAME, np.int16)
            with lock:
                if self.clips:
                    clip = self.clips[0]
                    n = min(FRAME, len(clip))
                    out[:n] = clip[:n]
                    self.clips[0] = clip[n:]
                    if not len(self.clips[0]):
                        self.clips.popleft()
                        self.waiting, self.sounded = True, False
                        _out("said", at=time.monotonic())
            frame.buf = pj.ByteVector(out.tobytes())
            frame.size = 2 * FRAME
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO

        def onFrameReceived(self, frame: Any) -> None:
            if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO or not frame.size:
                return
            data = bytes(frame.buf)
            self.heard.append(data)
            pcm = np.frombuffer(data, np.int16).astype(np.float64)
            voiced = np.sqrt(np.mean(pcm**2)) > VOICED_RMS
            if self.waiting and not self.sounded and np.abs(pcm).max() > 0:
                self.sounded = True
                _out("sound", at=time.monotonic())  # the first reply audio, silent or not
            if self.waiting and voiced:
                self.waiting = False
                self.quiet_frames = 0
                _out("heard", at=time.monotonic())
            elif self.quiet_frames >= 0:
                self.quiet_frames = 0 if voiced else self.quiet_frames + 1
                if self.quiet_frames == QUIET_FRAMES:  # the reply is over
                    self.quiet_frames = -1
                    _out("quiet", at=time.monotonic())

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.maxCalls = 8
    cfg.logConfig.level = cfg.logConfig.consoleLevel = 1
    cfg.medConfig.clockRate = cfg.medConfig.sndClockRate = RATE
    cfg.medConfig.channelCount = 1
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    transport = pj.TransportConfig()
    transport.port = port
    transport.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, transport)
    tls = pj.TransportConfig()  # a client: it does not check the server's certificate
    tls.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 0)
    ep.codecSetPriority("PCMU/8000/1", 255)
    ep.codecSetPriority("PCMA/8000/1", 254)
    ep.libStart()

    mic = Microphone()
    fmt = pj.MediaFormatAudio()
    fmt.init(pj.PJMEDIA_FORMAT_PCM, RATE, 1, 20000, 16)
    mic.createPort("phone", fmt)
    calls: list[Any] = []

    class Call(pj.Call):  # type: ignore[misc]
        def __init__(self, account: Any, call_id: int = -1, name: str = "") -> None:
            super().__init__(account, call_id)  # -1: PJSUA_INVALID_ID, a new outgoing call
            self.name = name

        def onCallState(self, prm: Any) -> None:
            info = self.getInfo()
            _out(
                "state",
                call=self.name,
                state=info.stateText,
                code=info.lastStatusCode,
                reason=info.lastReason,
                at=time.monotonic(),
            )

        def onCallMediaState(self, prm: Any) -> None:
            info = self.getInfo()
            for media in info.media:
                if media.type != pj.PJMEDIA_TYPE_AUDIO:
                    continue
                _out("media", call=self.name, status=int(media.status), dir=int(media.dir))
                if self.name == "main" and media.status in (
                    pj.PJSUA_CALL_MEDIA_ACTIVE,
                    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                ):
                    audio = self.getAudioMedia(media.index)
                    audio.startTransmit(mic)
                    mic.startTransmit(audio)

        def onCallTransferRequest(self, prm: Any) -> None:
            _out("transfer_request", target=prm.dstUri)
            prm.statusCode = 202  # accepted: pjsua calls the target, as this call object
            transfer = Call(account, name="transfer")
            calls.append(transfer)  # alive while pjsua2 uses it
            prm.newCall = transfer

        def onCallTransferStatus(self, prm: Any) -> None:
            _out("transfer_status", code=prm.statusCode, final=bool(prm.finalNotify))

    class Account(pj.Account):  # type: ignore[misc]
        def onIncomingCall(self, prm: Any) -> None:
            call = Call(self, prm.callId, name="target")
            calls.append(call)
            uri = call.getInfo().localUri
            busy = "sip:busy@" in uri  # a transfer target that refuses: 486
            _out("transfer_refused" if busy else "transfer_answered", uri=uri)
            answer = pj.CallOpParam()
            answer.statusCode = 486 if busy else 200
            call.answer(answer)

    account_cfg = pj.AccountConfig()
    account_cfg.idUri = f"sip:phone@127.0.0.1:{port}"
    account_cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account_cfg.mediaConfig.transportConfig.port = 20000 + port % 20000  # apart from the server's
    account = Account()
    account.create(account_cfg, True)

    commands: deque[dict[str, Any]] = deque()

    def stdin() -> None:
        for line in sys.stdin:
            with contextlib.suppress(ValueError):
                commands.append(json.loads(line))
        commands.append({"cmd": "quit"})

    threading.Thread(target=stdin, daemon=True).start()
    _out("ready", port=port)
    main_call: Any = None
    running = True
    while running:
        ep.libHandleEvents(10)
        while commands:
            cmd = commands.popleft()
            try:
                match cmd["cmd"]:
                    case "call":
                        for codec in ep.codecEnum2():  # offer these only (default: G.711)
                            wanted = cmd.get("codecs", ["PCMU/8000/1", "PCMA/8000/1"])
                            ep.codecSetPriority(
                                codec.codecId, 200 if codec.codecId in wanted else 0
                            )
                        main_call = Call(account, name="main")
                        calls.append(main_call)
                        prm = pj.CallOpParam(True)
                        for name, value in cmd.get("headers", {}).items():
                            header = pj.SipHeader()
                            header.hName, header.hValue = name, value
                            prm.txOption.headers.append(header)
                        main_call.makeCall(cmd["uri"], prm)
                    case "say":
                        clip = resample(read_audio(cmd["path"]), RATE).samples
                        with lock:
                            mic.clips.append(np.asarray(clip, np.int16))
                    case "dtmf":
                        prm = pj.CallSendDtmfParam()
                        prm.digits = cmd["digits"]
                        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
                        main_call.sendDtmf(prm)
                    case "hold":
                        main_call.setHold(pj.CallOpParam(True))
                    case "unhold":
                        prm = pj.CallOpParam(True)
                        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
                        main_call.reinvite(prm)
                    case "bye":
                        main_call.hangup(pj.CallOpParam())
                    case "save":
                        with lock:
                            pcm = np.frombuffer(b"".join(mic.heard), np.int16)
                        sf.write(cmd["path"], pcm, RATE, subtype="PCM_16")
                        _out("saved", path=cmd["path"], seconds=len(pcm) / RATE)
                    case "quit":
                        running = False
            except Exception as exc:  # report, keep the phone up
                _out("error", cmd=cmd.get("cmd"), error=repr(exc))
    ep.hangupAllCalls()
    for _ in range(20):
        ep.libHandleEvents(10)
    main_call = None
    calls.clear()
    account = mic = None
    gc.collect()  # every pjsua2 object goes before libDestroy
    ep.libDestroy()


if __name__ == "__main__":
    main(int(sys.argv[1]))
