"""Audio: PCM frames, G.711 codecs, streaming resampling, file decode/encode, base64."""

from parley.audio.files import OUTPUT_FORMATS, decode_audio, encode_audio, read_audio, write_audio
from parley.audio.formats import (
    G711_ALAW,
    G711_ULAW,
    PCM16_24K,
    Encoding,
    WireFormat,
    b64decode_audio,
    b64encode_audio,
    decode_wire,
    encode_wire,
    parse_wire_format,
)
from parley.audio.frames import Frame, float32_to_int16, int16_to_float32
from parley.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from parley.audio.resample import StreamResampler, resample

__all__ = [
    "G711_ALAW",
    "G711_ULAW",
    "OUTPUT_FORMATS",
    "PCM16_24K",
    "Encoding",
    "Frame",
    "StreamResampler",
    "WireFormat",
    "alaw_decode",
    "alaw_encode",
    "b64decode_audio",
    "b64encode_audio",
    "decode_audio",
    "decode_wire",
    "encode_audio",
    "encode_wire",
    "float32_to_int16",
    "int16_to_float32",
    "parse_wire_format",
    "read_audio",
    "resample",
    "ulaw_decode",
    "ulaw_encode",
    "write_audio",
]
