"""Deep-supervision loss: MONAI's, also accepting DynUNet's stacked outputs and passing on the epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss as _MonaiDeepSupervisionLoss
from torch import nn

from medseg.errors import InvalidValueError

__all__ = ["DeepSupervisionLoss", "supervise_all_levels"]


class DeepSupervisionLoss(_MonaiDeepSupervisionLoss):
    """Weighted sum of a base loss over the outputs of a deeply supervised network.

    Lee et al., "Deeply-Supervised Nets", AISTATS 2015; the weights halve per level by
    default as in nnU-Net (Isensee et al. 2021). Accepts both conventions used in medseg:

    - a list or tuple of logits, full resolution first, each at its own resolution
      (medseg's ``attention_unet3d``); the target is resized by nearest neighbour;
    - MONAI ``DynUNet``'s stacked tensor ``(B, N, C, *S)``, all at full resolution.

    A single ``(B, C, *S)`` tensor (eval mode, or no deep supervision) gets the base loss.

    Args:
        base: the loss for each output, e.g. ``build_loss("dice_focal")``.
        weights: one weight per output, full resolution first. ``None`` uses ``weight_mode``.
        weight_mode: MONAI's ``"exp"`` (1, 0.5, 0.25, ...; default), ``"same"`` or ``"two"``.
    """

    def __init__(
        self, base: nn.Module, weights: Sequence[float] | None = None, weight_mode: str = "exp"
    ) -> None:
        if weight_mode not in ("exp", "same", "two"):
            raise InvalidValueError(f"`weight_mode` must be 'exp', 'same' or 'two', got {weight_mode!r}")
        if weights is not None and (len(weights) == 0 or any(w < 0 for w in weights)):
            raise InvalidValueError(f"`weights` must be a non-empty list of non-negative numbers, got {weights}")
        super().__init__(
            base, weight_mode=weight_mode, weights=list(weights) if weights is not None else None
        )

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to a scheduled base loss (e.g. the boundary loss)."""
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one output; the target is resized by nearest neighbour when the sizes differ."""
        if input.shape[2:] != target.shape[2:]:
            # interpolate() refuses integer tensors; class indices survive a float round trip.
            target = F.interpolate(target.float(), size=input.shape[2:], mode=self.interp_mode).to(
                target.dtype
            )
        return self.loss(input, target)

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the weighted loss over every output in ``input`` against ``target`` ``(B, C_t, *S)``."""
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = list(torch.unbind(input, dim=1))
        if isinstance(input, (list, tuple)) and self.weights is not None and len(self.weights) != len(input):
            raise InvalidValueError(
                f"`weights` has {len(self.weights)} entries but the network returned {len(input)} outputs"
            )
        return super().forward(input, target)


def supervise_all_levels(loss: nn.Module, deep_supervision: bool) -> nn.Module:
    """``loss`` wrapped in :class:`DeepSupervisionLoss` when the network is deeply supervised.

    The bundles' ``deep_supervision`` id sets both the network's output and this wrapper, so
    one setting (``--set deep_supervision=true``) switches the two together.
    """
    if not isinstance(deep_supervision, bool):
        raise InvalidValueError(f"`deep_supervision` must be true or false, got {deep_supervision!r}")
    return DeepSupervisionLoss(loss) if deep_supervision else loss
