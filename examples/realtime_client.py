"""Talk to ``parley serve`` with the official ``openai`` SDK: the only change is the base URL.

python examples/realtime_client.py --text "How do I start parley?" -o reply.wav
python examples/realtime_client.py --audio ../shared/speech/en_new_home_stars.wav -o reply.wav
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import wave

import numpy as np
import openai
import soundfile as sf
import soxr


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="say this to parley as a text message")
    source.add_argument("--audio", help="speak this recording to parley (any rate, mono)")
    parser.add_argument("-o", "--output", default="reply.wav")
    args = parser.parse_args()

    # A key from `parley keys create`; any string works against `parley serve --no-auth`.
    client = openai.AsyncOpenAI(
        base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "no-auth")
    )
    async with client.realtime.connect(model="parley") as conn:
        if args.text:
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": args.text}],
                }
            )
            await conn.response.create()
        else:
            # Server VAD ends the turn after 500 ms of silence and starts the reply itself.
            samples, rate = sf.read(args.audio, dtype="int16")
            pcm = soxr.resample(samples, rate, 24000).astype("<i2")
            pcm = np.concatenate([pcm, np.zeros(24000, "<i2")])  # a second of silence after
            for i in range(0, len(pcm), 480):  # 20 ms packets
                chunk = base64.b64encode(pcm[i : i + 480].tobytes()).decode()
                await conn.input_audio_buffer.append(audio=chunk)

        audio = bytearray()
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                print("you:   ", event.transcript)
            elif event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            elif event.type == "response.output_audio_transcript.done":
                print("parley:", event.transcript)
            elif event.type == "error":
                print("error: ", event.error.message)
            elif event.type == "response.done":
                break

    with wave.open(args.output, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(24000)
        out.writeframes(bytes(audio))
    print(f"reply: {args.output} ({len(audio) / 48000:.1f} s)")


if __name__ == "__main__":
    asyncio.run(main())
