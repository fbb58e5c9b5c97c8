"""The official ``openai`` SDK against a real ``parley serve``: every GA scenario end to end.

Each server event is validated against the SDK's models (unknown events or fields fail).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from parley.bench.clips import Clip
from tests.conftest import shared_words
from tests.fakes.llm_http import FakeLLMServer
from tests.server.conftest import Server
from tests.server.realtime_client import connect, decode_audio, speech_24k


async def test_realtime_session_update_is_partial(server: Server) -> None:
    async with connect(server) as c:
        created = c.events[0]["session"]
        await c.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Be terse."}}
        )
        updated = (await c.until("session.updated"))["session"]
        assert updated["instructions"] == "Be terse."
        assert updated["audio"] == created["audio"]
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "output": {"voice": "echo"},
                        "input": {
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}
                        },
                    },
                },
            }
        )
        updated = (await c.until("session.updated"))["session"]
        assert updated["audio"]["output"]["voice"] == "echo"
        assert updated["audio"]["output"]["format"] == created["audio"]["output"]["format"]
        td = updated["audio"]["input"]["turn_detection"]
        assert td["silence_duration_ms"] == 300 and td["threshold"] == 0.5


async def test_realtime_spoken_turn_with_server_vad(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["en_goforward_raw"]
    async with connect(server) as c:
        await c.append(speech_24k(clip.path), realtime=True)
        started = await c.until("input_audio_buffer.speech_started")
        stopped = await c.until("input_audio_buffer.speech_stopped")
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= 3000
        committed = await c.until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        done = await c.until("conversation.item.input_audio_transcription.completed")
        assert len(shared_words(done["transcript"], clip.transcript)) >= 2
        response = await c.until("response.done")
        assert response["response"]["status"] == "completed"
        audio = decode_audio(c.events)
        assert len(audio) / 24000 > 0.5 and np.abs(audio.astype(np.int32)).max() > 1000
        transcript = c.of_type("response.output_audio_transcript.done")[0]["transcript"]
        assert transcript.strip()
        assert response["response"]["usage"]["output_tokens"] > 0
        order = [e["type"] for e in c.events]
        assert order.index("response.created") < order.index("response.output_item.added")
        assert order.index("response.content_part.added") < order.index(
            "response.output_audio.delta"
        )


async def test_realtime_manual_commit_and_errors(server: Server, clips: dict[str, Clip]) -> None:
    async with connect(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        assert (await c.until("session.updated"))["session"]["audio"]["input"][
            "turn_detection"
        ] is None
        await c.send({"type": "input_audio_buffer.commit", "event_id": "ev_empty"})
        error = await c.until("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "ev_empty"
        await c.append(speech_24k(clips["en_sb_birch_canoe"].path, trailing_silence_ms=200))
        await c.send({"type": "input_audio_buffer.commit"})
        await c.until("input_audio_buffer.committed")
        await c.until("conversation.item.input_audio_transcription.completed")
        assert not c.of_type("input_audio_buffer.speech_started")
        assert not c.of_type("response.created")  # the client asks for the reply itself
        await c.send({"type": "response.create"})
        assert (await c.until("response.done"))["response"]["status"] == "completed"


async def test_realtime_text_only_response(server: Server) -> None:
    async with connect(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": ["text"]},
            }
        )
        await c.until("session.updated")
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "How do I start parley?"}],
                },
            }
        )
        added = await c.until("conversation.item.added")
        await c.send({"type": "response.create"})
        done = await c.until("response.done")
        assert done["response"]["output_modalities"] == ["text"]
        text = c.of_type("response.output_text.done")[0]["text"]
        assert "parley" in text.lower()
        assert not c.of_type("response.output_audio.delta")
        await c.send({"type": "conversation.item.retrieve", "item_id": added["item"]["id"]})
        retrieved = await c.until("conversation.item.retrieved")
        assert retrieved["item"]["content"][0]["text"] == "How do I start parley?"
        await c.send({"type": "conversation.item.delete", "item_id": added["item"]["id"]})
        assert (await c.until("conversation.item.deleted"))["item_id"] == added["item"]["id"]


async def test_realtime_function_call_round_trip(
    llm_server: Server, fake_llm: FakeLLMServer
) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with connect(llm_server) as c:
        await c.send({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}})
        await c.until("session.updated")
        await c.ask("What's the weather in Paris?")
        args = await c.until("response.function_call_arguments.done")
        assert args["name"] == "get_weather"
        assert args["arguments"] == '{"city": "Paris"}'
        done = await c.until("response.done")
        assert done["response"]["output"][0]["type"] == "function_call"
        assert fake_llm.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args["call_id"],
                    "output": "sunny and 22 degrees",
                },
            }
        )
        await c.until("conversation.item.added")
        await c.send({"type": "session.update", "session": {"type": "realtime", "tools": []}})
        await c.send({"type": "response.create"})
        done = await c.until("response.done")
        transcript = c.of_type("response.output_audio_transcript.done")[-1]["transcript"]
        assert "sunny and 22 degrees" in transcript
        sent = fake_llm.requests[-1]["messages"]
        assert sent[-1] == {
            "role": "tool",
            "tool_call_id": args["call_id"],
            "content": "sunny and 22 degrees",
        }
        assert sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_realtime_barge_in_cancels_and_truncate_cuts_transcript(
    llm_server: Server, clips: dict[str, Clip]
) -> None:
    async with connect(llm_server) as c:
        item_id = (await c.start_slow_reply())["item_id"]
        await c.append(speech_24k(clips["en_sb_culprit"].path, trailing_silence_ms=100))
        await c.until("input_audio_buffer.speech_started")
        done = await c.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        full = c.of_type("response.output_audio_transcript.done")[0]["transcript"]
        assert full.split()[-1] != "done."  # it never got to the end
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 400,
            }
        )
        truncated = await c.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 400
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = (await c.until("conversation.item.retrieved"))["item"]
        heard = item["content"][0]["transcript"]
        # What 400 ms of playback held: the reply's first words (maybe none), never all of it.
        assert full.startswith(heard) and len(heard.split()) < len(full.split())
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_nope",
                "content_index": 0,
                "audio_end_ms": 10,
            }
        )
        assert (await c.until("error"))["error"]["code"] == "item_not_found"


async def test_realtime_response_cancel_stops_audio(llm_server: Server) -> None:
    async with connect(llm_server) as c:
        await c.start_slow_reply()
        await c.send({"type": "response.cancel"})
        done = await c.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        index = c.events.index(done)
        await c.send({"type": "response.cancel", "event_id": "ev_again"})
        error = await c.until("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        assert not [e for e in c.events[index:] if e["type"] == "response.output_audio.delta"]


TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
    "hQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_realtime_image_input(
    llm_server: Server, server: Server, fake_llm: FakeLLMServer
) -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": TINY_PNG},
        ],
    }
    async with connect(llm_server) as c:
        await c.send({"type": "conversation.item.create", "item": item})
        await c.send({"type": "response.create"})
        await c.until("response.done")
        assert (
            "can see the image"
            in c.of_type("response.output_audio_transcript.done")[0]["transcript"]
        )
        parts = fake_llm.requests[-1]["messages"][-1]["content"]
        assert {"type": "image_url", "image_url": {"url": TINY_PNG, "detail": "auto"}} in parts
    async with connect(server) as c:  # the faq engine cannot see
        await c.send({"type": "conversation.item.create", "item": item, "event_id": "ev_img"})
        error = await c.until("error")
        assert error["error"]["code"] == "image_input_not_supported"
        assert error["error"]["event_id"] == "ev_img"


async def test_realtime_prompt_template_with_variables(
    llm_server: Server, fake_llm: FakeLLMServer
) -> None:
    async with connect(llm_server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "prompt": {"id": "pmpt_support", "variables": {"company": "Acme Telecom"}},
                },
            }
        )
        updated = (await c.until("session.updated"))["session"]
        assert updated["prompt"]["id"] == "pmpt_support"
        await c.ask("hello")
        await c.until("response.done")
        system = fake_llm.requests[-1]["messages"][0]
        assert system["role"] == "system"
        text = (
            system["content"]
            if isinstance(system["content"], str)
            else system["content"][0]["text"]
        )
        assert "Acme Telecom" in text and "You are Sam" in text and "{{" not in text
        await c.send(
            {
                "type": "session.update",
                "event_id": "ev_p",
                "session": {
                    "type": "realtime",
                    "prompt": {"id": "pmpt_support", "variables": {"nope": "x"}},
                },
            }
        )
        error = await c.until("error")
        assert error["error"]["code"] == "invalid_prompt" and error["error"]["event_id"] == "ev_p"
        await c.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "prompt": {"id": "pmpt_missing"}},
            }
        )
        assert (await c.until("error"))["error"]["param"] == "prompt.id"


async def test_realtime_transcription_session(server: Server, clips: dict[str, Clip]) -> None:
    clip = clips["en_librivox_0880"]
    async with connect(server, model="parley", extra_query={"intent": "transcription"}) as c:
        assert c.events[0]["session"]["type"] == "transcription"
        await c.append(speech_24k(clip.path), realtime=False)
        done = await c.until("conversation.item.input_audio_transcription.completed")
        assert len(shared_words(done["transcript"], clip.transcript)) >= 2
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 1
        await c.send({"type": "response.create", "event_id": "ev_r"})
        assert (await c.until("error"))["error"]["event_id"] == "ev_r"
        assert not c.of_type("response.created")


@pytest.mark.parametrize("fmt", [{"type": "audio/pcmu"}, {"type": "audio/pcma"}])
async def test_realtime_g711_audio_in_and_out(
    server: Server, clips: dict[str, Clip], fmt: dict[str, str]
) -> None:
    from parley.audio.formats import encode_wire, parse_wire_format
    from parley.audio.frames import Frame

    wire_fmt = parse_wire_format(fmt["type"])
    async with connect(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": fmt}, "output": {"format": fmt}},
                },
            }
        )
        await c.until("session.updated")
        pcm = speech_24k(clips["en_goforward_raw"].path)
        data = encode_wire(Frame(pcm, 24000), wire_fmt)
        for i in range(0, len(data), 160):
            await c.send(
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(data[i : i + 160]).decode(),
                }
            )
        await c.until("conversation.item.input_audio_transcription.completed")
        await c.until("response.done")
        out = b"".join(
            base64.b64decode(e["delta"]) for e in c.of_type("response.output_audio.delta")
        )
        assert len(out) / 8000 > 0.5  # one byte a sample at 8 kHz


@pytest.mark.parametrize("source", ["text", "audio"])
def test_readme_sdk_example_works(
    server: Server, clips: dict[str, Clip], tmp_path: Path, source: str
) -> None:
    import subprocess
    import sys

    out = tmp_path / "reply.wav"
    arg = (
        ["--text", "How do I start parley?"]
        if source == "text"
        else ["--audio", str(clips["en_new_home_stars"].path)]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "examples/realtime_client.py",
            "--base-url",
            server.base_url,
            *arg,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "parley:" in proc.stdout
    assert out.stat().st_size > 24000


async def test_realtime_output_audio_buffer_clear_stops_the_reply(llm_server: Server) -> None:
    async with connect(llm_server) as c:
        await c.start_slow_reply()
        await c.send({"type": "output_audio_buffer.clear"})
        done = await c.until("response.done")
        assert done["response"]["status"] == "cancelled"


async def test_realtime_audio_item_without_transcript_is_recognised(
    server: Server, clips: dict[str, Clip]
) -> None:
    pcm = speech_24k(clips["en_goforward_raw"].path, trailing_silence_ms=0)
    async with connect(server) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "audio": base64.b64encode(pcm.astype("<i2").tobytes()).decode(),
                        }
                    ],
                },
            }
        )
        item = (await c.until("conversation.item.added"))["item"]
        # Recognised in the background (the session goes on meanwhile), then announced.
        done = await c.until("conversation.item.input_audio_transcription.completed")
        assert done["item_id"] == item["id"] and "forward" in done["transcript"]
        await c.send({"type": "conversation.item.retrieve", "item_id": item["id"]})
        retrieved = (await c.until("conversation.item.retrieved"))["item"]
        assert "forward" in retrieved["content"][0]["transcript"]


async def test_realtime_item_at_root_and_timeline_extension(server: Server) -> None:
    async with connect(server, extra_query={"parley_timeline": "1"}) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "second"}],
                },
            }
        )
        second = (await c.until("conversation.item.added"))["item"]["id"]
        await c.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "first"}],
                },
            }
        )
        added = await c.until("conversation.item.added")
        assert added["previous_item_id"] is None
        await c.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "item_nope",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "x"}],
                },
            }
        )
        assert (await c.until("error"))["error"]["code"] == "item_not_found"
        await c.send({"type": "response.create"})
        await c.until("response.done")
        raw = json.loads(await c.conn.recv_bytes())  # rate_limits.updated
        while raw["type"] != "parley.turn.timeline":
            raw = json.loads(await c.conn.recv_bytes())
        sent_ms = 1000 * len(decode_audio(c.events)) / 24000
        assert raw["status"] == "completed" and raw["audio_ms"] == pytest.approx(sent_ms, abs=1)
        assert set(raw["stages_ms"]) >= {"llm_first_token", "tts_first_audio", "send"}
        assert 0 <= raw["socket_send_ms"] < 1000  # first audio left the socket promptly
        assert second
