"""Post-processing rules, and the choice made on out-of-fold predictions (real NIfTI files on disk)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseg.data.conventions import get_convention
from medseg.errors import InvalidValueError
from medseg.postprocessing import (
    apply_postprocessing,
    check_postprocessing,
    choose_postprocessing,
    largest_component,
)

BRATS = get_convention("brats2021")  # NCR 1, ED 2, ET 4


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_largest_component_keeps_the_biggest_blob_only():
    mask = _ball((20, 20, 20), (6, 6, 6), 4) | _ball((20, 20, 20), (16, 16, 16), 2)
    kept = largest_component(mask)
    assert kept.sum() == _ball((20, 20, 20), (6, 6, 6), 4).sum()
    assert not largest_component(np.zeros((4, 4, 4), bool)).any()


def test_regions_are_handled_outside_in():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[_ball(labels.shape, (10, 10, 10), 6)] = 2  # oedema
    labels[_ball(labels.shape, (10, 10, 10), 3)] = 1  # necrosis
    labels[_ball(labels.shape, (10, 10, 10), 2)] = 4  # ET
    labels[_ball(labels.shape, (25, 25, 25), 1)] = 4  # a small far ET island: in WT, TC, ET
    out = apply_postprocessing(labels, {"largest_component": ["WT"]}, BRATS)
    assert out[25, 25, 25] == 0 and out[10, 10, 10] == 4  # the island left every region
    # Removing an ET island alone leaves it in TC: it becomes necrosis.
    out = apply_postprocessing(labels, {"largest_component": ["ET"]}, BRATS)
    assert out[25, 25, 25] == 1 and out[10, 10, 10] == 4
    # The ET rule: a case with fewer ET voxels than the threshold has its ET relabelled necrosis.
    out = apply_postprocessing(labels, {"largest_component": [], "et_min_voxels": 10**6}, BRATS)
    assert not (out == 4).any() and (out[labels == 4] == 1).all()


def test_class_rules_name_class_values():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[_ball(labels.shape, (5, 5, 5), 3)] = 1
    labels[_ball(labels.shape, (15, 15, 15), 1)] = 1
    labels[_ball(labels.shape, (15, 5, 5), 2)] = 2
    labels[_ball(labels.shape, (5, 15, 5), 1)] = 2
    out = apply_postprocessing(labels, {"largest_component": ["1"]}, None)
    assert out[15, 15, 15] == 0 and out[5, 5, 5] == 1
    assert (out == 2).sum() == (labels == 2).sum()  # class 2 untouched


def test_a_bad_recorded_postprocessing_is_refused():
    with pytest.raises(InvalidValueError, match="largest_component"):
        check_postprocessing({"largest_component": ["XX"]}, ["TC", "WT", "ET"])
    with pytest.raises(InvalidValueError, match="et_min_voxels"):
        check_postprocessing({"et_min_voxels": -3}, ["TC", "WT", "ET"])
    with pytest.raises(InvalidValueError, match="et_min_voxels"):
        check_postprocessing({"et_min_voxels": 10}, ["1", "2"])  # no ET region
    with pytest.raises(InvalidValueError, match="unknown"):
        check_postprocessing({"fill_holes": True}, ["1"])


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), path)
    return path


def _tumour(shape=(32, 32, 32), centre=(12, 12, 12), et=True):
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, centre, 7)] = 2
    labels[_ball(shape, centre, 4)] = 1
    if et:
        labels[_ball(shape, centre, 2)] = 4
    return labels


def test_an_island_that_lowers_dice_turns_the_rule_on(tmp_path):
    pairs = []
    for i in range(4):
        truth = _tumour()
        pred = truth.copy()
        pred[_ball(truth.shape, (26, 26, 26), 3)] = 2  # a spurious oedema island, far from the tumour
        pairs.append((_write(tmp_path / "pred", f"c{i}", pred), _write(tmp_path / "truth", f"c{i}", truth)))
    choice = choose_postprocessing(pairs, BRATS)
    assert "WT" in choice.spec["largest_component"]
    wt = next(r for r in choice.report if r["target"] == "WT")
    assert wt["kept"] and wt["dice_after"] == pytest.approx(1.0) and wt["dice_before"] < 0.97


def test_a_rule_that_would_remove_true_lesions_stays_off(tmp_path):
    pairs = []
    for i in range(4):
        truth = _tumour() | 0
        second = _tumour(centre=(24, 24, 24))
        truth[second > 0] = second[second > 0]  # two true tumours, both predicted
        pairs.append((_write(tmp_path / "pred", f"c{i}", truth), _write(tmp_path / "truth", f"c{i}", truth)))
    choice = choose_postprocessing(pairs, BRATS)
    assert choice.spec["largest_component"] == [] and choice.spec["et_min_voxels"] is None
    assert all(not r["kept"] for r in choice.report)


def test_the_et_threshold_is_chosen_on_cases_without_et(tmp_path):
    pairs = []
    for i in range(6):
        truth = _tumour(et=False)  # no ET in truth
        pred = truth.copy()
        pred[12, 12, 12 + (i % 2)] = 4  # a one-voxel false ET: Dice 0 instead of 1
        pairs.append((_write(tmp_path / "pred", f"n{i}", pred), _write(tmp_path / "truth", f"n{i}", truth)))
    big = _tumour()
    pairs.append((_write(tmp_path / "pred", "big", big), _write(tmp_path / "truth", "big", big)))
    choice = choose_postprocessing(pairs, BRATS)
    et = next(r for r in choice.report if r["rule"] == "et_min_voxels")
    assert et["kept"] and 1 < choice.spec["et_min_voxels"] <= int((big == 4).sum())
    assert et["dice_after"] == pytest.approx(1.0)
    assert et["tried"]["0"] == pytest.approx(1 / 7)
