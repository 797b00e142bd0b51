"""Cross-entropy with label smoothing, for class-index or region targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import InvalidValueError

__all__ = ["LabelSmoothingCELoss"]


class LabelSmoothingCELoss(nn.Module):
    """Cross-entropy against smoothed labels.

    Label smoothing after Szegedy et al., "Rethinking the Inception Architecture for
    Computer Vision", CVPR 2016.

    With softmax, the one-hot target becomes ``(1 - eps) * onehot + eps / C``
    (``torch.nn.CrossEntropyLoss(label_smoothing=eps)``). With sigmoid (region targets),
    each binary target becomes ``(1 - eps) * y + eps / 2`` under binary cross-entropy.

    Args:
        smoothing: ``eps`` in ``[0, 1)``. Defaults to 0.1.
        sigmoid: region targets ``(B, C, *S)`` with per-channel sigmoid if True; a
            class-index target ``(B, 1, *S)`` with softmax if False (default).
        weight: optional per-class weights ``(C,)`` (softmax only).

    Shapes:
        ``input`` logits ``(B, C, *S)``, ``target`` as above -> scalar (mean over voxels).
    """

    def __init__(
        self, smoothing: float = 0.1, sigmoid: bool = False, weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise InvalidValueError(f"`smoothing` must be in [0, 1), got {smoothing}")
        if sigmoid and weight is not None:
            raise InvalidValueError("`weight` is only supported with softmax (sigmoid=False)")
        self.smoothing = smoothing
        self.sigmoid = sigmoid
        self.register_buffer(
            "weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the smoothed cross-entropy of logits ``input`` against ``target``."""
        if self.sigmoid:
            if target.shape != input.shape:
                raise InvalidValueError(
                    f"sigmoid targets must match the input shape {tuple(input.shape)}, "
                    f"got {tuple(target.shape)}"
                )
            soft = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
            return F.binary_cross_entropy_with_logits(input, soft)
        if target.dim() != input.dim() or target.shape[1] != 1:
            raise InvalidValueError(
                f"softmax targets must be a (B, 1, *S) class-index map for input {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        return F.cross_entropy(input, target[:, 0].long(), weight=self.weight, label_smoothing=self.smoothing)
