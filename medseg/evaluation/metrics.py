"""Per-case segmentation metrics with the challenges' conventions for empty masks.

* BraTS (Dice, HD95 per region WT/TC/ET): Dice is 1 when both masks are empty and 0 when
  only one is; HD95 is 0 when both are empty and :data:`BRATS_EMPTY_HD95` (373.13 mm, the
  diagonal of the 240 x 240 x 155 mm BraTS volume) when only one is. HD95 is DeepMind's
  area-weighted robust Hausdorff distance (:mod:`medseg.evaluation.surface`).
* ISIC 2018 Task 1: per-image Jaccard, thresholded at 0.65 (a Jaccard below 0.65 scores
  0), plus Dice, precision, recall and specificity.

Every function takes plain arrays; reading files and checking them is
:mod:`medseg.evaluation.loading`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medseg.data.conventions import LabelConvention
from medseg.errors import InvalidValueError
from medseg.evaluation.surface import compute_surface_distances, robust_hausdorff

#: HD95 in mm when exactly one of the two masks is empty (BraTS convention).
BRATS_EMPTY_HD95: float = 373.13
#: ISIC 2018 Task 1: per-image Jaccard below this scores 0.
ISIC_JACCARD_THRESHOLD: float = 0.65
#: Order of the BraTS regions in reports (the models' channel order is TC, WT, ET).
REPORT_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
#: Column order of the ISIC metrics.
ISIC_METRICS: tuple[str, ...] = (
    "jaccard", "thresholded_jaccard", "dice", "precision", "recall", "specificity",
)


def _binary_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InvalidValueError(f"prediction and truth shapes differ: {pred.shape} vs {truth.shape}")
    return pred.astype(bool), truth.astype(bool)


def _ratio(numerator: int, denominator: int) -> float:
    # Both counts zero means both masks agree that nothing is there: a perfect score.
    return 1.0 if denominator == 0 else numerator / denominator


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of two binary masks.

    Args:
        pred: prediction mask, any shape; non-zero is foreground.
        truth: truth mask of the same shape.

    Returns:
        Dice in ``[0, 1]``: 1 if both masks are empty, 0 if only one is (BraTS convention).
    """
    p, t = _binary_pair(pred, truth)
    return _ratio(2 * int(np.count_nonzero(p & t)), int(np.count_nonzero(p)) + int(np.count_nonzero(t)))


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """Jaccard index (IoU) ``|P & T| / |P | T|``; 1 if both masks are empty, 0 if only one is."""
    p, t = _binary_pair(pred, truth)
    return _ratio(int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t)))


def thresholded_jaccard(j: float, threshold: float = ISIC_JACCARD_THRESHOLD) -> float:
    """ISIC 2018 Task 1 score of one image: its Jaccard, or 0 if the Jaccard is below ``threshold``.

    Args:
        j: the image's Jaccard index.
        threshold: default 0.65, the ISIC 2018 challenge value.

    Returns:
        ``j`` if ``j >= threshold`` else ``0.0``.
    """
    return float(j) if j >= threshold else 0.0


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """``(TP, FP, FN, TN)`` pixel counts of two binary masks."""
    p, t = _binary_pair(pred, truth)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """``TP / (TP + FP)``; 1 if both masks are empty, 0 if only the prediction is."""
    tp, fp, fn, _ = confusion_counts(pred, truth)
    return _ratio(tp, tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sensitivity ``TP / (TP + FN)``; 1 if both masks are empty, 0 if only the truth is."""
    tp, fp, fn, _ = confusion_counts(pred, truth)
    return _ratio(tp, tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """``TN / (TN + FP)``; 1 if the truth covers the whole image and the prediction agrees."""
    _, fp, fn, tn = confusion_counts(pred, truth)
    return _ratio(tn, tn + fp) if tn + fp else (1.0 if fn == 0 else 0.0)


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    empty_value: float = BRATS_EMPTY_HD95,
) -> float:
    """95th-percentile robust Hausdorff distance in mm, with the BraTS empty-mask conventions.

    Args:
        pred: prediction mask ``(X, Y, Z)`` or ``(H, W)``; non-zero is foreground.
        truth: truth mask of the same shape.
        spacing: voxel size in mm along each array axis (from the truth's header).
        empty_value: the distance when exactly one mask is empty (default 373.13 mm).

    Returns:
        0 if both masks are empty, ``empty_value`` if only one is, else the larger of the
        two area-weighted directed 95th percentiles (DeepMind ``surface-distance``).
    """
    p, t = _binary_pair(pred, truth)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float(empty_value)
    return robust_hausdorff(compute_surface_distances(t, p, spacing), 95.0)


def brats_case_metrics(
    pred_label: np.ndarray,
    truth_label: np.ndarray,
    convention: LabelConvention,
    spacing: Sequence[float],
) -> dict[str, float]:
    """Dice and HD95 of the BraTS regions WT, TC and ET for one case.

    Args:
        pred_label: predicted label map ``(X, Y, Z)`` in the source's own values
            (e.g. BraTS 2021: 0/1/2/4).
        truth_label: truth label map of the same shape and convention.
        convention: the label convention that defines the regions (``BRATS2021``,
            ``BRATS2023``, ``MSD_BRAIN``).
        spacing: voxel size in mm.

    Returns:
        ``{"dice_WT", "dice_TC", "dice_ET", "hd95_WT", "hd95_TC", "hd95_ET"}``, and the
        convention's other regions after them (BraTS 2024+: ``dice_RC``, ``hd95_RC``).

    Raises:
        ValueError: the convention has no regions, or the shapes differ.
    """
    if not convention.is_region_based:
        raise InvalidValueError(f"label convention {convention.name!r} has no BraTS regions (WT, TC, ET)")
    if np.shape(pred_label) != np.shape(truth_label):
        raise InvalidValueError(
            f"prediction and truth shapes differ: {np.shape(pred_label)} vs {np.shape(truth_label)}"
        )
    names = convention.region_names
    pred_regions = dict(zip(names, convention.to_regions(pred_label)))
    truth_regions = dict(zip(names, convention.to_regions(truth_label)))
    reported = REPORT_REGIONS + tuple(r for r in names if r not in REPORT_REGIONS)
    out: dict[str, float] = {}
    for region in reported:
        out[f"dice_{region}"] = dice(pred_regions[region], truth_regions[region])
    for region in reported:
        out[f"hd95_{region}"] = hd95(pred_regions[region], truth_regions[region], spacing)
    return out


def labels_case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    classes: Iterable[int] | None,
    spacing: Sequence[float],
) -> dict[str, float]:
    """Per-class Dice and HD95 for a generic multi-class label map.

    Args:
        pred: predicted integer label map ``(X, Y, Z)`` or ``(H, W)``.
        truth: truth label map of the same shape.
        classes: the label values to score; ``None`` scores every non-zero value found in
            either map. A class absent from both maps scores Dice 1 and HD95 0.
        spacing: voxel size in mm.

    Returns:
        ``{"dice_<c>": ..., "hd95_<c>": ...}`` for every class ``c`` in increasing order.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InvalidValueError(f"prediction and truth shapes differ: {pred.shape} vs {truth.shape}")
    if classes is None:
        values = np.union1d(np.unique(pred), np.unique(truth))
        classes = [int(v) for v in values if v != 0]
    classes = sorted(int(c) for c in classes)
    out: dict[str, float] = {}
    for c in classes:
        out[f"dice_{c}"] = dice(pred == c, truth == c)
    for c in classes:
        out[f"hd95_{c}"] = hd95(pred == c, truth == c, spacing)
    return out


def isic_case_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ISIC 2018 Task 1 metrics of one image.

    Args:
        pred: binary prediction mask ``(H, W)``.
        truth: binary truth mask ``(H, W)``.

    Returns:
        The metrics of :data:`ISIC_METRICS`; the challenge score is the mean of
        ``thresholded_jaccard`` over images.
    """
    j = jaccard(pred, truth)
    return {
        "jaccard": j,
        "thresholded_jaccard": thresholded_jaccard(j),
        "dice": dice(pred, truth),
        "precision": precision(pred, truth),
        "recall": recall(pred, truth),
        "specificity": specificity(pred, truth),
    }
