"""Deterministic synthetic datasets that look enough like BraTS and ISIC to need learning."""
