"""Dictionary keys shared by every pipeline, and the one image/label interpolation pair."""

from __future__ import annotations

IMAGE = "image"
LABEL = "label"
PRED = "pred"
CASE_ID = "case_id"
CHANNEL_PERMUTATION = "channel_permutation"

#: Interpolation used when resampling, per key: images are smooth, labels are categorical.
INTERPOLATION: dict[str, str] = {IMAGE: "bilinear", LABEL: "nearest"}


def modes(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The interpolation mode of each key, in order, e.g. ``("bilinear", "nearest")``."""
    return tuple(INTERPOLATION[k] for k in keys)
