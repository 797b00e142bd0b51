"""Boundary loss on signed distance maps (Kervadec et al.), and its scheduled combination with a region loss.

MONAI has no distance-map boundary loss (its ``HausdorffDTLoss`` weights squared errors by
distance transforms, a different objective), so it is written here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import nn

from medseg.errors import InvalidValueError

__all__ = ["BoundaryLoss", "RegionBoundaryLoss", "signed_distance_maps", "target_to_onehot"]


def signed_distance_maps(masks: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed Euclidean distance to each mask's boundary: negative inside, positive outside.

    Follows Kervadec et al.'s ``one_hot2dist``: ``phi = d(outside) * outside - (d(inside) - 1) * inside``,
    so voxels on the inner boundary have 0 and a channel with no foreground (or no
    background) has all zeros, which leaves the loss of that channel at 0.

    Args:
        masks: boolean array ``(B, C, *S)``, one binary mask per channel.
        spacing: voxel spacing per spatial axis (``len(S)`` values); ``None`` for unit spacing.

    Returns:
        ``float32`` array ``(B, C, *S)``.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim < 3:
        raise InvalidValueError(
            f"`masks` must be (B, C, *spatial) with at least one spatial axis, got shape {masks.shape}"
        )
    if spacing is not None and len(spacing) != masks.ndim - 2:
        raise InvalidValueError(
            f"`spacing` needs {masks.ndim - 2} values (one per spatial axis), got {tuple(spacing)}"
        )
    out = np.zeros(masks.shape, dtype=np.float32)
    for b in range(masks.shape[0]):
        for c in range(masks.shape[1]):
            pos = masks[b, c]
            if pos.any() and not pos.all():
                neg = ~pos
                out[b, c] = (
                    distance_transform_edt(neg, sampling=spacing) * neg
                    - (distance_transform_edt(pos, sampling=spacing) - 1) * pos
                )
    return out


def target_to_onehot(target: torch.Tensor, num_channels: int, sigmoid: bool) -> torch.Tensor:
    """Bring a target to one binary mask per output channel, ``(B, C, *S)``.

    Args:
        target: ``(B, 1, *S)`` class indices (softmax) or ``(B, C, *S)`` region masks (sigmoid).
        num_channels: the number of output channels ``C``.
        sigmoid: whether the target holds region masks already.
    """
    if sigmoid:
        if target.shape[1] != num_channels:
            raise InvalidValueError(
                f"sigmoid targets need one mask per output channel ({num_channels}), "
                f"got shape {tuple(target.shape)}"
            )
        return target > 0.5
    if target.shape[1] != 1:
        raise InvalidValueError(
            f"softmax targets must be a (B, 1, *S) class-index map, got shape {tuple(target.shape)}"
        )
    index = target[:, 0].long()
    return F.one_hot(index, num_channels).movedim(-1, 1).bool()


class BoundaryLoss(nn.Module):
    """Boundary loss ``mean(p * phi)`` with ``phi`` the signed distance map of the target.

    Kervadec et al., "Boundary loss for highly unbalanced segmentation", MIDL 2019 / Medical
    Image Analysis 67, 2021. The loss is lowest (negative) when the predicted probabilities
    cover exactly the target; probability outside the target is penalised in proportion
    to its distance from the boundary. Distance maps are computed on the CPU with SciPy.

    Args:
        sigmoid: region targets ``(B, C, *S)`` with per-channel sigmoid probabilities
            (BraTS TC/WT/ET) if True; a class-index target ``(B, 1, *S)`` with softmax if False.
        include_background: with softmax, include channel 0. Defaults to False, as in the paper.
        spacing: voxel spacing for the distance maps; ``None`` for unit spacing.

    Shapes:
        ``input`` logits ``(B, C, *S)``, ``target`` as above -> scalar.
    """

    def __init__(
        self, sigmoid: bool = False, include_background: bool = False, spacing: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.sigmoid = sigmoid
        self.include_background = include_background
        self.spacing = tuple(spacing) if spacing is not None else None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return ``mean(probs * phi)`` over batch, foreground channels and voxels."""
        if input.dim() != target.dim():
            raise InvalidValueError(
                f"input {tuple(input.shape)} and target {tuple(target.shape)} need the same rank"
            )
        probs = torch.sigmoid(input) if self.sigmoid else torch.softmax(input, dim=1)
        masks = target_to_onehot(target, input.shape[1], self.sigmoid)
        phi = torch.from_numpy(signed_distance_maps(masks.detach().cpu().numpy(), self.spacing))
        phi = phi.to(device=input.device, dtype=probs.dtype)
        if not self.sigmoid and not self.include_background:
            probs, phi = probs[:, 1:], phi[:, 1:]
        return (probs * phi).mean()


class RegionBoundaryLoss(nn.Module):
    """A region loss plus the boundary loss with a weight that rises each epoch.

    Kervadec et al. (2021) start the boundary term at a small weight and raise it by a fixed
    step per epoch. With ``strategy="rebalance"`` the loss is
    ``(1 - w) * region + w * boundary``; with ``"increase"`` it is ``region + w * boundary``;
    ``w = min(alpha_start + alpha_step * (epoch - 1), alpha_max)``.

    Args:
        region: the region loss, e.g. MONAI ``DiceLoss``; called as ``region(input, target)``.
        boundary: the :class:`BoundaryLoss`.
        alpha_start: boundary weight at epoch 1. Defaults to 0.01.
        alpha_step: increase per epoch. Defaults to 0.01.
        alpha_max: upper bound on the weight, in ``[0, 1]`` for ``"rebalance"``. Defaults to 0.5.
        strategy: ``"rebalance"`` (default) or ``"increase"``.

    Call :meth:`set_epoch` with the 1-based epoch (ignite's ``engine.state.epoch``) at each
    epoch start, e.g. through :class:`medseg.transfer.handlers.LossEpochHandler`.
    """

    def __init__(
        self,
        region: nn.Module,
        boundary: BoundaryLoss,
        alpha_start: float = 0.01,
        alpha_step: float = 0.01,
        alpha_max: float = 0.5,
        strategy: str = "rebalance",
    ) -> None:
        super().__init__()
        if strategy not in ("rebalance", "increase"):
            raise InvalidValueError(f"`strategy` must be 'rebalance' or 'increase', got {strategy!r}")
        if alpha_start < 0 or alpha_step < 0 or alpha_max < alpha_start:
            raise InvalidValueError(
                "`alpha_start` and `alpha_step` must be >= 0 and `alpha_max` >= `alpha_start`, got "
                f"alpha_start={alpha_start}, alpha_step={alpha_step}, alpha_max={alpha_max}"
            )
        if strategy == "rebalance" and alpha_max > 1:
            raise InvalidValueError(f"with strategy 'rebalance', `alpha_max` must be <= 1, got {alpha_max}")
        self.region = region
        self.boundary = boundary
        self.alpha_start = alpha_start
        self.alpha_step = alpha_step
        self.alpha_max = alpha_max
        self.strategy = strategy
        self.epoch = 1

    @property
    def alpha(self) -> float:
        """The boundary weight at the current epoch."""
        return min(self.alpha_start + self.alpha_step * (self.epoch - 1), self.alpha_max)

    def set_epoch(self, epoch: int) -> None:
        """Set the 1-based epoch that the boundary weight is computed for."""
        if epoch < 1:
            raise InvalidValueError(f"`epoch` is 1-based, got {epoch}")
        self.epoch = int(epoch)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the region and boundary losses for logits ``(B, C, *S)``."""
        w = self.alpha
        region_weight = 1.0 - w if self.strategy == "rebalance" else 1.0
        return region_weight * self.region(input, target) + w * self.boundary(input, target)
