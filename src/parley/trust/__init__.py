"""Trust: consent for cloned voices, speaker verification, watermarks, the audit log."""
