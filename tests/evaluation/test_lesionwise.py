"""The BraTS 2023 lesion-wise rules on constructed cases: hand-worked numbers and a brute-force twin.

The brute force below follows the reference code (rachitsaluja/BraTS-2023-Metrics,
``get_LesionWiseScores``) step by step on whole volumes: a full-volume dilation per lesion,
``pred_cc * dilation`` for the matches, ``np.isin(pred_cc, tp + [0], invert=True)`` for the
false positives. medseg's version crops every step to bounding boxes; the two must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.conventions import BRATS2021, BRATS2023
from medseg.evaluation.lesionwise import (
    CHALLENGE_RULES,
    MISSING_HD95,
    ChallengeRules,
    brats2023_case,
    lesionwise_region,
    merged_lesions,
)
from medseg.evaluation.surface import compute_surface_distances, robust_hausdorff

GLI = CHALLENGE_RULES["GLI"]
ONE_MM = (1.0, 1.0, 1.0)


def _box(mask: np.ndarray, lower: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    mask[tuple(slice(a, a + n) for a, n in zip(lower, size))] = True
    return mask


def _empty(shape: tuple[int, int, int] = (48, 40, 36)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def brute_force(pred: np.ndarray, truth: np.ndarray, spacing, rules: ChallengeRules) -> dict:
    """The 2023 algorithm on whole volumes, as the reference code writes it."""
    structure18 = ndimage.generate_binary_structure(3, 2)
    structure26 = np.ones((3, 3, 3), bool)
    sx, sy, sz = spacing
    pred_cc, _ = ndimage.label(pred, structure26)
    truth_cc, _ = ndimage.label(truth, structure26)
    dilated_cc, n_dilated = ndimage.label(
        ndimage.binary_dilation(truth, structure18, iterations=rules.dilation), structure26)
    merged = np.zeros_like(truth_cc)
    for comp in range(1, n_dilated + 1):  # get_GTseg_combinedByDilation
        part = truth_cc * (dilated_cc == comp)
        merged += np.where(part > 0, comp, 0)
    tp_components, rows = [], []
    for comp in range(1, int(merged.max()) + 1):
        lesion = merged == comp
        reach = ndimage.binary_dilation(lesion, structure18, iterations=rules.dilation)
        hits = np.unique(pred_cc * reach)
        hits = hits[hits != 0]
        tp_components.extend(hits.tolist())
        matched = np.isin(pred_cc, hits)
        dice = 2.0 * np.sum(matched & lesion) / (np.sum(matched) + np.sum(lesion))
        hd = robust_hausdorff(compute_surface_distances(lesion, matched, spacing), 95)
        rows.append((len(hits), np.sum(lesion) * sx * sy * sz, dice, MISSING_HD95 if math.isinf(hd) else hd))
    fp = np.unique(pred_cc[np.isin(pred_cc, tp_components + [0], invert=True)])
    kept = [r for r in rows if r[1] > rules.volume_threshold]
    total = len(kept) + len(fp)
    return {
        "lesionwise_dice": sum(r[2] for r in kept) / total if total else 1.0,
        "lesionwise_hd95": (sum(r[3] for r in kept) + MISSING_HD95 * len(fp)) / total if total else 0.0,
        "tp": sum(r[0] > 0 for r in kept), "fn": sum(r[0] == 0 for r in kept), "fp": len(fp),
        "lesions": sorted((r[1], r[2], r[3]) for r in rows),
    }


def _agree(pred: np.ndarray, truth: np.ndarray, spacing=ONE_MM, rules: ChallengeRules = GLI):
    ours = lesionwise_region(pred, truth, spacing, rules)
    twin = brute_force(pred, truth, spacing, rules)
    for name in ("lesionwise_dice", "lesionwise_hd95", "tp", "fn", "fp"):
        assert getattr(ours, name) == pytest.approx(twin[name], abs=1e-12), name
    mine = sorted((x.volume_mm3, x.dice, x.hd95) for x in ours.lesions)
    np.testing.assert_allclose(np.reshape(mine, (-1, 3)), np.reshape(twin["lesions"], (-1, 3)), rtol=0, atol=1e-12)
    return ours


@pytest.mark.parametrize("gap,lesions", [(6, 1), (7, 2)])
def test_lesions_whose_dilations_touch_are_one(gap: int, lesions: int) -> None:
    """Two 5^3 cubes ``gap`` voxels apart: 3 dilations each reach 3 voxels, so a gap of 6 leaves the
    dilations face to face (one 26-connected component) and a gap of 7 leaves a voxel between them."""
    truth = _box(_box(_empty(), (5, 10, 10), (5, 5, 5)), (10 + gap, 10, 10), (5, 5, 5))
    labels, n = merged_lesions(truth, 3)
    assert n == lesions and set(np.unique(labels[truth])) == set(range(1, lesions + 1))
    only_first = _box(_empty(), (5, 10, 10), (5, 5, 5))  # predict the first cube only
    scores = _agree(only_first, truth)
    if lesions == 1:  # one lesion of 250 voxels, half found: Dice 2*125/(250+125)
        assert (scores.tp, scores.fn, scores.fp) == (1, 0, 0)
        assert scores.lesionwise_dice == pytest.approx(2 / 3)
        assert scores.lesions[0].volume_mm3 == 250.0 and scores.lesions[0].matches == 1
    else:  # the second cube is a missed lesion: (1 + 0) / 2, (0 + 374) / 2
        assert (scores.tp, scores.fn, scores.fp) == (1, 1, 0)
        assert scores.lesionwise_dice == pytest.approx(0.5)
        assert scores.lesionwise_hd95 == pytest.approx(187.0)


def test_a_lesion_split_into_several_predicted_components() -> None:
    truth = _box(_empty(), (10, 10, 10), (10, 10, 10))
    pred = truth.copy()
    pred[14] = False  # one plane out: two components, 400 + 500 voxels
    scores = _agree(pred, truth)
    assert (scores.tp, scores.fn, scores.fp) == (1, 0, 0)
    assert scores.lesions[0].matches == 2
    assert scores.lesionwise_dice == pytest.approx(2 * 900 / 1900)
    assert scores.legacy_dice == pytest.approx(2 * 900 / 1900)


@pytest.mark.parametrize("offset,is_fp", [((3, -4, -4), False), ((4, -4, -4), True),
                                          ((2, 2, 2), False), ((3, 3, 3), True)])
def test_a_small_false_positive_island(offset: tuple[int, int, int], is_fp: bool) -> None:
    """A one-voxel island off the cube (its last voxel is 19 on every axis): 3 dilations reach 3
    voxels along an axis, and diagonally (2, 2, 2) but not (3, 3, 3), which a 26-connected
    structure would."""
    truth = _box(_empty(), (10, 10, 10), (10, 10, 10))
    pred = truth.copy()
    pred[tuple(19 + o for o in offset)] = True
    scores = _agree(pred, truth)
    assert scores.fp == int(is_fp) and scores.tp == 1
    if is_fp:  # the cube is perfect; the island adds a Dice of 0 and an HD95 of 374
        assert scores.lesionwise_dice == pytest.approx(0.5)
        assert scores.lesionwise_hd95 == pytest.approx(187.0)
    else:  # the island is one of the lesion's matches
        assert scores.lesions[0].matches == 2
        assert scores.lesionwise_dice == pytest.approx(2000 / 2001)
    assert scores.legacy_dice == pytest.approx(2000 / 2001)
    assert scores.legacy_hd95 == 0.0  # the island's surfels are far under 5 % of the surface


@pytest.mark.parametrize("size,counted", [((5, 5, 2), False), ((3, 17, 1), True)])
def test_a_reference_lesion_under_the_volume_threshold(size, counted: bool) -> None:
    """50 mm^3 is left out (the rule is 'greater than 50'), 51 mm^3 is counted; missed either way."""
    truth = _box(_box(_empty(), (5, 5, 5), (10, 10, 10)), (30, 10, 25), size)
    pred = _box(_empty(), (5, 5, 5), (10, 10, 10))
    scores = _agree(pred, truth)
    small = [x for x in scores.lesions if x.volume_mm3 < 100]
    assert len(small) == 1 and small[0].counted is counted and small[0].matches == 0
    assert scores.fp == 0 and scores.tp == 1
    assert scores.fn == int(counted)
    assert scores.lesionwise_dice == pytest.approx(0.5 if counted else 1.0)
    assert scores.lesionwise_hd95 == pytest.approx(187.0 if counted else 0.0)


def test_a_prediction_of_an_uncounted_lesion_is_no_false_positive() -> None:
    truth = _box(_box(_empty(), (5, 5, 5), (10, 10, 10)), (30, 25, 25), (3, 3, 3))  # 27 mm^3
    pred = truth.copy()
    scores = _agree(pred, truth)
    assert (scores.tp, scores.fn, scores.fp) == (1, 0, 0) and scores.lesionwise_dice == 1.0
    met = _agree(pred, truth, rules=CHALLENGE_RULES["MET"])  # MET: 2 mm^3, dilation 1: both counted
    assert (met.tp, met.fn, met.fp) == (2, 0, 0)


def test_empty_and_empty_and_one_sided() -> None:
    nothing = _empty()
    both = lesionwise_region(nothing, nothing, ONE_MM, GLI)
    assert (both.lesionwise_dice, both.lesionwise_hd95, both.tp, both.fn, both.fp) == (1.0, 0.0, 0, 0, 0)
    assert (both.legacy_dice, both.legacy_hd95, both.lesions) == (1.0, 0.0, ())
    cube = _box(_empty(), (10, 10, 10), (6, 6, 6))
    only_pred = _agree(cube, nothing)
    assert (only_pred.lesionwise_dice, only_pred.lesionwise_hd95, only_pred.fp) == (0.0, MISSING_HD95, 1)
    assert (only_pred.legacy_dice, only_pred.legacy_hd95) == (0.0, MISSING_HD95)
    only_truth = _agree(nothing, cube)
    assert (only_truth.lesionwise_dice, only_truth.lesionwise_hd95, only_truth.fn) == (0.0, MISSING_HD95, 1)


def test_anisotropic_spacing_in_volumes_and_distances() -> None:
    """Spacing (1, 1, 3) mm: volumes in mm^3 decide the threshold, HD95 is in mm, dilation in voxels."""
    spacing = (1.0, 1.0, 3.0)
    truth = _box(_empty(), (4, 4, 10), (16, 16, 2))   # a wide slab, 512 voxels = 1536 mm^3
    pred = _box(_empty(), (4, 4, 12), (16, 16, 2))    # the same slab 2 slices (6 mm) further: no overlap
    _box(truth, (30, 30, 20), (4, 5, 1))              # 20 voxels = 60 mm^3 > 50: a counted, missed lesion
    scores = _agree(pred, truth, spacing)
    slab = max(scores.lesions, key=lambda x: x.volume_mm3)
    assert slab.volume_mm3 == 1536.0 and slab.matches == 1  # within 3 dilations (voxels), not 3 mm
    assert slab.dice == 0.0 and slab.hd95 == pytest.approx(6.0)
    assert (scores.tp, scores.fn, scores.fp) == (1, 1, 0)
    assert scores.lesionwise_hd95 == pytest.approx((6.0 + 374.0) / 2)
    isotropic = lesionwise_region(pred, truth, ONE_MM, GLI)  # the 20-voxel lesion is 20 mm^3: not counted
    assert (isotropic.tp, isotropic.fn) == (1, 0) and isotropic.lesionwise_hd95 == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blobs_agree_with_the_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (44, 40, 36)
    grid = np.indices(shape).transpose(1, 2, 3, 0)

    def blobs(n: int) -> np.ndarray:
        mask = np.zeros(shape, bool)
        for _ in range(n):
            centre, radius = rng.uniform(4, np.array(shape) - 4), rng.uniform(1.0, 5.0)
            mask |= np.linalg.norm((grid - centre) / [1.0, 1.3, 0.8], axis=-1) < radius
        return mask

    truth = blobs(7)
    pred = ndimage.binary_erosion(truth) | blobs(4)
    spacing = (1.0, 1.25, 2.0)
    for name, rules in CHALLENGE_RULES.items():
        scores = _agree(pred, truth, spacing, rules)
        assert scores.tp + scores.fn == sum(x.counted for x in scores.lesions), name


def test_regions_follow_the_convention() -> None:
    """ET is label 3 in 2023 labels and 4 in 2021 labels; TC = NCR + ET, WT = all tumour."""
    label23 = np.zeros((40, 40, 30), np.uint8)
    label23[5:25, 5:25, 5:25] = 2
    label23[8:20, 8:20, 8:20] = 1
    label23[10:16, 10:16, 10:16] = 3
    pred23 = label23.copy()
    pred23[pred23 == 3] = 1  # the enhancing tumour is missed, the core is right
    scores = brats2023_case(pred23, label23, BRATS2023, ONE_MM, "GLI")
    assert list(scores) == ["WT", "TC", "ET"]
    assert scores["WT"].lesionwise_dice == 1.0 and scores["TC"].lesionwise_dice == 1.0
    assert (scores["ET"].lesionwise_dice, scores["ET"].fn, scores["ET"].lesionwise_hd95) == (0.0, 1, MISSING_HD95)
    label21, pred21 = np.where(label23 == 3, 4, label23), np.where(pred23 == 3, 4, pred23)
    again = brats2023_case(pred21, label21, BRATS2021, ONE_MM, "GLI")
    assert {r: s.as_metrics(r) for r, s in again.items()} == {r: s.as_metrics(r) for r, s in scores.items()}
    with pytest.raises(ValueError, match="unknown challenge 'XYZ'"):
        brats2023_case(pred23, label23, BRATS2023, ONE_MM, "XYZ")
    with pytest.raises(ValueError, match="dilation must be an integer >= 1, got 0"):
        ChallengeRules(dilation=0, volume_threshold=50.0)
