"""From probabilities to the bundle's label values, and a voxel-wise uncertainty map.

Region models (BraTS TC/WT/ET, sigmoid) are thresholded at 0.5 and painted back into the
source convention's labels with :meth:`medseg.data.conventions.LabelConvention.from_regions`
(BraTS 2021 writes 0/1/2/4, BraTS 2023 0/1/2/3, MSD its own 0/1/2/3). Class models
(softmax) take the arg-max and write the checkpoint's ``label_values``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medseg.data.conventions import get_convention
from medseg.errors import InvalidValueError
from medseg.inference.model import InferenceModel
from medseg.inference.writer import label_dtype

__all__ = ["UNCERTAINTY_KINDS", "probabilities_to_labels", "uncertainty_map"]

UNCERTAINTY_KINDS = ("entropy", "variance")
_EPS = 1e-7


def probabilities_to_labels(probabilities: np.ndarray, model: InferenceModel, threshold: float = 0.5) -> np.ndarray:
    """Turn output probabilities into a label map with the bundle's values.

    Args:
        probabilities: ``(C, X, Y, Z)`` in the network's output order.
        model: gives the task, the convention and the label values.
        threshold: region threshold (``"regions"`` only).

    Returns:
        ``(X, Y, Z)`` uint8 (uint16 for values above 255) label map.
    """
    if probabilities.shape[0] != model.out_channels:
        raise InvalidValueError(f"expected {model.out_channels} probability channels {list(model.output_names)}, "
                         f"got shape {probabilities.shape}")
    dtype = label_dtype(model.label_values)
    if model.task == "regions":
        regions = probabilities[list(model.region_order)]
        return get_convention(str(model.convention)).from_regions(regions, threshold).astype(dtype)
    values = np.asarray(model.label_values, dtype=dtype)
    return values[np.argmax(probabilities, axis=0)]


def uncertainty_map(mean: torch.Tensor, variance: torch.Tensor | None, kind: str, task: str) -> torch.Tensor:
    """A voxel-wise uncertainty map ``(1, X, Y, Z)`` in ``[0, 1]`` (entropy) or ``[0, 0.25]`` (variance).

    Args:
        mean: probabilities ``(C, X, Y, Z)``, averaged over TTA passes.
        variance: per-channel variance across TTA passes ``(C, X, Y, Z)`` (``"variance"`` only).
        kind: ``"entropy"``: the predictive entropy of ``mean``, normalised by its maximum
            (``log C`` for softmax classes; for sigmoid regions, the mean binary entropy over
            regions divided by ``log 2``). ``"variance"``: the variance across TTA passes,
            averaged over channels.
        task: ``"regions"`` or ``"multiclass"``.

    Returns:
        float32 tensor ``(1, X, Y, Z)``.
    """
    if kind == "variance":
        if variance is None:
            raise InvalidValueError("the 'variance' uncertainty needs TTA passes (--tta)")
        return variance.mean(dim=0, keepdim=True).float()
    if kind != "entropy":
        raise InvalidValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {kind!r}")
    p = mean.float().clamp(_EPS, 1 - _EPS)
    if task == "regions":
        binary = -(p * torch.log(p) + (1 - p) * torch.log(1 - p))
        return (binary.mean(dim=0, keepdim=True) / math.log(2)).clamp(0, 1)
    channels = max(int(mean.shape[0]), 2)
    return (-(p * torch.log(p)).sum(dim=0, keepdim=True) / math.log(channels)).clamp(0, 1)
