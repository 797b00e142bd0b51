"""Segmentation losses built from config: ``build_loss(name, sigmoid=..., **kwargs)``.

Region-based outputs (BraTS TC/WT/ET) use ``sigmoid=True``; multi-class labels use softmax.
Wrappers: :class:`DeepSupervisionLoss` for deeply supervised outputs and
:class:`DistillationLoss` for knowledge distillation.
"""

from __future__ import annotations

from medseg.losses.boundary import BoundaryLoss, RegionBoundaryLoss, signed_distance_maps
from medseg.losses.ce import LabelSmoothingCELoss
from medseg.losses.deep_supervision import DeepSupervisionLoss, supervise_all_levels
from medseg.losses.distillation import DistillationLoss, kd_kl
from medseg.losses.factory import LOSS_NAMES, build_loss

__all__ = [
    "LOSS_NAMES",
    "BoundaryLoss",
    "DeepSupervisionLoss",
    "DistillationLoss",
    "LabelSmoothingCELoss",
    "RegionBoundaryLoss",
    "build_loss",
    "kd_kl",
    "signed_distance_maps",
    "supervise_all_levels",
]
