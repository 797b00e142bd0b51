"""Choose the post-processing on out-of-fold predictions, as nnU-Net's ``determine_postprocessing`` does.

Every rule is tried on the out-of-fold masks of a cross-validation, against their truth, and
kept only when it helps there:

1. **Largest connected component**, per region (outer first: WT, TC, ET, RC) or per class: kept
   when the mean out-of-fold Dice of that region improves and the mean over all regions does
   not fall (removing a WT island also removes the TC and ET voxels inside it).
2. **BraTS enhancing-tumour threshold**: the ET volume below which a case's ET is relabelled as
   necrosis, chosen among :data:`ET_THRESHOLDS` voxels for the highest mean ET Dice (a case
   with no ET in truth and none predicted scores 1, as BraTS scores it), and kept only when it
   beats no threshold.

Dice of a region absent from both truth and prediction is 1 (the BraTS rule), so removing a
false-positive island on a case without that region counts in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.conventions import LabelConvention
from medseg.evaluation.loading import load_pair
from medseg.postprocessing.rules import apply_postprocessing, outer_first

__all__ = ["ET_THRESHOLDS", "PostprocessingChoice", "choose_postprocessing"]

ET_THRESHOLDS = (0, 10, 25, 50, 100, 200, 300, 500, 1000)
_GAIN = 1e-6


@dataclass
class PostprocessingChoice:
    """The chosen post-processing and how each rule did on the out-of-fold cases.

    Attributes:
        spec: the post-processing to record (:mod:`medseg.postprocessing.rules`).
        report: one entry per rule tried: ``rule``, ``target``, ``dice_before``, ``dice_after``
            (mean out-of-fold Dice of the target), ``kept``; the ET threshold also lists the
            mean ET Dice of every threshold tried.
        cases: the number of out-of-fold cases.
    """

    spec: dict[str, Any]
    report: list[dict[str, Any]] = field(default_factory=list)
    cases: int = 0


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _masks(labels: np.ndarray, targets: Sequence[str], convention: LabelConvention | None) -> dict[str, np.ndarray]:
    if convention is not None and convention.is_region_based:
        regions = convention.to_regions(labels).astype(bool)
        return {name: regions[i] for i, name in enumerate(convention.region_names)}
    return {t: labels == int(t) for t in targets}


def _scores(pairs: Sequence[tuple[Path, Path]], spec: dict[str, Any], targets: Sequence[str],
            convention: LabelConvention | None) -> np.ndarray:
    """``(cases, targets)`` Dice of every case under ``spec``."""
    out = np.zeros((len(pairs), len(targets)))
    for i, (pred_path, truth_path) in enumerate(pairs):
        pair = load_pair(pred_path, truth_path)
        pred = apply_postprocessing(pair.pred, spec, convention)
        got, want = _masks(pred, targets, convention), _masks(pair.truth, targets, convention)
        out[i] = [_dice(got[t], want[t]) for t in targets]
    return out


def _et_table(pairs: Sequence[tuple[Path, Path]], spec: dict[str, Any], convention: LabelConvention,
              thresholds: Sequence[int]) -> np.ndarray:
    """``(cases, thresholds)`` ET Dice of every case for every threshold, on top of ``spec``."""
    out = np.zeros((len(pairs), len(thresholds)))
    for i, (pred_path, truth_path) in enumerate(pairs):
        pair = load_pair(pred_path, truth_path)
        pred = _masks(apply_postprocessing(pair.pred, spec, convention), ["ET"], convention)["ET"]
        truth = _masks(pair.truth, ["ET"], convention)["ET"]
        kept, removed = _dice(pred, truth), _dice(np.zeros_like(pred), truth)
        volume = int(pred.sum())
        out[i] = [removed if volume < t else kept for t in thresholds]
    return out


def choose_postprocessing(pairs: Sequence[tuple[Path, Path]], convention: LabelConvention | None,
                          classes: Sequence[int] = (), et_thresholds: Sequence[int] = ET_THRESHOLDS
                          ) -> PostprocessingChoice:
    """Choose the post-processing on out-of-fold ``(prediction, truth)`` mask files (the rules in the module docstring).

    Args:
        pairs: every out-of-fold case's prediction and truth file (same grid).
        convention: the masks' label convention; a region convention (BraTS) makes the rules
            name regions, otherwise they name ``classes``.
        classes: the foreground class values (conventions without regions).
        et_thresholds: the ET volumes tried, in voxels (0: no threshold).

    Returns:
        The choice, with the report of every rule tried.
    """
    regional = convention is not None and convention.is_region_based
    targets = outer_first(convention.region_names) if regional else [str(int(c)) for c in classes]
    spec: dict[str, Any] = {"largest_component": [], "et_min_voxels": None}
    choice = PostprocessingChoice(spec=spec, cases=len(pairs))
    if not pairs or not targets:
        return choice
    base = _scores(pairs, spec, targets, convention).mean(axis=0)
    for i, target in enumerate(targets):
        trial = {**spec, "largest_component": [*spec["largest_component"], target]}
        after = _scores(pairs, trial, targets, convention).mean(axis=0)
        kept = bool(after[i] > base[i] + _GAIN and after.mean() >= base.mean() - _GAIN)
        choice.report.append({"rule": "largest_component", "target": target, "dice_before": float(base[i]),
                              "dice_after": float(after[i]), "kept": kept})
        if kept:
            spec, base = trial, after
    if regional and "ET" in targets and len(et_thresholds) > 1:
        table = _et_table(pairs, spec, convention, et_thresholds).mean(axis=0)
        best = int(np.argmax(table))  # the first (smallest) threshold of the highest mean ET Dice
        kept = bool(et_thresholds[best] > 0 and table[best] > table[0] + _GAIN)
        choice.report.append({"rule": "et_min_voxels", "target": "ET", "dice_before": float(table[0]),
                              "dice_after": float(table[best]), "kept": kept, "threshold": int(et_thresholds[best]),
                              "tried": {str(t): float(d) for t, d in zip(et_thresholds, table)}})
        if kept:
            spec = {**spec, "et_min_voxels": int(et_thresholds[best])}
    choice.spec = spec
    return choice
