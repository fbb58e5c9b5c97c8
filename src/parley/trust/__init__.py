"""Trust: the audio watermark, the tamper-evident audit log, consent for custom voices.

Public surface: the watermark key, a streaming embedder, whole-buffer embed and blind detect;
the audit log, its signing key, its verification result and RFC 9162 inclusion checks; the
consent phrases and their check, the consent and voice stores, ``resolve_voice``, speaker
verification and the voice-cloning engine.
"""

from parley.trust.audit import AuditLog, AuditSigner, VerifyResult, verify_inclusion
from parley.trust.cloning import VoiceCloner, load_pocket_tts, voice_engine_unavailable
from parley.trust.consent import check_phrase, consent_phrase
from parley.trust.speaker import SpeakerVerifier, load_speaker_verifier
from parley.trust.voices import Consent, ConsentStore, CustomVoice, VoiceStore, resolve_voice
from parley.trust.watermark import Detection, Embedder, WatermarkKey, detect, embed

__all__ = [
    "AuditLog",
    "AuditSigner",
    "Consent",
    "ConsentStore",
    "CustomVoice",
    "Detection",
    "Embedder",
    "SpeakerVerifier",
    "VerifyResult",
    "VoiceCloner",
    "VoiceStore",
    "WatermarkKey",
    "check_phrase",
    "consent_phrase",
    "detect",
    "embed",
    "load_pocket_tts",
    "load_speaker_verifier",
    "resolve_voice",
    "verify_inclusion",
    "voice_engine_unavailable",
]
