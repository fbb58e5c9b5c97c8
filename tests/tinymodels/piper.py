"""A tiny random-weight Piper voice of the real architecture, exported as Piper exports voices.

:func:`build_tiny_piper` builds piper's own ``SynthesizerTrn`` (``piper.train.vits``) 16 wide
with one encoder layer, folds its weight norm and exports its ``infer`` to ONNX with the inputs,
outputs, opset and dynamic axes of ``piper.train.export_onnx`` (so ``sid``, when there is one,
has a fixed batch of one, as in published voices). Beside it goes the ``.onnx.json`` config
that ``parley models pull piper:VOICE`` would fetch, with piper's default espeak phoneme map.
Takes about two seconds (torch's TorchScript exporter needs the ``onnx`` package).
:func:`build_piper_for_bench` builds the dimensions piper trains by default (its "medium"
voices) the same way.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

SAMPLE_RATE = 22050
HOP_LENGTH = 256  # the product of the upsample rates
OPSET_VERSION = 15  # piper.train.export_onnx's
# Frames of spectrogram (11.6 ms) per phoneme id, as a trained voice's: random weights give
# durations from below one (which no length scale shortens, being rounded up) to hundreds.
FRAMES_PER_PHONEME = 4.0
# A trained voice speaks ~14 phonemes a second, 28 ids with the pads: ~3 frames each.
FRAMES_PER_PHONEME_TRAINED = 3.0

_TINY = {
    "inter_channels": 16,
    "hidden_channels": 16,
    "filter_channels": 32,
    "n_layers": 1,
    "resblock_kernel_sizes": (3,),
    "resblock_dilation_sizes": ((1, 2),),
    "upsample_initial_channel": 32,
}
# piper.train.vits.lightning.VitsModel's defaults.
_MEDIUM = {
    "inter_channels": 192,
    "hidden_channels": 192,
    "filter_channels": 768,
    "n_layers": 6,
    "resblock_kernel_sizes": (3, 5, 7),
    "resblock_dilation_sizes": ((1, 2), (2, 6), (3, 12)),
    "upsample_initial_channel": 256,
}


def build_tiny_piper(
    directory: Path, *, name: str = "en_US-tiny-medium", num_speakers: int = 1, seed: int = 0
) -> Path:
    """Build and export the tiny test voice into ``directory``; return its ``.onnx``."""
    return _build(directory, name, _TINY, num_speakers, seed, FRAMES_PER_PHONEME)


def build_piper_for_bench(directory: Path) -> Path:
    """A medium-quality Piper voice's architecture with random weights, for benchmarks.

    Its durations are set to a trained voice's speaking rate, so a clause lasts as long as
    real speech of it would.
    """
    return _build(directory, "en_US-bench-medium", _MEDIUM, 1, 0, FRAMES_PER_PHONEME_TRAINED)


def _build(
    directory: Path,
    name: str,
    dims: dict[str, Any],
    num_speakers: int,
    seed: int,
    frames_per_phoneme: float,
) -> Path:
    import torch
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # piper's training code still uses torch.jit.script and torch.nn.utils.weight_norm.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "`torch.nn.utils.weight_norm` is deprecated")
        from piper.train.vits.models import SynthesizerTrn

        model = SynthesizerTrn(
            **dims,
            n_vocab=256,
            spec_channels=513,  # only the training-time posterior encoder reads spectrograms
            segment_size=32,
            n_heads=2,
            kernel_size=3,
            p_dropout=0.0,
            resblock="2",
            upsample_rates=(8, 8, 4),
            upsample_kernel_sizes=(16, 16, 8),
            n_speakers=num_speakers,
            gin_channels=8 if num_speakers > 1 else 0,
            use_sdp=True,
        )
    model.eval()
    with torch.no_grad():
        model.dec.remove_weight_norm()
    _calibrate_durations(model, num_speakers, frames_per_phoneme)

    def infer_forward(text: Any, text_lengths: Any, scales: Any, sid: Any = None) -> Any:
        audio = model.infer(
            text,
            text_lengths,
            noise_scale=scales[0],
            length_scale=scales[1],
            noise_scale_w=scales[2],
            sid=sid,
        )[0]
        return audio.unsqueeze(1)

    model.forward = infer_forward  # type: ignore[method-assign]
    sequences = torch.randint(low=0, high=256, size=(1, 50), dtype=torch.long)
    lengths = torch.LongTensor([sequences.size(1)])
    sid = torch.LongTensor([0]) if num_speakers > 1 else None
    scales = torch.FloatTensor([0.667, 1.0, 0.8])
    onnx_path = directory / f"{name}.onnx"
    with warnings.catch_warnings():
        # The TorchScript exporter's own chatter about tracing a data-dependent graph.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        for message in ("You are using the legacy TorchScript", "The feature will be removed"):
            warnings.filterwarnings("ignore", message, DeprecationWarning)
        torch.onnx.export(
            model,
            (sequences, lengths, scales, sid),
            str(onnx_path),
            opset_version=OPSET_VERSION,
            input_names=["input", "input_lengths", "scales", "sid"],
            output_names=["output"],
            dynamic_axes={
                "input": {0: "batch_size", 1: "phonemes"},
                "input_lengths": {0: "batch_size"},
                "output": {0: "batch_size", 2: "time"},
            },
            dynamo=False,
        )
    speakers = {f"speaker_{chr(ord('a') + i)}": i for i in range(num_speakers)}
    config = {
        "dataset": name,
        "audio": {"sample_rate": SAMPLE_RATE, "quality": "medium"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": DEFAULT_PHONEME_ID_MAP,
        "num_symbols": 256,
        "num_speakers": num_speakers,
        "speaker_id_map": speakers if num_speakers > 1 else {},
        "hop_length": HOP_LENGTH,
        "piper_version": "1.0.0",
    }
    Path(f"{onnx_path}.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    return onnx_path


def _calibrate_durations(model: Any, num_speakers: int, frames_per_phoneme: float) -> None:
    """Make the predicted durations ~``frames_per_phoneme`` frames, still input-dependent.

    Untrained, the predictor's spline flows are the identity (their last layer starts at zero)
    and all durations would be equal: that layer gets small random weights, which spread the
    durations from below one frame to hundreds. In reverse, the predictor's last flow is an
    elementwise affine map, ``(x - m) * exp(-logs)``, whose first channel is the log-duration:
    its input is measured on random phonemes, and ``m``, ``logs`` are set for a mean of
    log(frames_per_phoneme) and a spread of 0.3.
    """
    import torch
    from piper.train.vits.modules import ConvFlow

    with torch.no_grad():
        for flow in model.dp.flows:
            if isinstance(flow, ConvFlow):
                torch.nn.init.normal_(flow.proj.weight, std=0.1)
    seen: list[Any] = []
    affine = model.dp.flows[0]
    hook = affine.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0]))
    text = torch.randint(low=0, high=160, size=(1, 60), dtype=torch.long)
    sid = torch.LongTensor([0]) if num_speakers > 1 else None
    try:
        with torch.no_grad():
            model.infer(text, torch.LongTensor([60]), sid=sid, noise_scale=0.0, noise_scale_w=0.0)
    finally:
        hook.remove()
    x = seen[0].flatten()
    k = 0.3 / float(x.std())
    with torch.no_grad():
        affine.logs[0] = -math.log(k)
        affine.m[0] = float(x.mean()) - math.log(frames_per_phoneme) / k
