"""End-to-end ``medseg evaluate`` on tiny synthetic BraTS, ISIC and generic-label sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import read_csv_rows, read_label, save_label
from PIL import Image
from scipy import ndimage

from medseg.evaluation.metrics import ISIC_METRICS

STATS = {"mean", "median", "std", "q1", "q3", "min", "max", "n"}


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def _brats_predictions(truth: Path, pred: Path) -> list[str]:
    """Case 0 perfect, case 1 without ET, case 2 dilated, case 3 missing; three naming styles."""
    cases = sorted(p.name for p in truth.iterdir() if p.is_dir())
    for i, cid in enumerate(cases[:3]):
        label, affine = read_label(truth / cid / f"{cid}_seg.nii.gz")
        if i == 0:
            save_label(label, affine, pred / f"{cid}.nii.gz")
        elif i == 1:
            save_label(np.where(label == 4, 1, label), affine, pred / f"{cid}_seg.nii.gz")
        else:
            grown = ndimage.binary_dilation(label > 0) & (label == 0)
            save_label(np.where(grown, 2, label), affine, pred / cid / "model_seg.nii.gz")
    return cases


def test_brats_end_to_end(brats_truth: Path, tmp_path: Path, cli, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred"
    cases = _brats_predictions(brats_truth, pred)
    out = tmp_path / "results" / "metrics.csv"
    status = cli(["evaluate", "--pred", str(pred), "--truth", str(brats_truth), "--task", "brats",
                  "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1  # one case has no prediction
    assert f"FAILED {cases[3]}: no prediction found" in captured.out

    rows = {r["case_id"]: r for r in read_csv_rows(out)}
    assert list(rows) == cases
    assert list(rows[cases[0]]) == ["case_id", "status", "dice_WT", "dice_TC", "dice_ET",
                                    "hd95_WT", "hd95_TC", "hd95_ET", "error"]
    perfect = rows[cases[0]]
    assert perfect["status"] == "ok"
    for region in ("WT", "TC", "ET"):
        assert float(perfect[f"dice_{region}"]) == 1.0 and float(perfect[f"hd95_{region}"]) == 0.0
    no_et = rows[cases[1]]
    assert float(no_et["dice_WT"]) == 1.0 and float(no_et["dice_TC"]) == 1.0
    assert float(no_et["dice_ET"]) == 0.0 and float(no_et["hd95_ET"]) == 373.13
    dilated = rows[cases[2]]
    assert 0.0 < float(dilated["dice_WT"]) < 1.0 and float(dilated["dice_ET"]) == 1.0
    assert 0.0 < float(dilated["hd95_WT"]) <= math.sqrt(3.0)  # grown by one 1 mm voxel
    missing = rows[cases[3]]
    assert missing["status"] == "failed" and missing["dice_WT"] == ""
    assert cases[3] in missing["error"] and "no prediction found" in missing["error"]

    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["task"] == "brats" and summary["convention"] == "brats2021"
    assert (summary["n_cases"], summary["n_evaluated"], summary["n_failed"]) == (4, 3, 1)
    assert summary["failed"][0]["case_id"] == cases[3]
    dice_et = summary["metrics"]["dice_ET"]
    assert set(dice_et) == STATS and dice_et["n"] == 3
    assert dice_et["mean"] == pytest.approx(2 / 3)
    assert dice_et["median"] == 1.0 and dice_et["min"] == 0.0 and dice_et["q1"] == 0.5
    assert dice_et["std"] == pytest.approx(np.std([1.0, 0.0, 1.0]))
    assert summary["metrics"]["hd95_ET"]["max"] == 373.13
    for name in ("boxplot.png", "montage.png"):
        _assert_png(out.parent / name)


def test_brats_all_present_exit_zero_and_prefixed_outputs(brats_truth: Path, tmp_path: Path, cli) -> None:
    pred = tmp_path / "pred"
    for case in sorted(p for p in brats_truth.iterdir() if p.is_dir()):
        label, affine = read_label(case / f"{case.name}_seg.nii.gz")
        save_label(label, affine, pred / f"{case.name}-seg.nii.gz")
    out = tmp_path / "run1.csv"
    assert cli(["evaluate", "--pred", str(pred), "--truth", str(brats_truth), "--task", "brats",
                "--out", str(out), "--montage-cases", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == \
        ["run1.csv", "run1_boxplot.png", "run1_montage.png", "run1_summary.json"]
    assert all(r["status"] == "ok" and float(r["dice_ET"]) == 1.0 for r in read_csv_rows(out))


def test_brats_hd95_uses_anisotropic_header_spacing(tmp_path: Path, cli) -> None:
    """Flat folders, spacing (1, 1.5, 3) mm: ET shifted by 2 slices along the 3 mm axis -> HD95 6 mm."""
    affine = np.diag([1.0, 1.5, 3.0, 1.0])
    truth = np.zeros((24, 24, 16), np.uint8)
    truth[3:21, 3:21, 2:12] = 2
    pred = truth.copy()
    truth[4:20, 4:20, 4:6] = 4    # thin wide ET slab
    pred[4:20, 4:20, 6:8] = 4     # the same slab 2 slices (6 mm) further
    save_label(truth, affine, tmp_path / "truth" / "case_a.nii.gz")
    save_label(pred, affine, tmp_path / "pred" / "case_a.nii.gz")
    out = tmp_path / "res" / "metrics.csv"
    assert cli(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                "--task", "brats", "--out", str(out)]) == 0
    row, = read_csv_rows(out)
    assert float(row["hd95_ET"]) == pytest.approx(6.0)
    assert float(row["hd95_WT"]) == 0.0 and float(row["dice_WT"]) == 1.0


def test_isic_end_to_end(isic_truth: Path, tmp_path: Path, cli) -> None:
    masks = sorted((isic_truth / "ISIC2018_Task1_Training_GroundTruth").glob("*_segmentation.png"))
    pred = tmp_path / "pred"
    pred.mkdir()
    expected_j = []
    for i, path in enumerate(masks):
        truth = np.asarray(Image.open(path)) > 127
        guess = truth if i == 0 else ndimage.binary_erosion(truth, iterations=2 if i == 1 else 6)
        expected_j.append(np.count_nonzero(guess & truth) / np.count_nonzero(guess | truth))
        name = path.name if i == 2 else path.name.replace("_segmentation", "")  # both names accepted
        Image.fromarray(guess.astype(np.uint8) * 255).save(pred / name)
    out = tmp_path / "isic" / "metrics.csv"
    assert cli(["evaluate", "--pred", str(pred), "--truth", str(isic_truth), "--task", "isic",
                "--out", str(out)]) == 0
    rows = read_csv_rows(out)
    assert [r["case_id"] for r in rows] == [p.name.replace("_segmentation.png", "") for p in masks]
    assert tuple(rows[0])[2:8] == ISIC_METRICS
    for row, j in zip(rows, expected_j):
        assert float(row["jaccard"]) == pytest.approx(j, abs=1e-7)
        assert float(row["thresholded_jaccard"]) == pytest.approx(j if j >= 0.65 else 0.0, abs=1e-7)
        assert float(row["precision"]) == 1.0  # eroded masks lie inside the truth
    assert float(rows[0]["jaccard"]) == 1.0
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["metrics"]["thresholded_jaccard"]["mean"] == pytest.approx(
        np.mean([j if j >= 0.65 else 0.0 for j in expected_j]))
    _assert_png(out.parent / "boxplot.png")
    _assert_png(out.parent / "montage.png")


def test_labels_end_to_end_on_nnunet_layout(tmp_path: Path, cli) -> None:
    from medseg.data.synth.writers import write_brats_dataset

    truth = tmp_path / "truth"
    write_brats_dataset(truth, cases=2, shape=(24, 24, 16), seed=0, fmt="nnunet")
    pred = tmp_path / "pred"
    labels = sorted((truth / "labelsTr").glob("*.nii.gz"))
    first, affine = read_label(labels[0])
    save_label(first, affine, pred / labels[0].name)
    second, affine = read_label(labels[1])
    save_label(np.where(second == 1, 0, second), affine, pred / labels[1].name)  # class 1 missed
    out = tmp_path / "metrics.csv"
    assert cli(["evaluate", "--pred", str(pred), "--truth", str(truth), "--task", "labels",
                "--out", str(out)]) == 0
    rows = read_csv_rows(out)
    assert list(rows[0])[2:-1] == ["dice_1", "dice_2", "dice_3", "hd95_1", "hd95_2", "hd95_3"]
    assert all(float(rows[0][f"dice_{c}"]) == 1.0 for c in (1, 2, 3))
    assert float(rows[1]["dice_1"]) == 0.0 and float(rows[1]["hd95_1"]) == 373.13
    _assert_png(tmp_path / "montage.png")


def test_labels_2d_png_folder_fills_absent_classes(tmp_path: Path, cli) -> None:
    a = np.zeros((40, 32), np.uint8)
    a[5:20, 5:20] = 1
    a[25:35, 10:25] = 2
    b = np.zeros((40, 32), np.uint8)
    b[8:30, 8:28] = 1  # no class 2 in this image
    for folder in ("truth", "pred"):
        (tmp_path / folder).mkdir()
        Image.fromarray(a).save(tmp_path / folder / "img_a.png")
        Image.fromarray(b).save(tmp_path / folder / "img_b.png")
    out = tmp_path / "metrics.csv"
    assert cli(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                "--task", "labels", "--out", str(out)]) == 0
    rows = {r["case_id"]: r for r in read_csv_rows(out)}
    assert float(rows["img_b"]["dice_2"]) == 1.0 and float(rows["img_b"]["hd95_2"]) == 0.0
    assert float(rows["img_a"]["hd95_2"]) == 0.0


def test_missing_truth_folder_is_a_one_line_error(
    tmp_path: Path, cli, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pred").mkdir()
    status = cli(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "nope"),
                  "--task", "brats", "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert status == 2
    assert "nope: not found" in err and "Traceback" not in err
    status = cli(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "pred"),
                  "--task", "isic", "--out", str(tmp_path)])
    assert status == 2 and "not a file" in capsys.readouterr().err
