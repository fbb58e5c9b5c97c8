"""Audio: PCM frames, G.711 codecs, streaming resampling, file decode/encode, base64."""

from parley.audio.frames import Frame, float32_to_int16, int16_to_float32

__all__ = ["Frame", "float32_to_int16", "int16_to_float32"]
