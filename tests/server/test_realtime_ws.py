"""The WebSocket adapter's queues alone: what the driver sees first, what the writer drops."""

from __future__ import annotations

import asyncio

from parley.pipeline.events import SpeechStarted
from parley.server.realtime_ws import Ended, Inbox, Outbox


def audio(response_id: str, n: int = 1000) -> dict[str, object]:
    return {"type": "response.output_audio.delta", "response_id": response_id, "delta": "A" * n}


async def test_inbox_pipeline_events_go_before_client_messages() -> None:
    inbox = Inbox()
    await inbox.put_client('{"type": "response.create"}')
    inbox.put_event(SpeechStarted("t", "i", 0.0))
    inbox.put_event(Ended())
    first, second, third = [await inbox.get() for _ in range(3)]
    assert isinstance(first, SpeechStarted) and isinstance(second, Ended)
    assert getattr(third, "raw", None) == '{"type": "response.create"}'


async def test_inbox_reader_waits_while_client_messages_pile_up() -> None:
    inbox = Inbox(max_client_bytes=100)
    await inbox.put_client("x" * 80)
    blocked = asyncio.create_task(inbox.put_client("y" * 80))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # over the limit: the reader stops reading
    await inbox.get()
    await asyncio.wait_for(blocked, 1)
    huge = asyncio.create_task(inbox.put_client("z" * 1000))  # alone, any size gets in
    await inbox.get()
    await asyncio.wait_for(huge, 1)


async def test_outbox_drops_queued_audio_of_a_stale_response() -> None:
    outbox = Outbox(limit=1_000_000)
    outbox.put(audio("resp_a"))
    outbox.put({"type": "response.done", "response_id": "resp_a"})
    outbox.put(audio("resp_b"))
    outbox.drop_audio("resp_a")
    got = [await outbox.get() for _ in range(2)]
    assert [(e["type"], e["response_id"]) for e in got if e] == [
        ("response.done", "resp_a"),
        ("response.output_audio.delta", "resp_b"),
    ]


async def test_outbox_says_when_a_client_is_over_its_limit() -> None:
    outbox = Outbox(limit=10_000)
    assert all(outbox.put(audio("resp_a", 1000)) for _ in range(7))
    assert not outbox.put(audio("resp_a", 4000))
    outbox.drop_audio("resp_a")
    assert outbox.put(audio("resp_b", 1000))  # dropping made room again
