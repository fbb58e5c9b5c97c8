"""``parley serve --config`` with the neural engines (Whisper and VITS) on the CPU.

The tiny random-weight models are built here and named in a TOML file, as an operator names
real ones; the server loads them through the engines' real loading code, warms them up, and
serves a Realtime session. Their words are meaningless: the test checks that speech in gives a
transcript, that a reply is spoken, and that both engines batched through the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parley.bench.clips import Clip
from tests.server.conftest import Server, start_server, stop_server
from tests.server.realtime_client import connect, decode_audio, speech_24k
from tests.tinymodels.vits import build_tiny_vits
from tests.tinymodels.whisper import build_tiny_whisper


@pytest.fixture(scope="module")
def neural_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-neural")
    whisper = build_tiny_whisper(tmp / "whisper")
    vits = build_tiny_vits(tmp / "vits")
    config = tmp / "neural.toml"
    config.write_text(
        f"""
[asr]
engine = "whisper"
options = {{ model = "{whisper}", device = "cpu", max_new_tokens = 8, max_batch_size = 8 }}

[tts]
engine = "vits"
options = {{ model = "{vits}", device = "auto", max_batch_size = 8 }}

[llm]
engine = "faq"
"""
    )
    server = start_server(tmp, "--config", str(config), env={"HF_HUB_OFFLINE": "1"})
    yield server
    stop_server(server)


async def _get(server: Server, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(f"http://127.0.0.1:{server.port}{path}")


async def _batches(server: Server) -> dict[str, float]:
    text = (await _get(server, "/metrics")).text
    return {
        sample.labels["engine"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "parley_batch_size_count"
    }


async def test_serve_with_neural_engines(neural_server: Server, clips: dict[str, Clip]) -> None:
    health = (await _get(neural_server, "/healthz")).json()
    assert health["engines"]["asr"] == "whisper"
    assert health["engines"]["tts"] == "vits"
    async with connect(neural_server) as c:
        await c.append(speech_24k(clips["en_goforward_raw"].path))
        await c.until("input_audio_buffer.speech_stopped")
        done = await c.until("conversation.item.input_audio_transcription.completed", 60)
        assert done["transcript"].strip()  # random words, but words: a reply follows
        response = await c.until("response.done", 60)
        assert response["response"]["status"] == "completed"
        audio = decode_audio(c.events)
        assert len(audio) > 2400 and np.abs(audio.astype(np.int32)).max() > 0
    batches = await _batches(neural_server)
    assert batches.get("whisper", 0) >= 1
    assert batches.get("vits", 0) >= 1
