"""Read a prediction and its truth, and check that they can be compared.

Every problem is a :class:`~medseg.errors.DataError` that names the file and the rule it
broke, so that the evaluation can report it as the case's error row. Files are read with
:mod:`medseg.data.readers`, which refuses headers claiming more voxels or pixels than the
limits of :mod:`medseg.utils.limits` before reading their data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.conventions import LabelConvention, labels_hint
from medseg.data.layouts.brats import brats_convention_for_values
from medseg.data.readers import is_nifti, read_image_2d, read_nifti
from medseg.errors import DataError

#: Largest difference between a prediction's and its truth's affine entries (mm).
AFFINE_TOLERANCE: float = 1e-3


@dataclass(frozen=True)
class LabelPair:
    """A prediction and its truth, read and checked.

    Attributes:
        pred: integer label map ``(X, Y, Z)`` or ``(H, W)``.
        truth: integer label map of the same shape.
        spacing: voxel size in mm along each array axis (from the truth; 1 mm for 2D images).
        affine: the truth's 4x4 voxel-to-world matrix, ``None`` for 2D images.
    """

    pred: np.ndarray
    truth: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map from a float array; fails on NaN or non-integer values."""
    if array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    if not np.all(np.isfinite(array)):
        raise DataError(path, "non-finite label values", "the label map holds NaN or inf")
    rounded = np.rint(array)
    worst = float(np.max(np.abs(array - rounded))) if array.size else 0.0
    if worst > 1e-3:
        raise DataError(path, "non-integer label values",
                        f"values differ from integers by up to {worst:.3g}; write labels, not probabilities")
    return rounded.astype(np.int64)


def _spatial_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(path, "not a 3D label map", f"shape {array.shape}")
    return array


def read_label_volume(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Read a NIfTI label map.

    Returns:
        ``(labels, affine, spacing)`` with an int64 ``(X, Y, Z)`` map.

    Raises:
        DataError: unreadable file, not 3D, or non-integer values.
    """
    array, header = read_nifti(path)
    return _as_labels(_spatial_3d(array, path), path), header.affine, header.spacing


def read_mask_2d(path: Path, binarize: bool) -> np.ndarray:
    """Read a 2D mask image as an integer map ``(H, W)``.

    Args:
        path: PNG/BMP/TIFF mask (JPEG masks are refused: compression changes the labels).
        binarize: map to {0, 1}: values >= 128 are foreground when the image uses the
            0..255 range (ISIC masks are 0/255), values > 0 when it holds only 0 and 1.

    Raises:
        DataError: unreadable, several different colour channels, or a JPEG file.
    """
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise DataError(path, "lossy mask format",
                        "masks must be PNG (JPEG compression changes label values)")
    array = read_image_2d(path)
    if array.ndim == 3:
        channels = array.shape[-1]
        colour = array[..., : 3 if channels >= 3 else 1]  # grey+alpha and RGBA: ignore alpha
        if not np.all(colour == colour[..., :1]):
            raise DataError(path, "colour mask",
                            f"shape {array.shape}: a mask must be single-channel or grey")
        array = array[..., 0]
    if not binarize:
        return array.astype(np.int64)
    return (array >= 128) if int(array.max(initial=0)) > 1 else (array > 0)


def check_values(labels: np.ndarray, valid: Iterable[int], path: Path, convention: str,
                 suggest: bool = True) -> None:
    """Raise if ``labels`` holds values outside ``valid``.

    Args:
        labels: the label map.
        valid: the values allowed.
        path: the file, for the message.
        convention: the name of what allows ``valid`` (a label convention, or a config).
        suggest: say which ``--labels`` would read the values (a BraTS convention that
            allows them all, else any other convention).

    Raises:
        DataError: naming the file, the unexpected values and the allowed ones.
    """
    valid = sorted(int(v) for v in valid)
    found = np.unique(labels)
    unexpected = np.setdiff1d(found, valid)
    if unexpected.size:
        hint = (labels_hint(found.tolist(), convention) or "; pass --labels if the labels use another convention") \
            if suggest else ""
        raise DataError(path, "label values outside the convention",
                        f"found {unexpected.tolist()[:10]}, {convention} allows {valid}{hint}")


def truth_convention(convention: LabelConvention, truths: Iterable[Path]) -> LabelConvention:
    """The convention of BraTS 2023-named truth: ``brats2024`` when its labels hold the resection cavity (4).

    The rule is :func:`medseg.data.layouts.brats.brats_convention_for_values` (a 4 and a 3,
    nothing outside 0..4), applied to the values of every truth file.

    Reads every truth label map (once more than the evaluation does: about a tenth of a
    second per BraTS case, against seconds to score it); unreadable files are left to the
    evaluation, which reports them as failed cases.

    Args:
        convention: the convention the naming gives (``brats2023``; others are returned as they are).
        truths: the truth label files.
    """
    if convention.name != "brats2023":
        return convention
    found: set[int] = set()
    for path in truths:
        try:
            found.update(int(v) for v in np.unique(read_label_volume(path)[0]))
        except DataError:
            continue
    return brats_convention_for_values(convention, found)


def load_pair(pred_path: Path, truth_path: Path, binarize: bool = False) -> LabelPair:
    """Read a prediction and its truth and check that their grids agree.

    NIfTI pairs must have the same shape and affines equal within :data:`AFFINE_TOLERANCE`;
    2D images must have the same size and get a spacing of 1 (pixels).

    Args:
        pred_path: the prediction file.
        truth_path: the truth file (NIfTI, or a 2D image when ``pred_path`` is one too).
        binarize: read 2D masks as binary (ISIC) rather than as label values.

    Raises:
        DataError: an unreadable file, or shapes, affines or file types that differ; the
            message names both files.
    """
    if is_nifti(truth_path) != is_nifti(pred_path):
        raise DataError(pred_path, "file type differs from truth", f"truth is {truth_path.name}")
    if is_nifti(truth_path):
        truth, truth_affine, spacing = read_label_volume(truth_path)
        pred, pred_affine, _ = read_label_volume(pred_path)
        if pred.shape != truth.shape:
            raise DataError(pred_path, "shape differs from truth",
                            f"{pred.shape} vs {truth.shape} of {truth_path}")
        worst = float(np.max(np.abs(pred_affine - truth_affine)))
        if worst > AFFINE_TOLERANCE:
            raise DataError(pred_path, "affine differs from truth",
                            f"entries differ by up to {worst:.4g} (tolerance {AFFINE_TOLERANCE}) "
                            f"from {truth_path}")
        return LabelPair(pred, truth, tuple(spacing), truth_affine)
    truth2d = read_mask_2d(truth_path, binarize)
    pred2d = read_mask_2d(pred_path, binarize)
    if pred2d.shape != truth2d.shape:
        raise DataError(pred_path, "shape differs from truth",
                        f"{pred2d.shape[1]}x{pred2d.shape[0]} vs {truth2d.shape[1]}x{truth2d.shape[0]} "
                        f"(width x height) of {truth_path}")
    return LabelPair(pred2d.astype(np.int64), truth2d.astype(np.int64), (1.0, 1.0))
