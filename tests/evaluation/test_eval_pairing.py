"""Pairing predictions with truth, and the per-case errors that come out of bad pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import read_label, save_label
from PIL import Image

from medseg.errors import DataError
from medseg.evaluation import evaluate
from medseg.evaluation.pairing import pair_cases


def _case_ids(truth: Path) -> list[str]:
    return sorted(p.name for p in truth.iterdir() if p.is_dir())


def test_bad_pairs_become_error_rows_naming_the_files(brats_truth: Path, tmp_path: Path) -> None:
    ids = _case_ids(brats_truth)
    pred = tmp_path / "pred"
    labels = {cid: read_label(brats_truth / cid / f"{cid}_seg.nii.gz") for cid in ids}
    # 0: cropped (shape differs); 1: affine shifted by 2 mm; 2: label value 3 (not BraTS 2021); 3: two files.
    save_label(labels[ids[0]][0][:, :, :-2], labels[ids[0]][1], pred / f"{ids[0]}.nii.gz")
    shifted = labels[ids[1]][1].copy()
    shifted[0, 3] += 2.0
    save_label(labels[ids[1]][0], shifted, pred / f"{ids[1]}.nii.gz")
    label2, affine2 = labels[ids[2]]
    save_label(np.where(label2 == 4, 3, label2), affine2, pred / f"{ids[2]}.nii.gz")
    save_label(*labels[ids[3]], pred / f"{ids[3]}.nii.gz")
    save_label(*labels[ids[3]], pred / f"{ids[3]}_seg.nii.gz")
    save_label(*labels[ids[3]], pred / "stray_case.nii.gz")

    result = evaluate(pred, brats_truth, "brats", tmp_path / "metrics.csv")
    assert not result.ok and len(result.failed) == 4
    errors = {c.case_id: c.error for c in result.cases}
    truth_of = {cid: str(brats_truth / cid / f"{cid}_seg.nii.gz") for cid in ids}
    assert "shape differs from truth" in errors[ids[0]] and "(32, 32, 22) vs (32, 32, 24)" in errors[ids[0]]
    assert str(pred / f"{ids[0]}.nii.gz") in errors[ids[0]] and truth_of[ids[0]] in errors[ids[0]]
    assert "affine differs from truth" in errors[ids[1]] and truth_of[ids[1]] in errors[ids[1]]
    assert "label values outside the convention" in errors[ids[2]] and "[3]" in errors[ids[2]]
    assert str(pred / f"{ids[2]}.nii.gz") in errors[ids[2]]
    assert f"several predictions for {ids[3]}" in errors[ids[3]]
    assert result.unmatched_predictions == [pred / "stray_case.nii.gz"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_evaluated"] == 0
    assert summary["unmatched_predictions"] == [str(pred / "stray_case.nii.gz")]
    assert "boxplot" not in result.files and "montage" not in result.files  # nothing to draw


def test_brats2023_layout_uses_its_own_convention(tmp_path: Path) -> None:
    from medseg.data.synth.writers import write_brats_dataset

    truth = tmp_path / "truth"
    write_brats_dataset(truth, cases=1, shape=(24, 24, 16), seed=0, fmt="brats2023")
    cid, = _case_ids(truth)
    label, affine = read_label(truth / cid / f"{cid}-seg.nii.gz")
    assert 3 in label and 4 not in label
    save_label(label, affine, tmp_path / "pred" / f"{cid}.nii.gz")
    result = evaluate(tmp_path / "pred", truth, "brats", tmp_path / "out" / "metrics.csv")
    assert result.ok and result.convention == "brats2023"
    assert result.cases[0].metrics["dice_ET"] == 1.0
    pairing = pair_cases(tmp_path / "pred", truth, "brats")
    assert pairing.pairs[0].reference == truth / cid / f"{cid}-t2f.nii.gz"  # FLAIR for the montage


def test_msd_layout_reference_is_the_flair_channel(tmp_path: Path) -> None:
    from medseg.data.synth.writers import write_brats_dataset

    truth = tmp_path / "truth"
    write_brats_dataset(truth, cases=1, shape=(20, 20, 16), seed=0, fmt="msd")
    (tmp_path / "pred").mkdir()
    pair, = pair_cases(tmp_path / "pred", truth, "brats").pairs
    assert pair.case_id == "BRATS_001" and pair.reference_channel == 0  # MSD stores FLAIR first
    assert pair.pred is None and "BRATS_001.nii.gz" in (pair.problem or "")


def test_wrong_kind_of_truth_folder(isic_truth: Path, tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError, match="not a BraTS dataset"):
        pair_cases(tmp_path / "pred", isic_truth, "brats")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no truth cases"):
        pair_cases(tmp_path / "pred", tmp_path / "empty", "isic")
    with pytest.raises(ValueError, match="unknown task"):
        pair_cases(tmp_path / "pred", tmp_path / "empty", "kidney")


def test_isic_flat_ground_truth_folder_finds_images(isic_truth: Path, tmp_path: Path) -> None:
    masks = isic_truth / "ISIC2018_Task1_Training_GroundTruth"
    pred = tmp_path / "pred"
    pred.mkdir()
    first = sorted(masks.iterdir())[0]
    mask = np.asarray(Image.open(first))
    Image.fromarray(np.stack([mask, mask // 2, mask], axis=-1)).save(pred / first.name)  # a colour mask
    pairing = pair_cases(pred, masks, "isic")
    assert len(pairing.pairs) == 3
    assert pairing.pairs[0].reference == isic_truth / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg"
    result = evaluate(pred, masks, "isic", tmp_path / "metrics.csv")
    errors = [c.error for c in result.cases]
    assert "colour mask" in errors[0] and str(pred / first.name) in errors[0]
    assert all("no prediction found" in e for e in errors[1:])


def test_labels_refuse_probabilities_and_shape_mismatch_in_2d(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    truth = np.zeros((12, 12, 6), np.uint8)
    truth[3:9, 3:9, 1:5] = 1
    save_label(truth, affine, tmp_path / "truth" / "vol.nii.gz")
    import nibabel as nib

    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(truth.astype(np.float32) * 0.7, affine), str(tmp_path / "pred" / "vol.nii.gz"))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "truth" / "img.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "pred" / "img.png")
    result = evaluate(tmp_path / "pred", tmp_path / "truth", "labels", tmp_path / "out.csv")
    errors = {c.case_id: c.error or "" for c in result.cases}
    assert "non-integer label values" in errors["vol"]
    assert "shape differs from truth" in errors["img"] and "10x12 vs 12x10" in errors["img"]


def test_brats_flat_truth_and_subfolder_prediction(brats_truth: Path, tmp_path: Path) -> None:
    cid = _case_ids(brats_truth)[0]
    flat = tmp_path / "truth"
    flat.mkdir()
    shutil.copy(brats_truth / cid / f"{cid}_seg.nii.gz", flat / f"{cid}_seg.nii.gz")
    pred = tmp_path / "pred" / cid
    pred.mkdir(parents=True)
    shutil.copy(brats_truth / cid / f"{cid}_seg.nii.gz", pred / "anything_seg_v2.nii.gz")
    result = evaluate(tmp_path / "pred", flat, "brats", tmp_path / "metrics.csv")
    assert result.ok and [c.case_id for c in result.cases] == [cid]
    assert result.cases[0].metrics["hd95_WT"] == 0.0
    assert "montage" in result.files  # drawn on the truth mask: the flat folder has no FLAIR
