"""Argument and input checks shared by medseg's own networks; messages state the rule and the value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medseg.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "check_channels",
    "check_dropout",
    "check_input_divisible",
    "check_levels",
    "check_odd_kernel",
    "check_spatial_dims",
]


def check_spatial_dims(spatial_dims: object, allowed: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is one of ``allowed``."""
    if isinstance(spatial_dims, bool) or spatial_dims not in tuple(allowed):
        raise InvalidValueError(f"`spatial_dims` must be one of {tuple(allowed)}, got {spatial_dims!r}")


def check_channels(**channels: object) -> None:
    """Raise ``TypeError``/``ValueError`` unless every keyword is a positive integer.

    Example: ``check_channels(in_channels=4, out_channels=3)``.
    """
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidTypeError(f"`{name}` must be an int, got {type(value).__name__}: {value!r}")
        if value < 1:
            raise InvalidValueError(f"`{name}` must be >= 1, got {value}")


def check_levels(
    features: Sequence[int],
    strides: Sequence[int] | None,
    features_name: str = "features",
    per_axis: bool = False,
) -> tuple[tuple[int, ...], tuple]:
    """Check per-level widths and the strides between levels; return both as tuples.

    Args:
        features: channels per level, at least 2 positive integers.
        strides: ``len(features) - 1`` positive integer strides; ``None`` means all 2.
        features_name: the argument's name in messages (``"features"``, ``"channels"``).
        per_axis: also accept a sequence of per-axis strides for a level, e.g. ``(2, 2, 1)``
            (MONAI's ``UNet`` takes them for anisotropic volumes).

    Raises:
        ValueError: e.g. "`strides` needs len(features)-1 = 3 entries, got 2: (2, 2)".
    """
    features = tuple(features)
    if len(features) < 2 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features):
        raise InvalidValueError(f"`{features_name}` needs at least 2 positive integers, got {features}")
    strides = tuple(strides) if strides is not None else (2,) * (len(features) - 1)
    if len(strides) != len(features) - 1:
        raise InvalidValueError(
            f"`strides` needs len({features_name})-1 = {len(features) - 1} entries, "
            f"got {len(strides)}: {strides}"
        )

    def positive(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= 1

    def valid(stride: object) -> bool:
        if per_axis and isinstance(stride, (list, tuple)):
            return len(stride) > 0 and all(positive(v) for v in stride)
        return positive(stride)

    if not all(valid(s) for s in strides):
        kind = "positive integers or per-axis sequences of them" if per_axis else "positive integers"
        raise InvalidValueError(f"`strides` must be {kind}, got {strides}")
    return features, strides


def check_odd_kernel(kernel_size: object, name: str = "kernel_size") -> None:
    """Raise ``ValueError`` unless ``kernel_size`` is a positive odd integer (so "same" padding exists)."""
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise InvalidValueError(f"`{name}` must be a positive odd integer, got {kernel_size!r}")


def check_dropout(dropout: object) -> None:
    """Raise ``ValueError`` unless ``dropout`` is a probability in ``[0, 1)``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InvalidValueError(f"`dropout` must be in [0, 1), got {dropout!r}")


def check_input_divisible(x: torch.Tensor, strides: Sequence[int], spatial_dims: int) -> None:
    """Check that ``x`` is ``(B, C, *S)`` with ``spatial_dims`` axes, each divisible by ``prod(strides)``.

    Raises:
        ValueError: naming the shape received and the required divisor.
    """
    if x.dim() != spatial_dims + 2:
        raise InvalidValueError(
            f"input must be (B, C, {', '.join('HWD'[:spatial_dims])}) with {spatial_dims + 2} dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    factor = math.prod(strides)
    spatial = tuple(int(s) for s in x.shape[2:])
    if any(s % factor for s in spatial):
        raise InvalidValueError(
            f"input spatial shape {spatial} must be divisible by {factor} "
            f"(the product of the strides {tuple(strides)})"
        )
