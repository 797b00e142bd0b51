"""Evaluation: per-case metrics with the challenges' conventions, and their reports.

Stages, each its own module: :mod:`~medseg.evaluation.pairing` (find each truth case's
prediction), :mod:`~medseg.evaluation.loading` (read and check a pair),
:mod:`~medseg.evaluation.surface` and :mod:`~medseg.evaluation.metrics` (the numbers),
:mod:`~medseg.evaluation.lesionwise` (the BraTS 2023 lesion-wise rules) and
:mod:`~medseg.evaluation.brats_official` (the official 2024-2025 package),
:mod:`~medseg.evaluation.report` and :mod:`~medseg.evaluation.figures` (CSV, JSON, PNGs),
and :mod:`~medseg.evaluation.runner` (:func:`evaluate`, which ties them together;
:mod:`~medseg.evaluation.lesionwise_runner` for ``brats-lesionwise``).
"""

from __future__ import annotations

from medseg.evaluation.lesionwise import (
    CHALLENGE_RULES,
    MISSING_HD95,
    LesionScore,
    RegionScores,
    brats2023_case,
    lesionwise_region,
)
from medseg.evaluation.lesionwise_runner import evaluate_lesionwise
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
from medseg.evaluation.report import EvaluationResult
from medseg.evaluation.runner import evaluate
from medseg.evaluation.surface import SurfaceDistances, compute_surface_distances, robust_hausdorff

__all__ = [
    "BRATS_EMPTY_HD95",
    "CHALLENGE_RULES",
    "ISIC_JACCARD_THRESHOLD",
    "MISSING_HD95",
    "EvaluationResult",
    "LesionScore",
    "RegionScores",
    "SurfaceDistances",
    "brats2023_case",
    "brats_case_metrics",
    "compute_surface_distances",
    "dice",
    "evaluate",
    "evaluate_lesionwise",
    "hd95",
    "isic_case_metrics",
    "jaccard",
    "labels_case_metrics",
    "lesionwise_region",
    "precision",
    "recall",
    "robust_hausdorff",
    "specificity",
    "thresholded_jaccard",
]
