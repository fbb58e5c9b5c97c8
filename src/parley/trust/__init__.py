"""Trust: the audio watermark and the tamper-evident audit log (consent joins later).

Public surface: the watermark key, a streaming embedder, whole-buffer embed and blind detect;
the audit log, its signing key, its verification result and RFC 9162 inclusion checks.
"""

from parley.trust.audit import AuditLog, AuditSigner, VerifyResult, verify_inclusion
from parley.trust.watermark import Detection, Embedder, WatermarkKey, detect, embed

__all__ = [
    "AuditLog",
    "AuditSigner",
    "Detection",
    "Embedder",
    "VerifyResult",
    "WatermarkKey",
    "detect",
    "embed",
    "verify_inclusion",
]
