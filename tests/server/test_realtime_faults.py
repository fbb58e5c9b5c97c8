"""Regression tests for the faults that probes found in ``parley serve`` (issue 11).

Each drives a real server over a real WebSocket, as a misbehaving or unlucky client would, and
checks what a user would: no session wedges, every ``response.created`` gets its
``response.done``, bad values are ``invalid_request_error`` with ``param`` and the session goes
on, sessions end with an ``error`` event and a close frame, memory stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from parley.bench.clips import Clip
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.server.realtime_client import speech_24k
from tests.server.test_auth import cli, new_key


class Raw:
    """A bare WebSocket client: sends anything, sees every frame and how the connection ends."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        await self.conn.send(event if isinstance(event, str | bytes) else json.dumps(event))

    async def until(self, kind: str, wait_s: float = 20) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                event = json.loads(await self.conn.recv())
                self.events.append(event)
                if event["type"] == kind:
                    return event

    async def drain(self, quiet_s: float = 1.0) -> None:
        """Read until nothing has come for ``quiet_s``."""
        while True:
            try:
                raw = await asyncio.wait_for(self.conn.recv(), quiet_s)
            except TimeoutError:
                return
            self.events.append(json.loads(raw))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def text_turn(self, text: str = "How do I start parley?") -> dict[str, Any]:
        await self.send(user_text(text))
        await self.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        return await self.until("response.done")


def user_text(text: str) -> dict[str, Any]:
    """A client's user message with one text part."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


@asynccontextmanager
async def raw(server: Server, *, key: str | None = None, **kw: Any) -> AsyncIterator[Raw]:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with websockets.connect(
        f"{server.ws_url}?model=parley", additional_headers=headers, max_size=None, **kw
    ) as conn:
        client = Raw(conn)
        await client.until("session.created")
        yield client


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids += [int(c) for c in children]
    return total / 1024


# --- defect 1: the cancel race ---------------------------------------------------------------


async def test_fault_create_then_cancel_never_wedges(server: Server) -> None:
    async with raw(server) as c:
        await c.send(user_text("How do I start parley?"))
        for _ in range(9):
            await c.send({"type": "response.create"})
            await c.send({"type": "response.cancel"})
            await c.until("response.done")
        await c.drain()
        created = [e["response"]["id"] for e in c.of("response.created")]
        done = [e["response"]["id"] for e in c.of("response.done")]
        assert len(created) == 9 and sorted(created) == sorted(done)
        # The session is free: a new response is created, not refused as already active.
        done_event = await c.text_turn()
        assert done_event["response"]["status"] == "completed"
        assert not [e for e in c.of("error") if "active" in e["error"]["code"]]


async def test_fault_cancel_while_the_turn_is_transcribed(
    server: Server, clips: dict[str, Clip]
) -> None:
    pcm = speech_24k(clips["en_goforward_raw"].path, trailing_silence_ms=0)
    audio = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
    async with raw(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await c.until("session.updated")
        for _ in range(3):
            await c.send({"type": "input_audio_buffer.append", "audio": audio})
            await c.send({"type": "input_audio_buffer.commit"})
            await c.send({"type": "response.create"})  # while the turn is being recognised
            await c.send({"type": "response.cancel"})
            done = await c.until("response.done")
            assert done["response"]["status"] == "cancelled"
        # Create while transcribing, then let it run: it answers the recognised words.
        await c.send({"type": "input_audio_buffer.append", "audio": audio})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        done = await c.until("response.done")
        assert done["response"]["status"] == "completed"
        await c.drain()
        assert len(c.of("response.created")) == len(c.of("response.done")) == 4
        transcripts = c.of("conversation.item.input_audio_transcription.completed")
        assert all("forward" in t["transcript"] for t in transcripts) and len(transcripts) == 4


# --- defect 3: out-of-range values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("turn_detection", "param"),
    [
        ({"silence_duration_ms": 20000}, "silence_duration_ms"),
        ({"prefix_padding_ms": 10**12}, "prefix_padding_ms"),
        ({"threshold": -0.5}, "threshold"),
    ],
)
async def test_fault_out_of_range_values_are_client_errors(
    server: Server, turn_detection: dict[str, Any], param: str
) -> None:
    async with raw(server) as c:
        td = {"type": "server_vad", **turn_detection}
        await c.send(
            {
                "type": "session.update",
                "event_id": "ev_bad",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": td}}},
            }
        )
        error = (await c.until("error"))["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == f"session.audio.input.turn_detection.{param}"
        assert error["event_id"] == "ev_bad"
        assert (await c.text_turn())["response"]["status"] == "completed"  # it goes on


# --- defect 10: voices, cancel of another response, slow readers ------------------------------


async def test_fault_voice_is_checked_at_session_update(server: Server) -> None:
    async with raw(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "../../etc/passwd"}}},
            }
        )
        error = (await c.until("error"))["error"]
        assert (error["type"], error["param"]) == (
            "invalid_request_error",
            "session.audio.output.voice",
        )
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}},
            }
        )
        updated = await c.until("session.updated")
        assert updated["session"]["audio"]["output"]["voice"] == "echo"


async def test_fault_cancel_of_an_unknown_response_leaves_the_current_one(
    llm_server: Server,
) -> None:
    async with raw(llm_server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "SLOW: at length."},
            }
        )
        await c.until("session.updated")
        await c.text_turn("warm up")
        await c.send(user_text("Tell me everything."))
        await c.send({"type": "response.create"})
        await c.until("response.output_audio.delta")
        await c.send({"type": "response.cancel", "response_id": "resp_not_this_one"})
        error = (await c.until("error"))["error"]
        assert error["param"] == "response_id"
        done = await c.until("response.done", wait_s=60)
        assert done["response"]["status"] == "completed"


@pytest.fixture
def small_buffer_server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(
        tmp_path, "--set", "server.send_buffer_bytes=65536", env={"PARLEY_LLM_BASE_URL": ""}
    )
    yield s
    stop_server(s)


async def test_fault_client_that_stops_reading_is_closed(small_buffer_server: Server) -> None:
    server = small_buffer_server
    text = "word " * 20000  # a 100 kB item: every retrieve answers 100 kB
    async with raw(server, max_queue=1) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_big",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await c.until("conversation.item.done")
        for _ in range(400):  # 40 MB of answers that this client never reads
            await c.send({"type": "conversation.item.retrieve", "item_id": "item_big"})
        await asyncio.sleep(3)
        closed = None
        async with asyncio.timeout(20):
            try:
                while True:
                    event = json.loads(await c.conn.recv())
                    if event["type"] == "error":
                        assert event["error"]["code"] == "slow_consumer"
            except websockets.ConnectionClosed as exc:
                closed = exc
        assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 1008
    assert "not reading" in server.log.read_text()


# --- defect 2: a client sending far faster than real time --------------------------------------


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, env={"PARLEY_LLM_BASE_URL": ""})
    yield s
    stop_server(s)


async def test_fault_fast_sender_memory_is_bounded(
    fresh_server: Server, clips: dict[str, Clip]
) -> None:
    server = fresh_server
    # A minute of real speech, sentences apart by 700 ms pauses: as sent far faster than real
    # time, a turn ends every few seconds of audio and dozens are being recognised at once
    # (each recogniser used to hold a ~90 MB decoder: the workers grew by ~1 GB and kept it).
    pause = np.zeros(24 * 700, np.int16)
    sentences = [
        speech_24k(c.path, trailing_silence_ms=0) for c in clips.values() if c.language == "en"
    ]
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < 60 * 24000:
        for sentence in sentences:
            parts += [sentence, pause]
    minute = np.concatenate(parts)[: 60 * 24000]
    async with raw(server) as warm:
        await warm.text_turn()
    before = rss_mib(server.process.pid)
    peak = before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mib(server.process.pid))
            await asyncio.sleep(0.2)

    async with raw(server) as c, raw(server) as other, asyncio.TaskGroup() as tg:
        sampler = tg.create_task(sample())
        for i in range(0, len(minute), 24000):  # one-second messages, as fast as they go
            chunk = minute[i : i + 24000].astype("<i2").tobytes()
            await c.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            )
        # Another session is unaffected, and this one still answers.
        assert (await other.text_turn())["response"]["status"] == "completed"
        await c.drain(quiet_s=5)
        assert (await c.text_turn())["response"]["status"] == "completed"
        sampler.cancel()
    errors = [e["error"] for e in c.events if e["type"] == "error"]
    assert all(e["code"] == "audio_too_fast" and e["param"] == "audio" for e in errors)
    assert len(c.of("input_audio_buffer.committed")) >= 10
    assert peak - before <= 300, f"server grew {peak - before:.0f} MiB"


# --- defect 9: a recogniser worker dies --------------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _state(pid: int) -> str:
    """The process's state letter; "gone" where it was reaped since it was listed."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    for line in lines:
        if line.startswith("State:"):
            return line.split()[1]
    return "?"


async def test_fault_dead_recogniser_worker_recovers(
    fresh_server: Server, clips: dict[str, Clip]
) -> None:
    server = fresh_server
    pcm = speech_24k(clips["en_goforward_raw"].path)
    url = f"http://127.0.0.1:{server.port}/healthz"
    async with raw(server) as c, httpx.AsyncClient() as http:
        await c.send({"type": "input_audio_buffer.append", "audio": b64(pcm)})
        first = await c.until("conversation.item.input_audio_transcription.completed")
        assert "forward" in first["transcript"]
        workers = [p for p in _children(server.process.pid) if _state(p) not in ("Z", "gone")]
        assert workers, "no recogniser worker processes"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        health = (await http.get(url)).json()
        assert health["status"] == "degraded" and health["health"]["asr"]["status"] == "degraded"
        # The next turn works (it may wait for the replacement to start).
        await c.send({"type": "input_audio_buffer.append", "audio": b64(pcm)})
        again = await c.until("conversation.item.input_audio_transcription.completed", 60)
        assert "forward" in again["transcript"]
        for _ in range(60):  # back to ok once the replacement is ready
            if (await http.get(url)).json()["status"] == "ok":
                break
            await asyncio.sleep(0.5)
        assert (await http.get(url)).json()["status"] == "ok"
    zombies = [p for p in _children(server.process.pid) if _state(p) == "Z"]
    assert not zombies and not set(workers) & set(_children(server.process.pid))


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode()


# --- defects 5 and 6, and revoked keys: sessions of keyed servers -----------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("keyed")
    db = tmp / "parley.db"
    new_key(db, "acme")
    cli(db, "prompts", "import", str(ROOT / "examples/prompts/support.toml"), "--tenant", "acme")
    server = start_server(
        tmp, auth=True, env={"PARLEY_LLM_BASE_URL": "", "PARLEY_SERVER_REVOCATION_CHECK_S": "0.5"}
    )
    yield server, db
    stop_server(server)


async def test_fault_client_secret_with_out_of_range_values_is_a_400(
    keyed: tuple[Server, Path],
) -> None:
    server, db = keyed
    key = new_key(db, "acme")
    body = {
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 20000}}
            },
        }
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.base_url}/realtime/client_secrets",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "session.audio.input.turn_detection.silence_duration_ms"


async def test_fault_ephemeral_key_with_a_prompt_template(keyed: tuple[Server, Path]) -> None:
    server, db = keyed
    key = new_key(db, "acme")
    body = {
        "session": {
            "type": "realtime",
            "prompt": {"id": "pmpt_support", "variables": {"company": "Acme", "agent_name": "Ann"}},
        }
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.base_url}/realtime/client_secrets",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200, response.text
    secret = response.json()["value"]
    assert "Ann" in response.json()["session"]["instructions"]
    async with raw(server, key=secret) as c:
        assert "Ann" in c.events[0]["session"]["instructions"]
        assert not c.of("error")


async def test_fault_session_expired_ends_with_a_close_frame(keyed: tuple[Server, Path]) -> None:
    server, db = keyed
    key = new_key(db, "acme", "--max-session-seconds", "1")
    async with raw(server, key=key) as c:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.until("never", wait_s=10)
    assert c.of("error")[-1]["error"]["code"] == "session_expired"
    assert closed.value.rcvd is not None  # a close frame, not a dropped connection (1006)


async def test_fault_revoked_key_ends_its_open_sessions(keyed: tuple[Server, Path]) -> None:
    server, db = keyed
    created = cli(db, "keys", "create", "--tenant", "acme")
    key_id = re.search(r"key_\w+", created)
    assert key_id is not None
    key = created.strip().splitlines()[-1]
    async with raw(server, key=key) as c:
        cli(db, "keys", "revoke", key_id.group(0), "--tenant", "acme")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await c.until("never", wait_s=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert c.of("error")[-1]["error"]["code"] == "session_revoked"


# --- defect 11: previous_item_id of a function call ------------------------------------------


async def test_fault_function_call_names_an_item_the_client_has_seen(llm_server: Server) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with raw(llm_server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}})
        await c.until("session.updated")
        await c.send(user_text("What's the weather in Paris?"))
        await c.send({"type": "response.create"})
        await c.until("response.done")
        seen: set[str] = set()
        for event in c.events:
            previous = event.get("previous_item_id")
            assert previous is None or previous in seen, f"{event['type']} names {previous}"
            if event["type"] == "conversation.item.added":
                seen.add(event["item"]["id"])
        (call,) = [
            e for e in c.of("conversation.item.added") if e["item"]["type"] == "function_call"
        ]
        await c.send({"type": "conversation.item.retrieve", "item_id": call["previous_item_id"]})
        assert (await c.until("conversation.item.retrieved"))["item"]["role"] == "user"
