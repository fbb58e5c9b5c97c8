"""A speaker verifier that takes every recording for one speaker (satisfies SpeakerVerifier)."""

from __future__ import annotations

import numpy as np

from parley.audio.frames import Frame
from parley.trust.speaker import Embedding


class OneSpeaker:
    name = "one-speaker"
    threshold = 0.5

    def embed(self, audio: Frame) -> Embedding:
        return np.ones(4, dtype=np.float32) / 2
