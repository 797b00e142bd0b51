"""Dice/HD95 empty-mask conventions, BraTS regions, ISIC Jaccard and confusion metrics."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.conventions import BRATS2021, BRATS2023, MSD_BRAIN
from medseg.evaluation.metrics import (
    BRATS_EMPTY_HD95,
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

SPACING = (1.0, 1.5, 3.0)


def _cube(shape=(20, 20, 20), lo=5, hi=12) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[lo:hi, lo:hi, lo:hi] = 1
    return mask


def test_empty_mask_conventions() -> None:
    empty, cube = np.zeros((20, 20, 20), np.uint8), _cube()
    assert dice(empty, empty) == 1.0
    assert dice(cube, empty) == 0.0
    assert dice(empty, cube) == 0.0
    assert hd95(empty, empty, SPACING) == 0.0
    assert hd95(cube, empty, SPACING) == BRATS_EMPTY_HD95 == 373.13
    assert hd95(empty, cube, SPACING) == 373.13
    assert hd95(empty, cube, SPACING, empty_value=99.0) == 99.0
    assert dice(cube, cube) == 1.0
    assert hd95(cube, cube, SPACING) == 0.0


def test_dice_and_jaccard_known_values() -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 1  # 100 pixels
    pred = np.zeros_like(truth)
    pred[5:13, 5:15] = 1  # 80 pixels inside the truth
    assert dice(pred, truth) == pytest.approx(2 * 80 / 180)
    assert jaccard(pred, truth) == pytest.approx(0.8)
    assert jaccard(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    assert jaccard(pred, np.zeros_like(truth)) == 0.0


@pytest.mark.parametrize(("j", "expected"), [(0.0, 0.0), (0.5, 0.0), (0.6499, 0.0), (0.65, 0.65),
                                              (0.8, 0.8), (1.0, 1.0)])
def test_thresholded_jaccard(j: float, expected: float) -> None:
    assert thresholded_jaccard(j) == pytest.approx(expected)


def test_isic_challenge_score_of_known_images() -> None:
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True  # 400 pixels
    preds = []
    for rows in (20, 16, 12):  # Jaccard 1.0, 0.8, 0.6 (all inside the truth)
        p = np.zeros_like(truth)
        p[10:10 + rows, 10:30] = True
        preds.append(p)
    scores = [isic_case_metrics(p, truth) for p in preds]
    assert [s["jaccard"] for s in scores] == pytest.approx([1.0, 0.8, 0.6])
    assert [s["thresholded_jaccard"] for s in scores] == pytest.approx([1.0, 0.8, 0.0])
    assert np.mean([s["thresholded_jaccard"] for s in scores]) == pytest.approx(0.6)
    assert scores[2]["precision"] == 1.0
    assert scores[2]["recall"] == pytest.approx(0.6)
    assert scores[2]["specificity"] == 1.0


def test_confusion_metrics_known_counts() -> None:
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)  # TP 3, FN 1, FP 2, TN 4
    assert precision(pred, truth) == pytest.approx(3 / 5)
    assert recall(pred, truth) == pytest.approx(3 / 4)
    assert specificity(pred, truth) == pytest.approx(4 / 6)
    empty = np.zeros_like(truth)
    assert precision(empty, empty) == recall(empty, empty) == specificity(empty, empty) == 1.0
    assert precision(empty, truth) == 0.0 and recall(empty, truth) == 0.0
    assert recall(pred, empty) == 0.0 and precision(pred, empty) == 0.0


def _brats_label(et: int) -> np.ndarray:
    label = np.zeros((24, 24, 16), np.uint8)
    label[4:20, 4:20, 3:13] = 2   # edema
    label[8:16, 8:16, 5:11] = 1   # necrosis
    label[10:14, 10:14, 6:10] = et
    return label


@pytest.mark.parametrize(("convention", "et"), [(BRATS2021, 4), (BRATS2023, 3)])
def test_brats_regions_from_source_labels(convention, et: int) -> None:
    truth = _brats_label(et)
    perfect = brats_case_metrics(truth, truth, convention, SPACING)
    assert list(perfect) == ["dice_WT", "dice_TC", "dice_ET", "hd95_WT", "hd95_TC", "hd95_ET"]
    assert all(perfect[f"dice_{r}"] == 1.0 and perfect[f"hd95_{r}"] == 0.0 for r in ("WT", "TC", "ET"))

    no_et = np.where(truth == et, 1, truth)  # ET relabelled as necrosis: TC and WT unchanged
    scores = brats_case_metrics(no_et, truth, convention, SPACING)
    assert scores["dice_WT"] == 1.0 and scores["dice_TC"] == 1.0
    assert scores["dice_ET"] == 0.0 and scores["hd95_ET"] == BRATS_EMPTY_HD95

    edema_only = np.where(truth > 0, 2, 0)  # whole tumour right, core missing
    scores = brats_case_metrics(edema_only, truth, convention, SPACING)
    assert scores["dice_WT"] == 1.0 and scores["dice_TC"] == 0.0 and scores["hd95_TC"] == 373.13


def test_brats_regions_msd_values() -> None:
    truth = np.zeros((16, 16, 8), np.uint8)
    truth[2:14, 2:14, 2:6] = 1  # MSD: 1 edema, 2 non-enhancing, 3 enhancing
    truth[5:10, 5:10, 3:5] = 2
    scores = brats_case_metrics(truth, truth, MSD_BRAIN, SPACING)
    assert scores["dice_TC"] == 1.0 and scores["dice_ET"] == 1.0 and scores["hd95_ET"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        brats_case_metrics(truth, truth[:-1], MSD_BRAIN, SPACING)


def test_labels_case_metrics_classes() -> None:
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[2:8, 2:8, 2:6] = 1
    truth[10:16, 10:16, 3:7] = 2
    pred = truth.copy()
    pred[pred == 2] = 0
    scores = labels_case_metrics(pred, truth, None, SPACING)
    assert list(scores) == ["dice_1", "dice_2", "hd95_1", "hd95_2"]
    assert scores["dice_1"] == 1.0 and scores["dice_2"] == 0.0 and scores["hd95_2"] == 373.13
    absent = labels_case_metrics(pred, truth, [1, 3], SPACING)
    assert absent["dice_3"] == 1.0 and absent["hd95_3"] == 0.0  # absent from both: perfect
