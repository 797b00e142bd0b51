"""Evaluation: per-case metrics with the challenges' conventions, and their reports.

Stages, each its own module: :mod:`~medseg.evaluation.pairing` (find each truth case's
prediction), :mod:`~medseg.evaluation.loading` (read and check a pair),
:mod:`~medseg.evaluation.surface` and :mod:`~medseg.evaluation.metrics` (the numbers),
:mod:`~medseg.evaluation.report` and :mod:`~medseg.evaluation.figures` (CSV, JSON, PNGs),
and :mod:`~medseg.evaluation.runner` (:func:`evaluate`, which ties them together).
"""

from __future__ import annotations

from medseg.evaluation.metrics import (
    BRATS_EMPTY_HD95,
    ISIC_JACCARD_THRESHOLD,
    brats_case_metrics,
    dice,
    hd95,
    isic_case_metrics,
    jaccard,
    labels_case_metrics,
    precision,
    recall,
    specificity,
    thresholded_jaccard,
)
from medseg.evaluation.runner import EvaluationResult, evaluate
from medseg.evaluation.surface import SurfaceDistances, compute_surface_distances, robust_hausdorff

__all__ = [
    "BRATS_EMPTY_HD95",
    "ISIC_JACCARD_THRESHOLD",
    "EvaluationResult",
    "SurfaceDistances",
    "brats_case_metrics",
    "compute_surface_distances",
    "dice",
    "evaluate",
    "hd95",
    "isic_case_metrics",
    "jaccard",
    "labels_case_metrics",
    "precision",
    "recall",
    "robust_hausdorff",
    "specificity",
    "thresholded_jaccard",
]
