"""A tiny random-weight VITS / MMS-TTS of the real architecture, saved as ``save_pretrained``.

:func:`build_tiny_vits` writes what ``parley models pull facebook/mms-tts-eng`` would fetch
(config.json, model.safetensors, vocab.json, tokenizer_config.json) for a 16-wide, one-layer
``VitsModel`` with a character vocabulary like MMS's (``add_blank``, lower-cased, characters
outside the vocabulary dropped). Built in well under a second. :func:`build_vits_for_bench`
builds mms-tts-eng's own dimensions (``VitsConfig``'s defaults) the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# id 0 is the blank that add_blank puts between characters, as in MMS vocabularies.
CHARACTERS = ["_", " ", *"abcdefghijklmnopqrstuvwxyz", "'", "-"]
SAMPLE_RATE = 16000
# Frames of spectrogram (16 ms) per token, as a trained model's: random weights give durations
# from below one (which no speaking rate shortens, durations being rounded up) to hundreds.
FRAMES_PER_TOKEN = 6.0
# A trained MMS model speaks ~12 characters a second, 24 tokens with the blanks: 2.6 frames each.
FRAMES_PER_TOKEN_TRAINED = 2.6

_TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "ffn_dim": 32,
    "flow_size": 8,
    "spectrogram_bins": 17,
    "upsample_initial_channel": 16,
    "upsample_rates": [8, 8, 4],
    "upsample_kernel_sizes": [16, 16, 8],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "duration_predictor_filter_channels": 16,
    "duration_predictor_num_flows": 2,
    "prior_encoder_num_flows": 2,
    "prior_encoder_num_wavenet_layers": 1,
    "posterior_encoder_num_wavenet_layers": 1,
}


def build_tiny_vits(directory: Path, *, num_speakers: int = 1, seed: int = 0) -> Path:
    """Build and save the tiny test model in ``directory``; return the folder."""
    return _build(directory, _TINY, num_speakers, seed, FRAMES_PER_TOKEN)


def build_vits_for_bench(directory: Path) -> Path:
    """mms-tts-eng's architecture with random weights, for benchmarks' true compute cost.

    Its durations are set to a trained model's speaking rate, so a clause lasts as long as
    real speech of it would.
    """
    return _build(directory, {}, 1, 0, FRAMES_PER_TOKEN_TRAINED)


def _build(
    directory: Path, dims: dict[str, Any], num_speakers: int, seed: int, frames_per_token: float
) -> Path:
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate([*CHARACTERS, "<pad>", "<unk>"])}
    config = VitsConfig(
        **dims,
        vocab_size=len(vocab),
        num_speakers=num_speakers,
        speaker_embedding_size=8 if num_speakers > 1 else 0,
        sampling_rate=SAMPLE_RATE,
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = VitsModel(config).eval()
    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(
        str(vocab_file),
        pad_token="<pad>",
        unk_token="<unk>",
        language="eng",
        add_blank=True,
        normalize=True,
        phonemize=False,
    )
    _calibrate_durations(model, tokenizer, frames_per_token)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _calibrate_durations(model: Any, tokenizer: Any, frames_per_token: float) -> None:
    """Make the predicted durations ~``frames_per_token`` frames, still text-dependent.

    In reverse, the duration predictor's last flow is an elementwise affine map, ``(x - t) *
    exp(-s)``, whose output's first channel is the log-duration. Its input is measured on a
    sample text and ``t``, ``s`` are set for a mean of log(frames_per_token) and a spread of
    0.3 (a factor of ~1.35 either way).
    """
    import torch

    seen: list[Any] = []
    affine = model.duration_predictor.flows[0]
    hook = affine.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0]))
    noise, model.noise_scale_duration = model.noise_scale_duration, 0.0
    try:
        with torch.no_grad():
            model(**tokenizer("the quick brown fox jumps over the lazy dog", return_tensors="pt"))
    finally:
        hook.remove()
        model.noise_scale_duration = noise
    x = seen[0].flatten()
    k = 0.3 / float(x.std())
    with torch.no_grad():
        affine.log_scale[0] = -math.log(k)
        affine.translate[0] = float(x.mean()) - math.log(frames_per_token) / k
