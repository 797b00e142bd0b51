"""Deterministic synthetic datasets that look enough like BraTS, ISIC and abdominal CT to need learning."""
