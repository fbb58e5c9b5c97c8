"""Trust on a real ``parley serve`` (issue 14): watermarks on what it synthesises, the audit log
of what it did, and custom voices that are not there.

Checked as an operator would: the audio a client received is run through the detector with
the server's key, the watermark endpoint is asked by two tenants, and ``parley audit verify``
reads the database the server wrote.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from parley.audio.frames import Frame
from parley.trust.watermark import WatermarkKey, detect
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.server.realtime_client import decode_audio
from tests.server.test_auth import new_key

TEXT = (
    "Thank you for calling. Your order left our warehouse this morning and should reach you "
    "by Thursday afternoon. Is there anything else I can help you with today?"
)


@dataclass
class Trusted:
    server: Server
    tmp: Path
    keys: dict[str, str]

    @property
    def db(self) -> Path:
        return self.tmp / "parley.db"

    def parley(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "parley.cli",
                *args,
                "--set",
                f"server.database={self.db}",
                "--set",
                f"trust.audit_key_file={self.tmp / 'audit.key'}",
                "--set",
                f"trust.watermark_key_file={self.tmp / 'watermark.key'}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trusted]:
    tmp = tmp_path_factory.mktemp("trust")
    keys = {t: new_key(tmp / "parley.db", t) for t in ("acme", "globex")}
    server = start_server(tmp, auth=True)
    yield Trusted(server, tmp, keys)
    stop_server(server)


def speech(t: Trusted, tenant: str, **kw: object) -> httpx.Response:
    body = {"model": "tts-1", "input": TEXT, "response_format": "wav", **kw}
    headers = {"Authorization": f"Bearer {t.keys[tenant]}"}
    return httpx.post(f"{t.server.base_url}/audio/speech", json=body, headers=headers, timeout=60)


def test_trust_speech_is_watermarked_and_resolves_to_its_tenant(trusted: Trusted) -> None:
    reply = speech(trusted, "acme")
    assert reply.status_code == 200, reply.text
    samples, rate = sf.read(io.BytesIO(reply.content), dtype="int16")
    key = WatermarkKey.load_or_create(trusted.tmp / "watermark.key")
    found = detect(key, Frame(samples, rate))
    assert found.detected and found.payload is not None
    with sqlite3.connect(trusted.db) as db:
        (tenant, response_id) = db.execute(
            "SELECT tenant, response_id FROM watermark_marks WHERE id = ?", (found.payload,)
        ).fetchone()
    assert tenant == "acme" and response_id.startswith("speech_")

    url = f"{trusted.server.base_url}/audio/watermark/detect"
    answers = {}
    for tenant in ("acme", "globex"):
        answers[tenant] = httpx.post(
            url,
            files={"file": ("reply.wav", reply.content, "audio/wav")},
            headers={"Authorization": f"Bearer {trusted.keys[tenant]}"},
            timeout=60,
        )
    mine, theirs = answers["acme"].json(), answers["globex"].json()
    assert mine["detected"] and mine["payload"]["tenant"] == "acme"
    assert mine["payload"]["response_id"] == response_id
    assert 0 <= mine["p_value"] < 1e-6
    assert theirs["detected"] and theirs["payload"] is None  # not globex's mark

    # The same words from a human recording carry no mark.
    clip = (ROOT.parent / "shared" / "speech" / "en_jfk_wav.wav").read_bytes()
    human = httpx.post(
        url,
        files={"file": ("jfk.wav", clip, "audio/wav")},
        headers={"Authorization": f"Bearer {trusted.keys['acme']}"},
        timeout=60,
    ).json()
    assert not human["detected"] and human["payload"] is None


def test_trust_realtime_reply_is_watermarked_and_audited(trusted: Trusted) -> None:
    import asyncio

    async def talk() -> tuple[str, np.ndarray]:
        client = openai.AsyncOpenAI(
            base_url=trusted.server.base_url, api_key=trusted.keys["globex"], max_retries=0
        )
        async with client.realtime.connect(model="parley") as conn:
            await conn.recv_bytes()
            await conn.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "instructions": "Answer at length."},
                }
            )
            events: list[dict[str, object]] = []
            for _ in range(2):  # two replies: enough audio for a detector (>= 3 s)
                await conn.send(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": TEXT}],
                        },
                    }
                )
                await conn.send({"type": "response.create"})
                while True:
                    event = json.loads(await conn.recv_bytes())
                    events.append(event)
                    if event["type"] == "response.done":
                        break
        await client.close()
        first = next(e for e in events if e["type"] == "response.done")
        return str(first["response"]["id"]), decode_audio(events)  # type: ignore[index]

    response_id, audio = asyncio.run(talk())
    key = WatermarkKey.load_or_create(trusted.tmp / "watermark.key")
    assert len(audio) > 3 * 24000
    assert detect(key, Frame(audio, 24000)).detected

    records = [
        json.loads(line)
        for line in trusted.parley("audit", "export", "--jsonl").stdout.splitlines()
    ]
    kinds = [r["kind"] for r in records]
    assert kinds[:2] == ["key.created", "key.created"]  # the fixture's keys, then the server
    assert kinds[2] == "server.started"
    assert {"session.opened", "response", "session.closed"} <= set(kinds)
    (reply,) = [
        r for r in records if r["kind"] == "response" and r["data"]["response_id"] == response_id
    ]
    assert reply["tenant"] == "globex" and reply["data"]["watermark"] is not None
    assert TEXT not in json.dumps(records)  # no transcript text in the audit log


def test_trust_audit_log_verifies_and_catches_an_edit(trusted: Trusted) -> None:
    speech(trusted, "acme")  # something to audit beyond the start
    checkpoint = trusted.parley("audit", "checkpoint")
    assert checkpoint.returncode == 0, checkpoint.stderr
    (trusted.tmp / "published.checkpoint").write_text(checkpoint.stdout)
    ok = trusted.parley(
        "audit", "verify", "--checkpoint", str(trusted.tmp / "published.checkpoint")
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: ")

    copy = trusted.tmp / "tampered.db"
    with sqlite3.connect(trusted.db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE audit_log SET tenant = 'someone-else' WHERE seq = 1")
    (bad_id,) = sqlite3.connect(copy).execute("SELECT id FROM audit_log WHERE seq = 1").fetchone()
    tampered = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "audit",
            "verify",
            "--set",
            f"server.database={copy}",
            "--set",
            f"trust.audit_key_file={trusted.tmp / 'audit.key'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert tampered.returncode == 1
    assert f"first bad record: index 1 (0-based), id {bad_id}" in tampered.stdout + tampered.stderr


def test_trust_unknown_custom_voice_is_not_found(trusted: Trusted) -> None:
    reply = speech(trusted, "acme", voice={"id": "voice_doesnotexist"})
    assert reply.status_code == 404, reply.text
    assert reply.json()["error"]["param"] == "voice"


def test_trust_realtime_custom_voice_that_is_gone_fails_the_reply(trusted: Trusted) -> None:
    import asyncio

    async def talk() -> dict[str, object]:
        client = openai.AsyncOpenAI(
            base_url=trusted.server.base_url, api_key=trusted.keys["acme"], max_retries=0
        )
        async with client.realtime.connect(model="parley") as conn:
            await conn.recv_bytes()
            voice = {"id": "voice_0123456789abcdef"}
            await conn.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"output": {"voice": voice}}},
                }
            )
            updated = json.loads(await conn.recv_bytes())
            assert updated["type"] == "session.updated", updated
            await conn.send({"type": "response.create"})
            while True:
                event = json.loads(await conn.recv_bytes())
                if event["type"] == "response.done":
                    await client.close()
                    return dict(event["response"])

    response = asyncio.run(talk())
    assert response["status"] == "failed"
    error = response["status_details"]["error"]  # type: ignore[index]
    assert error["code"] == "not_found" and "voice_0123456789abcdef" in error["message"]
