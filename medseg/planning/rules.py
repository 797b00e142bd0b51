"""The data-derived choices of a plan: target spacing, normalisation, cropping, interpolation.

Each rule is nnU-Net's (``ExperimentPlanner.determine_fullres_target_spacing``,
``determine_normalization_scheme_and_whether_mask_is_used_for_norm``, and its resampling
functions), applied to a dataset fingerprint (:mod:`medseg.planning.fingerprint`):

* **Target spacing**: the median spacing per axis. When one axis's median is more than
  :data:`ANISOTROPY_RATIO` (3) times coarser than every other axis's, that axis takes the 10th
  percentile of its spacings instead (never finer than the other axes), so thin-slice cases
  are not thrown away by resampling everyone to the typical thick slices.
* **Normalisation** per channel: ``"ct"`` when the channel is named CT in ``dataset.json``
  (clip to the dataset's foreground 0.5 and 99.5 percentiles, then z-score with the dataset's
  foreground mean and std); otherwise ``"zscore_nonzero"`` (per image, over the non-zero
  region) when cropping to the non-zero box removes more than a quarter of the typical volume,
  else ``"zscore"`` (per image, over the whole image).
* **Cropping**: to the non-zero box when it removes anything on the typical (median) case.
* **Interpolation**: images with a cubic spline (order 3), labels with nearest neighbour; when
  the data or the target spacing is anisotropic, the coarse axis is interpolated separately
  with nearest neighbour (order 0), as nnU-Net does, so thick slices are not blurred into
  their neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import InvalidValueError

__all__ = [
    "ANISOTROPY_RATIO",
    "NORMALIZATIONS",
    "anisotropic_axis",
    "crop_to_nonzero",
    "interpolation",
    "normalization",
    "resampled_shapes",
    "target_spacing",
]

ANISOTROPY_RATIO = 3.0
NONZERO_MASK_FRACTION = 0.75  # crop keeps less than this of the median volume: normalise over the non-zero region
COARSE_AXIS_PERCENTILE = 10
NORMALIZATIONS = ("ct", "zscore", "zscore_nonzero")


def _array(values: Sequence[Sequence[float]], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != 3 or not np.all(np.isfinite(array)):
        raise InvalidValueError(f"{what} must be one finite (x, y, z) triple per case, got shape {array.shape}")
    return array


def anisotropic_axis(spacing: Sequence[float], ratio: float = ANISOTROPY_RATIO) -> int | None:
    """The axis more than ``ratio`` times coarser than every other axis, or ``None``."""
    values = [float(s) for s in spacing]
    worst = int(np.argmax(values))
    others = [s for a, s in enumerate(values) if a != worst]
    return worst if values[worst] > ratio * max(others) else None


def target_spacing(spacings: Sequence[Sequence[float]]) -> tuple[list[float], int | None]:
    """The spacing every case is resampled to, and the anisotropic axis of the data (or ``None``).

    Args:
        spacings: one ``(x, y, z)`` spacing per case, in mm, RAS axis order.

    Returns:
        ``(target, axis)``: the target spacing, and the axis whose median is more than 3x
        coarser than the others (which then takes its 10th percentile), else ``None``.
    """
    array = _array(spacings, "spacings")
    target = np.median(array, axis=0)
    axis = anisotropic_axis(target)
    if axis is not None:
        others = max(target[a] for a in range(3) if a != axis)
        target[axis] = max(float(np.percentile(array[:, axis], COARSE_AXIS_PERCENTILE)), others)
    return [round(float(t), 6) for t in target], axis


def resampled_shapes(shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float]],
                     target: Sequence[float]) -> np.ndarray:
    """Each case's shape at the target spacing (same physical extent), as an ``(N, 3)`` int array."""
    size = _array(shapes, "shapes")
    step = _array(spacings, "spacings")
    return np.maximum(1, np.round(size * step / np.asarray(target, dtype=np.float64))).astype(np.int64)


def crop_to_nonzero(nonzero_fractions: Sequence[float]) -> bool:
    """Whether to crop to the non-zero box: it removes something on the median case."""
    return bool(np.median(np.asarray(nonzero_fractions, dtype=np.float64)) < 1.0)


def normalization(channel_names: Sequence[str], nonzero_fractions: Sequence[float]) -> list[str]:
    """One scheme of :data:`NORMALIZATIONS` per channel (the rule in the module docstring)."""
    use_mask = bool(np.median(np.asarray(nonzero_fractions, dtype=np.float64)) < NONZERO_MASK_FRACTION)
    return ["ct" if str(name).strip().lower() == "ct" else ("zscore_nonzero" if use_mask else "zscore")
            for name in channel_names]


def interpolation(median_spacing: Sequence[float], target: Sequence[float]) -> dict[str, Any]:
    """How images and labels are resampled (the ``resampling`` entry of a plan).

    The coarse axis is that of the target spacing, else that of the data's median spacing:
    either being anisotropic makes slices that must not be blurred into each other.
    """
    axis = anisotropic_axis(target)
    if axis is None:
        axis = anisotropic_axis(median_spacing)
    return {"image_order": 3, "label_order": 0, "separate_axis": axis, "separate_axis_order": 0}
