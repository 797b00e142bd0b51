"""Build a loss from config by name: ``build_loss("dice_focal", sigmoid=True)``.

``sigmoid=True`` is for region-based outputs (BraTS TC/WT/ET): one channel per region,
targets ``(B, C, *S)`` with one binary mask per channel. ``sigmoid=False`` (the default)
is for mutually exclusive classes: softmax over channels, targets ``(B, 1, *S)`` holding
class indices (one-hot encoded inside the loss).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, TverskyLoss
from torch import nn

from medseg.errors import InvalidTypeError, InvalidValueError
from medseg.losses.boundary import BoundaryLoss, RegionBoundaryLoss
from medseg.losses.ce import LabelSmoothingCELoss

__all__ = ["LOSS_NAMES", "build_loss"]


def _activation(sigmoid: bool) -> dict[str, bool]:
    """MONAI's activation and target-encoding flags for the two label conventions."""
    return {"sigmoid": True} if sigmoid else {"softmax": True, "to_onehot_y": True}


def _dice_focal(sigmoid: bool = False, **kwargs: Any) -> nn.Module:
    return DiceFocalLoss(**_activation(sigmoid), **kwargs)


def _dice_ce(sigmoid: bool = False, **kwargs: Any) -> nn.Module:
    return DiceCELoss(**_activation(sigmoid), **kwargs)


def _tversky(sigmoid: bool = False, alpha: float = 0.3, beta: float = 0.7, **kwargs: Any) -> nn.Module:
    # alpha weighs false positives, beta false negatives; beta > alpha favours recall of
    # small structures (Salehi et al., "Tversky loss function", MLMI 2017).
    return TverskyLoss(**_activation(sigmoid), alpha=alpha, beta=beta, **kwargs)


def _ce_label_smoothing(sigmoid: bool = False, smoothing: float = 0.1, **kwargs: Any) -> nn.Module:
    return LabelSmoothingCELoss(smoothing=smoothing, sigmoid=sigmoid, **kwargs)


def _boundary(
    sigmoid: bool = False,
    region: str = "dice",
    alpha_start: float = 0.01,
    alpha_step: float = 0.01,
    alpha_max: float = 0.5,
    strategy: str = "rebalance",
    include_background: bool = False,
    spacing: tuple[float, ...] | None = None,
) -> nn.Module:
    # The boundary term alone has no region signal and can collapse to empty predictions
    # (Kervadec et al. 2021, sec. 3), so it always comes with a region loss here.
    if region == "dice":
        region_loss: nn.Module = DiceLoss(
            **_activation(sigmoid), include_background=sigmoid or include_background
        )
    else:
        region_loss = build_loss(region, sigmoid=sigmoid)
    return RegionBoundaryLoss(
        region_loss,
        BoundaryLoss(sigmoid=sigmoid, include_background=include_background, spacing=spacing),
        alpha_start=alpha_start,
        alpha_step=alpha_step,
        alpha_max=alpha_max,
        strategy=strategy,
    )


_BUILDERS: dict[str, tuple[Callable[..., nn.Module], type | None]] = {
    "dice_focal": (_dice_focal, DiceFocalLoss),
    "dice_ce": (_dice_ce, DiceCELoss),
    "tversky": (_tversky, TverskyLoss),
    "boundary": (_boundary, None),
    "ce_label_smoothing": (_ce_label_smoothing, LabelSmoothingCELoss),
}
LOSS_NAMES: tuple[str, ...] = tuple(_BUILDERS)

# Set by build_loss from `sigmoid`; a config that sets them too would contradict it.
_DERIVED = {"sigmoid", "softmax", "to_onehot_y", "other_act"}


def build_loss(name: str = "dice_focal", *, sigmoid: bool = False, **kwargs: Any) -> nn.Module:
    """Build the loss registered under ``name``.

    Args:
        name: one of ``dice_focal`` (default; MONAI ``DiceFocalLoss``), ``dice_ce``
            (MONAI ``DiceCELoss``), ``tversky`` (MONAI ``TverskyLoss``, alpha 0.3 / beta 0.7),
            ``boundary`` (Dice + Kervadec boundary loss with a rising weight; see
            :class:`~medseg.losses.boundary.RegionBoundaryLoss`), ``ce_label_smoothing``.
        sigmoid: region-based outputs with per-channel sigmoid (targets ``(B, C, *S)``)
            if True; softmax over classes (targets ``(B, 1, *S)`` of indices) if False.
        **kwargs: further arguments of the loss, e.g. ``lambda_focal``, ``include_background``,
            ``label_smoothing`` (``dice_ce``), ``smoothing`` (``ce_label_smoothing``),
            ``alpha_start`` / ``alpha_step`` (``boundary``).

    Returns:
        A module called as ``loss(logits, target)`` returning a scalar.

    Raises:
        ValueError: unknown name (the valid names are listed).
        TypeError: an argument the loss does not take, or one derived from ``sigmoid``.
    """
    if name not in _BUILDERS:
        raise InvalidValueError(f"unknown loss {name!r}; valid names are: {', '.join(LOSS_NAMES)}")
    if not isinstance(sigmoid, bool):
        raise InvalidTypeError(f"`sigmoid` must be a bool, got {type(sigmoid).__name__}: {sigmoid!r}")
    clashing = sorted(_DERIVED & set(kwargs))
    if clashing:
        raise InvalidTypeError(
            f"loss {name!r}: {clashing} are set from `sigmoid`={sigmoid}; remove them from the config"
        )
    builder, wrapped = _BUILDERS[name]
    accepted = {p for p in inspect.signature(builder).parameters if p not in ("sigmoid", "kwargs")}
    if wrapped is not None:
        accepted |= set(inspect.signature(wrapped).parameters) - {"self"} - _DERIVED
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise InvalidTypeError(
            f"loss {name!r} got unknown argument(s) {unknown}; it accepts: {', '.join(sorted(accepted))}"
        )
    return builder(sigmoid=sigmoid, **kwargs)
