"""A tiny random-weight Whisper of the real architecture, as a CTranslate2 conversion.

:func:`build_tiny_whisper` writes what ``parley models pull whisper:SIZE`` would fetch (model.bin,
config.json, vocabulary.json, tokenizer.json) for a 1-layer, 64-wide Whisper with the real
vocabulary layout: GPT-2 sized text vocabulary, then ``<|endoftext|>``, ``<|startoftranscript|>``,
99 language tokens, the task and control tokens and 1501 timestamp tokens, at the ids real
Whisper models use (English-only: 51864 tokens; multilingual: 51865). The tokenizer is built
offline with ``tokenizers`` (byte-level, no merges): its text is meaningless but it decodes.
"""

from __future__ import annotations

import json
from pathlib import Path

# Whisper's language tokens, in the order of its vocabulary (openai/whisper tokenizer.py).
_LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu "
    "ta no th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn "
    "bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn "
    "mt sa lb my bo tl mg as tt haw ln ha ba jw su"
)
LANGUAGES = tuple(_LANGUAGE_CODES.split())
assert len(LANGUAGES) == 99

_TIMESTAMPS = 1501
_D_MODEL = 64


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 characters a byte-level vocabulary is made of."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def special_tokens(*, multilingual: bool) -> list[str]:
    """The special tokens after the text vocabulary, in id order."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>" if multilingual else "<|nocaptions|>",
        "<|notimestamps|>",
        *(f"<|{i * 0.02:.2f}|>" for i in range(_TIMESTAMPS)),
    ]


def _tokenizer(*, multilingual: bool) -> object:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    text_size = 50257 if multilingual else 50256
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    # Multilingual Whisper's text vocabulary holds an empty token, which is how CTranslate2 tells
    # a multilingual model from an English-only one.
    fill = text_size - 1 if multilingual else text_size
    for a in chars:
        for b in chars:
            if len(vocab) == fill:
                break
            vocab.setdefault(a + b, len(vocab))
    if multilingual:
        vocab[""] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t in special_tokens(multilingual=multilingual)]
    )
    return tokenizer


# Real Whisper sizes: (d_model, encoder layers, decoder layers, heads, mel bands).
SIZES = {
    "tiny.en": (384, 4, 4, 6, 80),
    "base.en": (512, 6, 6, 8, 80),
    "small.en": (768, 12, 12, 12, 80),
    "medium.en": (1024, 24, 24, 16, 80),
    "large-v3": (1280, 32, 32, 20, 128),
    "turbo": (1280, 32, 4, 20, 128),
}


def build_whisper_for_bench(directory: Path, size: str = "tiny.en") -> Path:
    """A full-size Whisper architecture with random weights, for benchmarks' true compute cost.

    Whisper's own init (std 0.02), and the end-of-text row of the (tied) output embedding set
    to zero: its logit is then 0 against 51863 random ones, so every decode runs to the
    engine's token cap, a conservative cost (speech needs fewer tokens). English-only
    vocabulary for every size (large-v3 and turbo have 1-2 more tokens: no measurable cost).
    """
    d_model, encoder_layers, decoder_layers, heads, mels = SIZES[size]
    return build_tiny_whisper(
        directory,
        std=0.02,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        heads=heads,
        mel_bins=mels,
        silence_end_of_text=True,
    )


def build_tiny_whisper(
    directory: Path,
    *,
    multilingual: bool = False,
    seed: int = 0,
    std: float = 1.0,
    d_model: int = _D_MODEL,
    encoder_layers: int = 1,
    decoder_layers: int = 1,
    heads: int = 2,
    mel_bins: int = 80,
    silence_end_of_text: bool = False,
) -> Path:
    """Build, convert and save a tiny Whisper in ``directory``; return the model folder.

    The keyword dimensions default to the tiny test model; :func:`build_whisper_for_bench`
    passes real ones."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    tokenizer = _tokenizer(multilingual=multilingual)
    specials = special_tokens(multilingual=multilingual)
    vocab_size = tokenizer.get_vocab_size()  # type: ignore[attr-defined]
    eot = tokenizer.token_to_id("<|endoftext|>")  # type: ignore[attr-defined]
    sot = tokenizer.token_to_id("<|startoftranscript|>")  # type: ignore[attr-defined]
    assert vocab_size == (51865 if multilingual else 51864), vocab_size

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=mel_bins,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[220, eot],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Whisper's own init (std 0.02) gives a decoder that ignores its input at this size:
        # every recording would decode to the same tokens, and no test could tell them apart.
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "encoder.embed_positions" not in name:
                param.normal_(0.0, std)
        if silence_end_of_text:
            model.model.decoder.embed_tokens.weight[eot].zero_()
    if multilingual:
        model.generation_config.lang_to_id = {
            f"<|{code}|>": tokenizer.token_to_id(f"<|{code}|>")  # type: ignore[attr-defined]
            for code in LANGUAGES
        }
    hf_dir = directory / "hf"
    model.save_pretrained(hf_dir)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    ).save_pretrained(hf_dir)

    out = directory / "ct2"
    TransformersConverter(str(hf_dir)).convert(str(out), quantization=None, force=True)
    tokenizer.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    if multilingual:
        # The converter reads language ids from the tokenizer's additional special tokens, which
        # transformers 5 no longer exposes; CTranslate2 calls a model multilingual by this list.
        config_path = out / "config.json"
        ct2_config = json.loads(config_path.read_text())
        ct2_config["lang_ids"] = [
            tokenizer.token_to_id(f"<|{code}|>")  # type: ignore[attr-defined]
            for code in LANGUAGES
        ]
        config_path.write_text(json.dumps(ct2_config, indent=2))
    preprocessor = {
        "feature_size": mel_bins,
        "sampling_rate": 16000,
        "hop_length": 160,
        "n_fft": 400,
    }
    (out / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "chunk_length": 30}))
    return out
