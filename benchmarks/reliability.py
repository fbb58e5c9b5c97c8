"""Reliability of ``parley serve`` under hostile and heavy use (issue 11, "Measure").

Each subcommand starts its own ``parley serve`` (embedded engines, the offline faq LLM) on a free
loopback port with a fresh database in a temporary folder, prints a table and, with ``--out``,
writes every figure as JSON, with the machine and the commit it ran on:

fuzz     mutated Realtime client events over several connections. Counts crashes (the process
         died, or its log holds a traceback), ERROR lines, hangs (a probe unanswered after a
         batch), closes without a close frame and closes by the server; then every connection
         still open must complete a text turn, and so must a fresh one.
storm    many simultaneous WebSocket connects (each sends ``session.update``, idles, closes;
         from a separate process) while one open session keeps taking turns and another pings
         the server every 100 ms: latency and round trip before, during and after the storm;
         handshake times; server RSS before, at peak and after the storm's sessions closed.
soak     N sessions taking turns for D minutes, reconnecting every few turns: RSS every 10 s,
         growth from the end of the first minute, stalls (a turn over 10 s or unanswered),
         errors.
signals  SIGTERM with open sessions (close frames, exit status 0, how long it takes) and kill -9
         (port free, a fresh server on the same SQLite database serves, every acknowledged write
         kept, integrity check).

    python benchmarks/reliability.py fuzz --events 5000 --connections 8 --out fuzz.json
    python benchmarks/reliability.py storm --connects 300 --out storm.json
    python benchmarks/reliability.py soak --sessions 8 --minutes 15 --out soak.json
    python benchmarks/reliability.py signals --out signals.json

It only ever connects to 127.0.0.1, to the server it started. Speech comes from the shared clips
(``$PARLEY_CLIPS`` or ``../shared/speech``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import socket
import sqlite3
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
RATE = 24000
PACKET = 480  # 20 ms of pcm16 at 24 kHz
Event = dict[str, Any]
Message = str | bytes | tuple[str, ...]  # a tuple goes out as one fragmented message
CONNECT_ERRORS = (OSError, TimeoutError, InvalidStatus, ConnectionError, ConnectionClosed)


# --- the machine and the server ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    git = ["git", "-C", str(ROOT), "describe", "--always", "--dirty"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "commit": commit,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_request(
    port: int, method: str, path: str, body: Event | None = None, token: str | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    database: Path

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/realtime"

    def rss_mib(self) -> float | None:
        """The server process's resident memory."""
        return _rss_mib(self.process.pid)

    def workers_rss_mib(self) -> float:
        """The resident memory of the processes the server started (pocketsphinx's decoders
        live there), summed; shared pages count once per process."""
        pending, total = _children(self.process.pid), 0.0
        while pending:
            pid = pending.pop()
            total += _rss_mib(pid) or 0.0
            pending.extend(_children(pid))
        return round(total, 1)

    def problems(self) -> dict[str, Any]:
        """Tracebacks and ERROR lines the server logged (stdout and stderr together)."""
        lines = self.log.read_text(errors="replace").splitlines()
        bad = [line[:300] for line in lines if "Traceback" in line or "ERROR" in line]
        return {
            "tracebacks": sum("Traceback" in line for line in lines),
            "error_lines": sum("ERROR" in line for line in lines),
            "first": bad[:5],
        }

    def stop(self, wait_s: float = 20) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def start_server(
    workdir: Path, *, auth: bool = False, port: int | None = None, sets: Sequence[str] = ()
) -> Server:
    """``parley serve`` on ``port`` (a free one by default), database ``workdir/parley.db``,
    with ``--set`` for each of ``sets``."""
    port = port or free_port()
    log = workdir / f"serve-{port}-{time.monotonic_ns()}.log"
    database = workdir / "parley.db"
    command = [sys.executable, "-m", "parley.cli", "serve", "--host", HOST, "--port", str(port)]
    command += ["--set", f"server.database={database}", "--log-level", "warning"]
    command += [] if auth else ["--no-auth"]
    command += [arg for item in sets for arg in ("--set", item)]
    env = {**os.environ, "PARLEY_LLM_BASE_URL": ""}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    server = Server(port, process, log, database)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if http_request(port, "GET", "/healthz")[0] == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"parley serve did not start:\n{log.read_text(errors='replace')[-2000:]}")


def create_key(workdir: Path) -> str:
    command = [sys.executable, "-m", "parley.cli", "keys", "create", "--tenant", "reliability"]
    command += ["--set", f"server.database={workdir / 'parley.db'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


# --- a Realtime client connection ----------------------------------------------------------------


@dataclass
class Closed:
    code: int  # 1006 when no close frame came
    clean: bool  # a close frame was received
    by_server: bool  # the client had not asked to close


class TurnFailed(Exception):
    pass


class Conn:
    """One WebSocket with a reader task that records every server event and wakes waiters."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.error_codes: Counter[str] = Counter()
        self.item_ids: list[str] = []
        self.closed: Closed | None = None
        self._closing = False
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None = None, wait_s: float = 30) -> Conn:
        ws = await websockets.connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"} if token else None,
            max_size=None,
            compression=None,
            proxy=None,
            open_timeout=wait_s,
            ping_interval=None,
        )
        conn = cls(ws)
        await asyncio.wait_for(conn.expect(lambda e: e["type"] == "session.created"), wait_s)
        return conn

    def expect(self, predicate: Callable[[Event], bool]) -> asyncio.Future[Event]:
        """The next event ``predicate`` accepts; register before sending what causes it. The
        predicate sees every event in order, so it may keep state."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        if self.closed is not None:
            future.set_exception(ConnectionError(f"connection closed ({self.closed.code})"))
        else:
            self._waiters.append((predicate, future))
        return future

    async def send(self, message: Message | Event) -> None:
        if isinstance(message, tuple):
            await self.ws.send(iter(message))
        else:
            await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def closed_by_peer(self, wait_s: float) -> Closed | None:
        """Wait for the server to end the connection; None if it is still open."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), wait_s)
        return self.closed

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 10)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        rcvd = None
        try:
            async for raw in self.ws:
                event = json.loads(raw)
                if event["type"] == "error":
                    self.error_codes[str(event["error"].get("code"))] += 1
                elif event["type"] in ("conversation.item.added", "conversation.item.created"):
                    self.item_ids = [*self.item_ids[-20:], event["item"]["id"]]
                for waiter in list(self._waiters):
                    predicate, future = waiter
                    if future.done() or predicate(event):
                        if not future.done():
                            future.set_result(event)
                        self._waiters.remove(waiter)
            rcvd = self.ws.protocol.close_rcvd
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
        self.closed = Closed(rcvd.code if rcvd else 1006, rcvd is not None, not self._closing)
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(ConnectionError(f"connection closed ({self.closed.code})"))
        self._waiters.clear()


def _reply_marks(
    marks: dict[str, Any], audio_only: bool = False, not_before: float = 0.0
) -> Callable[[Event], bool]:
    """A predicate for the first response created from now on (and not before ``not_before``,
    a ``perf_counter`` time; earlier ones are counted in ``marks["early"]``): notes its id and
    first delta, accepts its ``response.done`` (or an error about the event ``marks["eid"]``)."""

    def accept(event: Event) -> bool:
        kind = event["type"]
        if kind == "error":
            return "eid" in marks and event["error"].get("event_id") == marks["eid"]
        if kind == "response.created" and "rid" not in marks:
            if time.perf_counter() < not_before:
                marks["early"] = marks.get("early", 0) + 1
                return False
            marks["rid"] = event["response"]["id"]
        delta = kind == "response.output_audio.delta" or (
            not audio_only and kind.endswith(".delta")
        )
        if delta and event.get("response_id") == marks.get("rid"):
            marks.setdefault("first", time.perf_counter())
        return kind == "response.done" and event["response"]["id"] == marks.get("rid")

    return accept


async def text_turn(
    conn: Conn, text: str, *, modalities: Sequence[str] = ("text",), wait_s: float = 30
) -> dict[str, Any]:
    """A user message and ``response.create``: seconds to the first delta and to
    ``response.done``, and the response's status."""
    marks: dict[str, Any] = {"eid": f"turn_{random.getrandbits(40):x}"}
    future = conn.expect(_reply_marks(marks))
    started = time.perf_counter()
    content = [{"type": "input_text", "text": text}]
    item = {"type": "message", "role": "user", "content": content}
    try:
        await conn.send({"type": "conversation.item.create", "item": item})
        response = {"output_modalities": list(modalities)}
        await conn.send({"type": "response.create", "event_id": marks["eid"], "response": response})
        event = await asyncio.wait_for(future, wait_s)
    except TimeoutError:
        raise TurnFailed(f"no response.done within {wait_s:g} s") from None
    except (ConnectionError, ConnectionClosed) as exc:
        raise TurnFailed(f"connection closed: {exc}") from None
    if event["type"] == "error":
        raise TurnFailed(f"error {event['error'].get('code')}: {event['error'].get('message')}")
    first = marks.get("first")
    return {
        "first_s": None if first is None else first - started,
        "done_s": time.perf_counter() - started,
        "status": event["response"]["status"],
    }


@dataclass(frozen=True)
class Utterance:
    id: str
    packets: tuple[str, ...]
    speech_end_s: float  # from the start of the first packet


class Speech:
    """Short English clips, cut to their loud part, as 20 ms append events at 24 kHz."""

    def __init__(self, max_clip_s: float = 4.0) -> None:
        from parley.audio.files import read_audio
        from parley.bench.clips import load_clips

        self.utterances: list[Utterance] = []
        for clip in load_clips(language="en"):
            if clip.duration_s <= max_clip_s and not clip.id.endswith("_8k"):
                samples = read_audio(clip.path, sample_rate=RATE).samples.astype(np.int16)
                self.utterances.append(self._cut(clip.id, samples))
        if not self.utterances:
            raise RuntimeError("no English clip of at most {max_clip_s:g} s in the shared clips")
        self.silence = _append(np.zeros(PACKET, np.int16))

    @staticmethod
    def _cut(clip_id: str, samples: np.ndarray) -> Utterance:
        frames = len(samples) // PACKET
        power = (samples[: frames * PACKET].astype(np.float64).reshape(frames, PACKET) ** 2).mean(1)
        db = 10 * np.log10(power + 1e-9)
        loud = np.flatnonzero(db > db.max() - 35)
        first, last = int(loud[0]), int(loud[-1]) + 1
        audio = samples[first * PACKET : last * PACKET]
        packets = tuple(_append(audio[i : i + PACKET]) for i in range(0, len(audio), PACKET))
        return Utterance(clip_id, packets, len(packets) * 0.02)

    async def turn(self, conn: Conn, index: int, wait_s: float = 30) -> dict[str, Any]:
        """One clip at real-time pace, then silence until its reply is done: seconds from the end
        of the speech to the first reply audio and to ``response.done``."""
        utterance = self.utterances[index % len(self.utterances)]
        marks: dict[str, Any] = {}
        start = time.perf_counter()
        speech_end = start + utterance.speech_end_s
        # A reply begun before the speech ended answered part of it (the server heard a pause
        # as the end of the turn); the user went on speaking over it. The turn is the next one.
        future = conn.expect(_reply_marks(marks, audio_only=True, not_before=speech_end))
        i = 0
        while not future.done() and time.perf_counter() < speech_end + wait_s:
            delay = start + i * 0.02 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = utterance.packets[i] if i < len(utterance.packets) else self.silence
            try:
                await conn.send(packet)
            except ConnectionClosed as exc:
                raise TurnFailed(f"connection closed: {exc}") from None
            i += 1
        if not future.done():
            future.cancel()
            raise TurnFailed(f"no response.done within {wait_s:g} s of the end of speech")
        try:
            event = future.result()
        except ConnectionError as exc:
            raise TurnFailed(str(exc)) from None
        first = marks.get("first")
        return {
            "first_s": None if first is None else first - speech_end,
            "done_s": time.perf_counter() - speech_end,
            "status": event["response"]["status"],
            "early_replies": marks.get("early", 0),
        }


def _append(pcm: np.ndarray) -> str:
    audio = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


async def ping(conn: Conn, n: int, wait_s: float) -> float:
    """Round trip of the cheapest request that gets an answer: retrieving a missing item."""
    eid = f"probe_{n}"
    future = conn.expect(lambda e: e["type"] == "error" and e["error"].get("event_id") == eid)
    start = time.perf_counter()
    await conn.send({"type": "conversation.item.retrieve", "event_id": eid, "item_id": "missing"})
    await asyncio.wait_for(future, wait_s)
    return time.perf_counter() - start


def ms_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    data = np.asarray(seconds, np.float64) * 1000
    p50, p95 = np.percentile(data, [50, 95])
    return {"n": len(data), "p50": round(p50, 1), "p95": round(p95, 1), "max": round(data.max(), 1)}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def pair(summary: dict[str, Any]) -> str:
    return f"{fmt(summary['p50'])} / {fmt(summary['max'])}"


def show(console: Console, title: str, headers: Sequence[str], rows: list[list[str]]) -> None:
    table = Table(*headers, title=title, title_justify="left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


# --- fuzz ----------------------------------------------------------------------------------------

_USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi?"}]}
_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
_SESSION = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["audio"],
    "max_output_tokens": 50,
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": _VAD,
            "transcription": {"model": "whisper-1", "language": "en"},
            "noise_reduction": {"type": "near_field"},
        },
        "output": {"format": {"type": "audio/pcm"}, "voice": "alloy", "speed": 1.0},
    },
}
_ITEMS = (
    _USER,
    {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Hush."}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi"}]},
    {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "PCM"}]},
    {"type": "function_call", "name": "lookup", "arguments": "{}", "call_id": "call_1"},
    {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
)
_RESPONSE = {
    "output_modalities": ["text"],
    "instructions": "Shortly.",
    "conversation": "none",
    "input": [_USER],
    "metadata": {"k": "v"},
    "max_output_tokens": 20,
}
_ODD_VALUES = (
    *(-1, -(2**31), 2**63, 10**400, 1e308, -1e308, -0.0, 0, 1e-320, 65536),
    *("NaN", "Infinity", "-1e999", "", "0x10", "\u0000", "\ud800", "🙂" * 100),
    *(None, True, [], {}, [1, "a", None], {"type": "message"}),
)
_BAD_TYPES = ("", "session.updat", "SESSION.UPDATE", "response.done", "error", "x" * 10_000)
_JSON_ODDITIES = (
    '{"type": NaN}',
    '{"type": "response.create", "response": {"max_output_tokens": Infinity}}',
    '{"type": "response.create", "type": "response.cancel"}',
    '{"type": "input_audio_buffer.append", "audio": "\\ud800"}',
    '{"type": "conversation.item.truncate", "item_id": "a", "content_index": 1e400}',
    "[]",
    "null",
    "1",
    '"x"',
    "",
    " ",
    "{}",
    "[{}]",
)


class Fuzzer:
    """Valid Realtime client events, then mutated: each case is a label and its messages."""

    KINDS = (
        "valid",
        "wrong_type",
        "out_of_range",
        "delete_field",
        "add_field",
        "bad_base64",
        "huge_string",
        "deep_nesting",
        "unknown_type",
        "binary",
        "random_text",
        "truncated_json",
        "json_oddities",
        "interleaving",
        "fragmented",
    )

    def __init__(self, rng: random.Random, *, huge_bytes: int = 1 << 20) -> None:
        self.rng = rng
        self.huge_bytes = huge_bytes

    def pcm(self, ms: int) -> str:
        n = RATE * ms // 1000
        samples = self.rng.choice(
            (
                np.zeros(n, np.int16),
                (np.sin(np.arange(n) * 0.05) * 8000).astype(np.int16),
                np.frombuffer(self.rng.randbytes(2 * n), np.int16),
            )
        )
        return base64.b64encode(samples.astype("<i2").tobytes()).decode()

    def item_id(self, known: Sequence[str]) -> str:
        if known and self.rng.random() < 0.7:
            return self.rng.choice(known)
        return self.rng.choice(("item_missing", "", "x" * 300))

    def valid(self, known: Sequence[str]) -> Event:
        r = self.rng
        kind = r.choice(
            (
                *["session.update", "input_audio_buffer.append", "conversation.item.create"] * 2,
                *("input_audio_buffer.commit", "input_audio_buffer.clear", "response.cancel"),
                *("conversation.item.retrieve", "conversation.item.truncate", "response.create"),
                *("conversation.item.delete", "output_audio_buffer.clear"),
            )
        )
        event: Event = {"type": kind}
        if r.random() < 0.5:
            event["event_id"] = f"evt_{r.getrandbits(32):x}"
        match kind:
            case "session.update":
                session = json.loads(json.dumps(_SESSION))
                event["session"] = {k: v for k, v in session.items() if r.random() < 0.5}
                event["session"]["type"] = "realtime"
            case "input_audio_buffer.append":
                event["audio"] = self.pcm(r.choice((20, 20, 40, 100, 300)))
            case "conversation.item.create":
                event["item"] = json.loads(
                    json.dumps(r.choice(_ITEMS)).replace("PCM", self.pcm(200))
                )
                if r.random() < 0.2:
                    event["previous_item_id"] = self.item_id(known)
            case "conversation.item.retrieve" | "conversation.item.delete":
                event["item_id"] = self.item_id(known)
            case "conversation.item.truncate":
                event.update(item_id=self.item_id(known), content_index=0, audio_end_ms=1500)
            case "response.create" if r.random() < 0.7:
                event["response"] = {k: v for k, v in _RESPONSE.items() if r.random() < 0.4}
            case "response.cancel" if r.random() < 0.3:
                event["response_id"] = "resp_missing"
        return event

    def case(self, known: Sequence[str]) -> tuple[str, list[Message]]:
        r = self.rng
        kind = r.choice(self.KINDS)
        event = json.loads(json.dumps(self.valid(known)))  # a deep copy: templates are shared
        paths = [p for p in _paths(event) if p]
        dicts = [p for p in [(), *paths] if isinstance(_get(event, p), dict)]
        strings = [p for p in paths if isinstance(_get(event, p), str)]
        match kind:
            case "valid":
                pass
            case "wrong_type" | "out_of_range":
                path = r.choice([p for p in paths if p[-1] != "type"] or paths)
                _set(event, path, r.choice(_ODD_VALUES))
            case "delete_field":
                path = r.choice(paths)
                del _get(event, path[:-1])[path[-1]]
            case "add_field":
                key = r.choice(("extra", "type", "audio", "session", "__proto__", "é"))
                _get(event, r.choice(dicts))[key] = r.choice(_ODD_VALUES)
            case "bad_base64":
                bad = ("@@@@", "abc", "====", "AQID", "YW Jj\nZA==", "", "é" * 8)
                bad += ("A" * (self.huge_bytes + 1), base64.b64encode(r.randbytes(5)).decode())
                event = {"type": "input_audio_buffer.append", "audio": r.choice(bad)}
                if r.random() < 0.3:
                    return kind, [json.dumps(event), '{"type": "input_audio_buffer.commit"}']
            case "huge_string":
                size = r.choice((1 << 16, 1 << 18, self.huge_bytes))
                _set(event, r.choice(strings or [("type",)]), r.choice("xé\ud800🙂") * size)
            case "deep_nesting":
                depth = r.choice((64, 1000, 100_000))
                _set(event, r.choice(paths), "__DEEP__")
                opening, closing = r.choice((("[", "]"), ('{"a":', "}")))
                deep = opening * depth + "1" + closing * depth
                return kind, [json.dumps(event).replace('"__DEEP__"', deep, 1)]
            case "unknown_type":
                event["type"] = r.choice((*_BAD_TYPES, None, 5, ["session.update"]))
            case "binary":
                return kind, [
                    r.choice((json.dumps(event).encode(), r.randbytes(r.randrange(1, 4096))))
                ]
            case "random_text":
                alphabet = string.printable + 'é🙂\u0000\u2028{}[]":,'
                n = r.choice((1, 16, 256, 4096))
                return kind, ["".join(r.choice(alphabet) for _ in range(n))]
            case "truncated_json":
                text = json.dumps(event)
                return kind, [text[: r.randrange(0, len(text))]]
            case "json_oddities":
                text = json.dumps(event)
                odd = (*_JSON_ODDITIES, "\ufeff" + text, text + " x", text + text)
                return kind, [r.choice(odd)]
            case "fragmented":
                text = json.dumps(event)
                cuts = sorted(r.sample(range(1, len(text)), min(len(text) - 1, r.randrange(1, 8))))
                bounds = zip([0, *cuts], [*cuts, len(text)], strict=True)
                return kind, [tuple(text[a:b] for a, b in bounds)]
            case "interleaving":
                return kind, [json.dumps(e) for e in self._interleaving(known)]
        return kind, [json.dumps(event)]

    def _interleaving(self, known: Sequence[str]) -> list[Event]:
        r = self.rng
        item_id = f"item_fz{r.getrandbits(32):x}"
        user = {"type": "conversation.item.create", "item": {**_USER, "id": item_id}}
        create, cancel = {"type": "response.create"}, {"type": "response.cancel"}
        audio = [{"type": "input_audio_buffer.append", "audio": self.pcm(100)}] * r.randrange(1, 6)
        truncate = {
            "type": "conversation.item.truncate",
            "item_id": self.item_id(known),
            "content_index": 0,
            "audio_end_ms": 10,
        }
        update: Event = {"type": "session.update", "session": {"type": "realtime"}}
        return r.choice(
            (
                [create, cancel],
                [user, create, cancel],
                [user, create, {"type": "conversation.item.delete", "item_id": item_id}],
                [create, truncate, {"type": "output_audio_buffer.clear"}],
                [*audio, {"type": "input_audio_buffer.commit"}, create],
                [
                    *audio,
                    {"type": "input_audio_buffer.clear"},
                    {"type": "input_audio_buffer.commit"},
                ],
                [create, create],
                [create, update, cancel],
                [create, {"type": "session.update", "session": {"type": "transcription"}}],
                [user, user],
            )
        )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, sub in items:
        yield from _paths(sub, (*prefix, key))


def _get(event: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        event = event[key]
    return event


def _set(event: Event, path: tuple[Any, ...], value: Any) -> None:
    _get(event, path[:-1])[path[-1]] = value


@dataclass
class FuzzTally:
    sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    probes: list[float] = field(default_factory=list)
    hangs: int = 0
    hangs_recovered: int = 0
    no_close_frame: int = 0
    closed_by_server: Counter[int] = field(default_factory=Counter)
    connects: int = 0
    connect_failures: int = 0
    error_codes: Counter[str] = field(default_factory=Counter)
    final_turns: list[dict[str, Any]] = field(default_factory=list)

    def retire(self, conn: Conn) -> None:
        self.error_codes.update(conn.error_codes)
        if conn.closed is not None and conn.closed.by_server:
            if conn.closed.clean:
                self.closed_by_server[conn.closed.code] += 1
            else:
                self.no_close_frame += 1


async def _fuzz_connection(
    url: str, index: int, quota: int, args: argparse.Namespace, tally: FuzzTally
) -> None:
    fuzzer = Fuzzer(random.Random(args.seed * 1000 + index), huge_bytes=args.huge_bytes)
    conn: Conn | None = None
    sent = probes = 0
    oversize = args.oversize
    while sent < quota:
        if conn is None or conn.closed is not None:
            if conn is not None:
                await conn.close()
                tally.retire(conn)
            try:
                conn = await Conn.open(url)
                tally.connects += 1
            except CONNECT_ERRORS:
                conn = None
                tally.connect_failures += 1
                await asyncio.sleep(1)
                continue
        batch: list[Message] = []
        if oversize and sent >= quota // 2:
            # Past the Realtime limit of 15 MiB: an error event, not a dropped connection.
            oversize -= 1
            tally.kinds["oversize"] += 1
            batch.append(
                json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (16 << 20)})
            )
        while len(batch) < args.batch:
            kind, messages = fuzzer.case(conn.item_ids)
            tally.kinds[kind] += 1
            batch.extend(messages)
        for message in batch:
            try:
                await conn.send(message)
            except ConnectionClosed:
                break
            sent += 1
            tally.sent += 1
        probes += 1
        try:
            tally.probes.append(await ping(conn, index * 10**6 + probes, args.probe_timeout))
        except TimeoutError:
            tally.hangs += 1
            try:  # hung, or only slow?
                await ping(conn, index * 10**6 + probes + 5 * 10**5, 30)
                tally.hangs_recovered += 1
            except (TimeoutError, ConnectionError, ConnectionClosed):
                await conn.close()
                tally.retire(conn)
                conn = None
        except (ConnectionError, ConnectionClosed):
            pass  # closed: counted when the connection is retired
    if conn is not None and conn.closed is None:
        tally.final_turns.append(await _final_turn(conn))
    if conn is not None:
        await conn.close()
        tally.retire(conn)


async def _final_turn(conn: Conn) -> dict[str, Any]:
    """Cancel whatever the fuzz left running, then a plain text turn. A reply still running is
    waited out (a few tries) rather than counted against the server."""
    reason = ""
    for attempt in range(1, 6):
        with contextlib.suppress(ConnectionClosed):
            await conn.send({"type": "response.cancel"})
            await conn.send({"type": "input_audio_buffer.clear"})
        await asyncio.sleep(0.5 * attempt)
        try:
            return {"ok": True, "attempts": attempt, **await text_turn(conn, "What is parley?")}
        except TurnFailed as exc:
            reason = str(exc)
            if "active_response" not in reason:
                break
    return {"ok": False, "attempts": attempt, "reason": reason}


async def _fuzz(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    tally = FuzzTally()
    quota = math.ceil(args.events / args.connections)
    started = time.perf_counter()
    await asyncio.gather(
        *(_fuzz_connection(server.ws_url, i, quota, args, tally) for i in range(args.connections))
    )
    elapsed = time.perf_counter() - started
    alive = server.process.poll() is None
    fresh: dict[str, Any] = {"ok": False, "reason": "server died"}
    if alive:
        try:
            conn = await Conn.open(server.ws_url)
            fresh = {"ok": True, **await text_turn(conn, "Hello")}
            await conn.close()
        except (*CONNECT_ERRORS, TurnFailed) as exc:
            fresh = {"ok": False, "reason": str(exc)}
    return {
        "events_sent": tally.sent,
        "connections": args.connections,
        "seconds": round(elapsed, 1),
        "cases_by_kind": dict(sorted(tally.kinds.items())),
        "server_alive": alive,
        "probe_rtt_ms": ms_summary(tally.probes),
        "hangs": tally.hangs,
        "hangs_recovered_within_30s": tally.hangs_recovered,
        "closes_without_close_frame": tally.no_close_frame,
        "closes_by_server": {str(k): v for k, v in tally.closed_by_server.items()},
        "connects": tally.connects,
        "connect_failures": tally.connect_failures,
        "error_codes": dict(tally.error_codes.most_common()),
        "final_turns_completed": sum(t["ok"] for t in tally.final_turns),
        "final_turns": tally.final_turns,
        "fresh_connection_turn": fresh,
    }


def run_fuzz(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-fuzz-") as tmp:
        server = start_server(Path(tmp), sets=args.set)
        try:
            result = asyncio.run(_fuzz(server, args))
        finally:
            exit_code = server.stop()
            log = server.problems()
    result.update(server_exit_code=exit_code, server_log=log)
    result["crashes"] = int(not result["server_alive"]) + log["tracebacks"]
    turns = f"{result['final_turns_completed']} of {len(result['final_turns'])}"
    rows = [
        ["events sent", f"{result['events_sent']} over {args.connections} connections"],
        ["crashes (server died, or a traceback)", str(result["crashes"])],
        ["ERROR lines in the server log", str(log["error_lines"])],
        [f"hangs (probe unanswered in {args.probe_timeout:g} s)", str(result["hangs"])],
        ["closes without a close frame", str(result["closes_without_close_frame"])],
        ["closes by the server {code: n}", json.dumps(result["closes_by_server"])],
        ["connections still open that completed a text turn", turns],
        [
            "fresh connection's text turn",
            "ok" if result["fresh_connection_turn"]["ok"] else "FAILED",
        ],
        ["probe round trip p50 / max ms", pair(result["probe_rtt_ms"])],
        ["exit status after SIGTERM", fmt(exit_code)],
    ]
    show(console, "WebSocket fuzz", ["fuzz", "result"], rows)
    return result


# --- storm ---------------------------------------------------------------------------------------


async def _storm_client(url: str, hold_s: float, audio_ms: int, go: float) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, go - time.time()))
    start = time.perf_counter()
    try:
        ws = await websockets.connect(
            url, max_size=None, compression=None, proxy=None, open_timeout=60, ping_interval=None
        )
    except InvalidStatus as exc:
        return {"ok": False, "status": exc.response.status_code, "s": time.perf_counter() - start}
    except Exception as exc:  # every way a connect can fail is a figure, not a crash
        return {"ok": False, "status": type(exc).__name__, "s": time.perf_counter() - start}
    out: dict[str, Any] = {"ok": False, "handshake_s": time.perf_counter() - start}
    try:
        async with asyncio.timeout(60):
            while json.loads(await ws.recv())["type"] != "session.created":
                pass
            out["created_s"] = time.perf_counter() - start
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            while json.loads(await ws.recv())["type"] != "session.updated":
                pass
            out["updated_s"] = time.perf_counter() - start
            if audio_ms:
                # A caller who starts to speak: the session's VAD must take its model.
                noise = np.random.default_rng(len(out)).normal(0, 30, RATE * audio_ms // 1000)
                for packet in range(0, len(noise), PACKET):
                    await ws.send(_append(noise[packet : packet + PACKET].astype(np.int16)))
                probe = {"type": "conversation.item.retrieve", "item_id": "missing"}
                await ws.send(json.dumps(probe))
                while json.loads(await ws.recv())["type"] != "error":
                    pass
                out["audio_s"] = time.perf_counter() - start
        out["ok"] = True
        await asyncio.sleep(hold_s)
    except Exception as exc:
        out["status"] = type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 10)
    return out


def _storm_process(url: str, n: int, hold_s: float, audio_ms: int, go: float, path: str) -> None:
    async def main() -> list[dict[str, Any]]:
        clients = (_storm_client(url, hold_s, audio_ms, go) for _ in range(n))
        return await asyncio.gather(*clients)

    Path(path).write_text(json.dumps(asyncio.run(main())))


async def _turns(
    conn: Conn, speech: Speech | None, t0: float, *, n: int = 10**6, until: Callable[[], bool]
) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for i in range(n):
        if until():
            break
        at = round(time.perf_counter() - t0, 2)
        try:
            if speech is not None:
                result = await speech.turn(conn, i)
            else:
                result = await text_turn(conn, f"Question {i}: what is parley?")
            turns.append({"at_s": at, **result})
        except TurnFailed as exc:
            turns.append({"at_s": at, "failed": str(exc)})
        if speech is None:
            await asyncio.sleep(0.2)
    return turns


async def _pings(conn: Conn, t0: float, until: Callable[[], bool]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    n = 0
    while not until():
        n += 1
        at = time.perf_counter() - t0
        try:
            out.append((at, await ping(conn, n, 60)))
        except (TimeoutError, ConnectionError, ConnectionClosed):
            out.append((at, math.inf))
        await asyncio.sleep(0.1)
    return out


async def _storm(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    speech = None if args.text else await asyncio.to_thread(Speech)
    victim = await Conn.open(server.ws_url)
    pinger = await Conn.open(server.ws_url)
    t0 = time.perf_counter()
    rss: list[float] = []
    done = {"pings": False}

    async def sample() -> None:
        while True:
            if (value := server.rss_mib()) is not None:
                rss.append(value)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    pings_task = asyncio.create_task(_pings(pinger, t0, lambda: done["pings"]))
    before = await _turns(victim, speech, t0, n=args.baseline_turns, until=lambda: False)
    rss_before = server.rss_mib()
    workers_before = server.workers_rss_mib()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        results = Path(f.name)
    go = time.time() + 3  # the clients' process needs a moment to start
    storm_start = time.perf_counter() - t0 + 3
    process = multiprocessing.get_context("spawn").Process(
        target=_storm_process,
        args=(server.ws_url, args.connects, args.hold, args.audio_ms, go, str(results)),
    )
    process.start()
    during = await _turns(victim, speech, t0, until=lambda: not process.is_alive())
    await asyncio.to_thread(process.join)
    storm_end = time.perf_counter() - t0
    clients = json.loads(await asyncio.to_thread(results.read_text))
    await asyncio.to_thread(results.unlink)
    await asyncio.sleep(args.settle)
    rss_after = server.rss_mib()
    workers_after = server.workers_rss_mib()
    after = await _turns(victim, speech, t0, n=args.baseline_turns, until=lambda: False)
    done["pings"] = True
    pings = await pings_task
    sampler.cancel()
    await victim.close()
    await pinger.close()

    def phase(at: float) -> str:
        return "before" if at < storm_start else "during" if at <= storm_end else "after"

    def turn_summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [t for t in turns if "failed" not in t]
        return {
            "n": len(turns),
            "failed": len(turns) - len(ok),
            "first_ms": ms_summary([t["first_s"] for t in ok if t["first_s"] is not None]),
            "done_ms": ms_summary([t["done_s"] for t in ok]),
        }

    ok = [c for c in clients if c["ok"]]
    return {
        "connects": args.connects,
        "hold_s": args.hold,
        "audio_ms": args.audio_ms,
        "turn_kind": "text" if args.text else "speech at real-time pace, server_vad",
        "storm_window_s": [round(storm_start, 1), round(storm_end, 1)],
        "storm_clients": {
            "ok": len(ok),
            "failed": dict(Counter(str(c.get("status")) for c in clients if not c["ok"])),
            "handshake_ms": ms_summary([c["handshake_s"] for c in ok]),
            "session_created_ms": ms_summary([c["created_s"] for c in ok]),
            "session_updated_ms": ms_summary([c["updated_s"] for c in ok]),
            "audio_processed_ms": ms_summary([c["audio_s"] for c in ok if "audio_s" in c]),
        },
        "turns": {
            "before": turn_summary(before),
            "during": turn_summary(during),
            "after": turn_summary(after),
        },
        "ping_ms": {
            name: ms_summary([s for at, s in pings if phase(at) == name and s != math.inf])
            for name in ("before", "during", "after")
        },
        "pings_lost": sum(s == math.inf for _, s in pings),
        "rss_mib": {
            "before": rss_before,
            "peak": max(rss, default=None),
            "after_settle": rss_after,
            "settle_s": args.settle,
        },
        "workers_rss_mib": {"before": workers_before, "after_settle": workers_after},
        "turn_details": {"before": before, "during": during, "after": after},
    }


def run_storm(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-storm-") as tmp:
        server = start_server(Path(tmp), sets=args.set)
        try:
            result = asyncio.run(_storm(server, args))
        finally:
            exit_code = server.stop()
            log = server.problems()
    result.update(server_exit_code=exit_code, server_log=log)
    rows = [
        [
            name,
            str(turns["n"]),
            str(turns["failed"]),
            pair(turns["first_ms"]),
            pair(turns["done_ms"]),
            pair(result["ping_ms"][name]),
        ]
        for name, turns in result["turns"].items()
    ]
    headers = ["phase", "turns", "failed", "first reply p50/max ms", "done p50/max ms"]
    title = f"Storm: {args.connects} simultaneous connects; the open sessions"
    show(console, title, [*headers, "ping p50/max ms"], rows)
    clients, rss = result["storm_clients"], result["rss_mib"]
    rows = [
        ["connects ok / failed", f"{clients['ok']} / {json.dumps(clients['failed'])}"],
        ["handshake p50 / max ms", pair(clients["handshake_ms"])],
        ["session.updated p50 / max ms", pair(clients["session_updated_ms"])],
        [
            f"{args.audio_ms} ms of audio processed p50 / max ms",
            pair(clients["audio_processed_ms"]),
        ],
        ["RSS before / peak / after MiB", " / ".join(fmt(rss[k]) for k in rss if k != "settle_s")],
        [
            "worker processes' RSS before / after MiB",
            " / ".join(fmt(v) for v in result["workers_rss_mib"].values()),
        ],
        ["tracebacks / ERROR lines", f"{log['tracebacks']} / {log['error_lines']}"],
    ]
    show(console, "Storm: the storm's clients and the server", ["storm", "result"], rows)
    return result


# --- soak ----------------------------------------------------------------------------------------


async def _soak_worker(
    server: Server, index: int, speech: Speech | None, t0: float, args: argparse.Namespace
) -> dict[str, Any]:
    deadline = t0 + args.minutes * 60
    out: dict[str, Any] = {"turns": [], "records": [], "stalls": 0, "errors": [], "sessions": 0}
    out["error_events"] = Counter()
    i = 0
    while time.monotonic() < deadline:
        try:
            conn = await Conn.open(server.ws_url)
        except CONNECT_ERRORS as exc:
            out["errors"].append(f"connect: {exc!r}")
            await asyncio.sleep(1)
            continue
        out["sessions"] += 1
        try:
            for _ in range(args.turns_per_session):
                if time.monotonic() >= deadline:
                    break
                at = round(time.monotonic() - t0, 2)
                try:
                    if speech is not None:
                        result = await speech.turn(conn, index + i)
                    else:
                        modalities = ("text",) if args.turns == "text" else ("audio",)
                        result = await text_turn(conn, f"Question {i}?", modalities=modalities)
                except TurnFailed as exc:
                    out["stalls"] += 1
                    out["errors"].append(str(exc))
                    break
                out["turns"].append(result["done_s"])
                out["records"].append({"at_s": at, "session": index, "turn": i, **result})
                out["stalls"] += result["done_s"] > args.stall_s
                i += 1
                await asyncio.sleep(args.think)
        finally:
            await conn.close()
            out["error_events"].update(conn.error_codes)
            if conn.closed is not None and conn.closed.by_server:
                out["errors"].append(f"server closed the session ({conn.closed.code})")
    return out


async def _soak(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    speech = await asyncio.to_thread(Speech) if args.turns == "speech" else None
    t0 = time.monotonic()
    samples: list[tuple[float, float | None]] = [(0.0, server.rss_mib())]
    worker_samples: list[tuple[float, float]] = [(0.0, server.workers_rss_mib())]

    async def sample() -> None:
        while True:
            await asyncio.sleep(args.sample_s)
            at = round(time.monotonic() - t0, 1)
            samples.append((at, server.rss_mib()))
            worker_samples.append((at, server.workers_rss_mib()))

    sampler = asyncio.create_task(sample())
    workers = await asyncio.gather(
        *(_soak_worker(server, i, speech, t0, args) for i in range(args.sessions))
    )
    sampler.cancel()
    await asyncio.sleep(args.settle)
    closed_rss = server.rss_mib()
    closed_workers = server.workers_rss_mib()
    # Growth from the end of the first minute (a quarter of a shorter run): warm-up excluded.
    base_at = min(60.0, args.minutes * 15)
    base = next((r for t, r in samples if t >= base_at and r is not None), samples[0][1])
    last = next((r for _, r in reversed(samples) if r is not None), None)
    growth = None if base is None or last is None else round(100 * (last - base) / base, 1)
    turns = [s for w in workers for s in w["turns"]]
    records = sorted((r for w in workers for r in w["records"]), key=lambda r: r["at_s"])
    errors = [e for w in workers for e in w["errors"]]
    return {
        "sessions_concurrent": args.sessions,
        "minutes": args.minutes,
        "turn_kind": args.turns,
        "sessions_opened": sum(w["sessions"] for w in workers),
        "turns": len(turns),
        "turn_ms": ms_summary(turns),
        "statuses": dict(Counter(r["status"] for r in records)),
        "early_replies": sum(r.get("early_replies", 0) for r in records),
        "stalls": sum(w["stalls"] for w in workers),
        "errors": len(errors),
        "first_errors": errors[:10],
        "error_events": dict(sum((w["error_events"] for w in workers), Counter())),
        "rss_mib": {
            "start": samples[0][1],
            "baseline_at_s": base_at,
            "baseline": base,
            "end": last,
            "max": max((r for _, r in samples if r is not None), default=None),
            "growth_pct": growth,
            "after_all_closed": closed_rss,
            "settle_s": args.settle,
        },
        "rss_samples": samples,
        "workers_rss_mib": {
            "start": worker_samples[0][1],
            "end": worker_samples[-1][1],
            "after_all_closed": closed_workers,
            "samples": worker_samples,
        },
        "turn_records": records,
    }


def run_soak(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-soak-") as tmp:
        server = start_server(Path(tmp), sets=args.set)
        try:
            result = asyncio.run(_soak(server, args))
        finally:
            exit_code = server.stop()
            log = server.problems()
    result.update(server_exit_code=exit_code, server_log=log)
    rss, turn_ms, workers = result["rss_mib"], result["turn_ms"], result["workers_rss_mib"]
    rows = [
        ["sessions x minutes", f"{args.sessions} x {args.minutes:g} ({result['turn_kind']})"],
        ["turns / sessions opened", f"{result['turns']} / {result['sessions_opened']}"],
        ["turn p50 / p95 / max ms", " / ".join(fmt(turn_ms[k]) for k in ("p50", "p95", "max"))],
        [f"stalls (> {args.stall_s:g} s or no answer)", str(result["stalls"])],
        ["errors", str(result["errors"])],
        [
            "RSS start / at baseline / end / all closed MiB",
            " / ".join(fmt(rss[k]) for k in ("start", "baseline", "end", "after_all_closed")),
        ],
        [f"RSS growth from {rss['baseline_at_s']:g} s to the end", f"{fmt(rss['growth_pct'])} %"],
        [
            "worker processes' RSS start / end / all closed MiB",
            " / ".join(fmt(workers[k]) for k in ("start", "end", "after_all_closed")),
        ],
        ["tracebacks / ERROR lines", f"{log['tracebacks']} / {log['error_lines']}"],
    ]
    show(console, "Soak", ["soak", "result"], rows)
    return result


# --- signals -------------------------------------------------------------------------------------


async def _open_sessions(server: Server, n: int, token: str | None = None) -> list[Conn]:
    conns = [await Conn.open(server.ws_url, token) for _ in range(n)]
    for conn in conns:
        await text_turn(conn, "Hello")
    return conns


def _closes(closes: list[Closed | None]) -> dict[str, Any]:
    return {
        "close_frames": sum(bool(c and c.clean) for c in closes),
        "close_codes": dict(Counter(str(c.code) if c else "still open" for c in closes)),
    }


async def _sigterm(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    conns = await _open_sessions(server, args.sessions)
    # One session is mid-reply when the signal lands.
    await conns[0].send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(server.process.wait, args.grace + 20)
    except subprocess.TimeoutExpired:
        code = None
    exit_s = time.perf_counter() - start
    closes = [await conn.closed_by_peer(5) for conn in conns]
    for conn in conns:
        await conn.close()
    return {
        "sessions": args.sessions,
        "exit_code": code,
        "exit_s": round(exit_s, 2),
        **_closes(closes),
        "server_log": server.problems(),
    }


async def _sigkill(workdir: Path, server: Server, token: str, args: argparse.Namespace) -> Event:
    conns = await _open_sessions(server, args.sessions, token)
    acknowledged: list[str] = []
    stop = asyncio.Event()

    def mint() -> None:
        # Database writes in flight when the process dies: every acknowledged one must survive.
        body = {"session": {"type": "realtime"}}
        while not stop.is_set():
            try:
                status, reply = http_request(
                    server.port, "POST", "/v1/realtime/client_secrets", body, token
                )
            except OSError:
                return
            if status == 200:
                acknowledged.append(json.loads(reply)["value"])

    minting = asyncio.create_task(asyncio.to_thread(mint))
    await asyncio.sleep(1.5)
    server.process.kill()
    await asyncio.to_thread(server.process.wait)
    killed = time.perf_counter()
    stop.set()
    await minting
    closes = [await conn.closed_by_peer(5) for conn in conns]
    for conn in conns:
        await conn.close()
    port_free = _port_free(server.port)
    fresh = await asyncio.to_thread(
        start_server, workdir, auth=True, port=server.port, sets=args.set
    )
    serving_s = time.perf_counter() - killed
    redeemed: bool | str | None = None
    try:
        conn = await Conn.open(fresh.ws_url, token)
        turn = await text_turn(conn, "Hello again")
        await conn.close()
        if acknowledged:  # the last acknowledged secret opens a session on the new process
            try:
                await (await Conn.open(fresh.ws_url, acknowledged[-1])).close()
                redeemed = True
            except CONNECT_ERRORS as exc:
                redeemed = f"refused: {exc}"
        stored = _stored(fresh.database, acknowledged)
        integrity = _sql(fresh.database, "PRAGMA integrity_check")
    finally:
        fresh_exit = fresh.stop()
    return {
        "port_free_at_once": port_free,
        "restart_serving_s": round(serving_s, 2),
        **_closes(closes),
        "turn_after_restart": turn["status"],
        "writes_acknowledged": len(acknowledged),
        "writes_stored": stored,
        "last_acknowledged_secret_redeemed": redeemed,
        "integrity_check": integrity,
        "fresh_exit_code": fresh_exit,
        "fresh_server_log": fresh.problems(),
    }


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _stored(path: Path, secrets: list[str]) -> int:
    """How many of ``secrets`` the database holds (it keeps their SHA-256, never the secret)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        hashes = {row[0] for row in db.execute("SELECT hash FROM client_secrets")}
    return sum(hashlib.sha256(s.encode()).hexdigest() in hashes for s in secrets)


def _sql(path: Path, query: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(query).fetchone()[0]


def run_signals(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-signals-") as tmp:
        server = start_server(Path(tmp), sets=args.set)
        try:
            term = asyncio.run(_sigterm(server, args))
        finally:
            server.stop()
        workdir = Path(tmp) / "auth"
        workdir.mkdir()
        token = create_key(workdir)
        server = start_server(workdir, auth=True, sets=args.set)
        try:
            kill = asyncio.run(_sigkill(workdir, server, token, args))
        finally:
            server.stop()
    frames = f"{term['close_frames']} of {term['sessions']} {json.dumps(term['close_codes'])}"
    killed = f"{kill['close_frames']} of {args.sessions} {json.dumps(kill['close_codes'])}"
    rows = [
        [
            "SIGTERM",
            "exit status / seconds to exit",
            f"{fmt(term['exit_code'])} / {term['exit_s']}",
        ],
        ["SIGTERM", "sessions given a close frame", frames],
        [
            "SIGTERM",
            "tracebacks / ERROR lines",
            "{tracebacks} / {error_lines}".format(**term["server_log"]),
        ],
        ["kill -9", "sessions given a close frame", killed],
        ["kill -9", "port free at once", str(kill["port_free_at_once"])],
        ["kill -9", "kill -> fresh server serving (s)", str(kill["restart_serving_s"])],
        ["kill -9", "turn on the fresh server", str(kill["turn_after_restart"])],
        [
            "kill -9",
            "acknowledged writes stored",
            f"{kill['writes_stored']} of {kill['writes_acknowledged']}",
        ],
        [
            "kill -9",
            "last secret redeemed after restart",
            str(kill["last_acknowledged_secret_redeemed"]),
        ],
        ["kill -9", "PRAGMA integrity_check", str(kill["integrity_check"])],
    ]
    show(console, "Signals", ["signal", "check", "result"], rows)
    return {"sigterm": term, "sigkill": kill}


# --- command line --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=summary)
        c.add_argument("--out", type=Path, help="write the result as JSON here")
        c.add_argument("--debug", action="store_true", help="show tracebacks")
        c.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a setting for parley serve, e.g. --set asr.options='{\"warm\": 2}' (repeatable)",
        )
        return c

    fuzz = command("fuzz", "mutated client events: crashes, hangs, closes, then a text turn")
    fuzz.add_argument("--events", type=int, default=5000, help="messages to send, in all")
    fuzz.add_argument("--connections", type=int, default=8)
    fuzz.add_argument("--batch", type=int, default=25, help="messages between probes")
    fuzz.add_argument("--probe-timeout", type=float, default=5.0, help="seconds; then a hang")
    fuzz.add_argument("--huge-bytes", type=int, default=1 << 20, help="longest huge string")
    fuzz.add_argument("--oversize", type=int, default=1, help="16 MiB messages per connection")
    fuzz.add_argument("--seed", type=int, default=11)
    fuzz.set_defaults(run=run_fuzz)

    storm = command("storm", "simultaneous connects while open sessions keep working")
    storm.add_argument("--connects", type=int, default=300)
    storm.add_argument("--hold", type=float, default=5.0, help="seconds each storm client idles")
    storm.add_argument(
        "--audio-ms", type=int, default=0, help="audio each storm client sends before idling"
    )
    storm.add_argument("--baseline-turns", type=int, default=5, help="turns before and after")
    storm.add_argument("--settle", type=float, default=10.0, help="seconds before RSS after")
    storm.add_argument("--text", action="store_true", help="text turns instead of speech")
    storm.set_defaults(run=run_storm)

    soak = command("soak", "N sessions taking turns for D minutes")
    soak.add_argument("--sessions", type=int, default=8)
    soak.add_argument("--minutes", type=float, default=15.0)
    soak.add_argument("--turns-per-session", type=int, default=20, help="then reconnect")
    soak.add_argument("--think", type=float, default=0.5, help="seconds between turns")
    soak.add_argument("--stall-s", type=float, default=10.0, help="a slower turn is a stall")
    soak.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    soak.add_argument("--settle", type=float, default=10.0, help="seconds before RSS closed")
    soak.add_argument(
        "--turns",
        choices=("speech", "text-audio", "text"),
        default="speech",
        help="real speech at real-time pace (server VAD) and spoken replies; text in and spoken "
        "replies; text only",
    )
    soak.set_defaults(run=run_soak)

    sig = command("signals", "SIGTERM and kill -9 with open sessions")
    sig.add_argument("--sessions", type=int, default=4)
    sig.add_argument("--grace", type=float, default=10.0, help="seconds SIGTERM may take")
    sig.set_defaults(run=run_signals)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    info = machine()
    console.print(
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, commit {info['commit']}",
        markup=False,
    )
    try:
        result = args.run(args, console)
    except Exception as exc:
        if args.debug:
            raise
        console.print(f"error: {type(exc).__name__}: {exc}", markup=False)
        return 1
    result = {
        "command": args.command,
        "argv": list(argv or sys.argv[1:]),
        "machine": info,
        **result,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"wrote {args.out}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
