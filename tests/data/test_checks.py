"""``medseg data check``: a clean synthetic set passes; every kind of breakage is reported in one run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.cli.main import main
from medseg.data.checks import check_dataset
from medseg.data.synth.isic import write_isic_dataset
from medseg.errors import DataError
from medseg.transforms.planar import read_mask


def _medseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=300)


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*") if p.is_file()}


def test_synth_then_check_exits_0(tmp_path):
    out = tmp_path / "T"
    result = _medseg("data", "synth", "brats", "--out", str(out), "--cases", "4", "--shape", "32", "32", "24")
    assert result.returncode == 0, result.stderr
    check = _medseg("data", "check", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "4 cases (brats2021), no problems found" in check.stdout


def test_broken_cases_all_reported_in_one_run(brats2021_dir, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(brats2021_dir, root)
    c0, c1, c2, c3 = (root / f"BraTS2021_{i:05d}" for i in range(4))
    deleted = c0 / "BraTS2021_00000_t2.nii.gz"
    deleted.unlink()
    truncated = c1 / "BraTS2021_00001_t1.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    nan_file = c2 / "BraTS2021_00002_flair.nii.gz"
    img = nib.load(nan_file)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), nan_file)
    seg = c2 / "BraTS2021_00002_seg.nii.gz"
    img = nib.load(seg)
    labels = np.asarray(img.dataobj).copy()
    labels[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(labels, img.affine), seg)
    moved = c3 / "BraTS2021_00003_t1ce.nii.gz"
    img = nib.load(moved)
    affine = img.affine.copy()
    affine[:3, 3] += 1.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), moved)
    before = _snapshot(root)

    result = _medseg("data", "check", str(root))
    assert result.returncode == 1
    table = result.stdout
    expected = [(deleted, "missing modality"), (truncated, "unreadable"), (nan_file, "non-finite values"),
                (seg, "unexpected label values"), (moved, "affine mismatch")]
    lines = table.splitlines()
    for path, rule in expected:
        assert any(str(path.relative_to(tmp_path)) in line and rule in line for line in lines), (path, rule, table)
    assert "values [7]" in table
    assert "5 problem(s) in 4 case(s) of 4" in table
    assert "Traceback" not in result.stderr
    assert _snapshot(root) == before, "data check must never modify the data"


def test_shape_mismatch_and_4d_where_3d_expected(brats2021_dir, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(brats2021_dir, root)
    t2 = root / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    img = nib.load(t2)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), t2)
    flair = root / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, -1), img.affine), flair)
    report = check_dataset(root)
    found = {(Path(p.path).name, p.rule) for p in report.problems}
    assert ("BraTS2021_00000_t2.nii.gz", "shape mismatch") in found
    assert ("BraTS2021_00001_flair.nii.gz", "not 3D") in found
    assert not report.ok


def test_msd_wrong_channel_count(tmp_path):
    from medseg.data.synth.writers import write_brats_dataset

    write_brats_dataset(tmp_path, 2, (24, 24, 20), fmt="msd")
    image = tmp_path / "imagesTr" / "BRATS_002.nii.gz"
    img = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), image)
    report = check_dataset(tmp_path)
    assert [(Path(p.path).name, p.rule) for p in report.problems] == [("BRATS_002.nii.gz", "wrong channels")]


def test_isic_checks(tmp_path, capsys):
    write_isic_dataset(tmp_path, 3, size=(64, 48), seed=0)
    truth = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    assert main(["data", "check", str(tmp_path)]) == 0
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(truth / "ISIC_0000001_segmentation.png")
    Image.fromarray(np.full((48, 64), 3, np.uint8)).save(truth / "ISIC_0000002_segmentation.png")
    image0 = tmp_path / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg"
    image0.write_bytes(image0.read_bytes()[:100])
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "ISIC_0000000.jpg" in out and "unreadable" in out
    assert "ISIC_0000001_segmentation.png" in out and "mask size mismatch" in out and "mask is 50x40" in out
    assert "ISIC_0000002_segmentation.png" in out and "mask values" in out


def test_isic_check_and_loader_apply_the_same_mask_rules(tmp_path):
    # One set of rules (medseg.data.readers.mask_problems) for `data check` and training's loader:
    # a 1-bit PNG mask (black/white) is valid for both; a grey level is refused by both.
    write_isic_dataset(tmp_path, 2, size=(64, 48), seed=0)
    truth = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    images = tmp_path / "ISIC2018_Task1-2_Training_Input"
    one_bit = np.zeros((48, 64), bool)
    one_bit[10:30, 20:40] = True
    Image.fromarray(one_bit).convert("1").save(truth / "ISIC_0000000_segmentation.png")
    grey = np.zeros((48, 64), np.uint8)
    grey[5, 5] = 128
    Image.fromarray(grey).save(truth / "ISIC_0000001_segmentation.png")
    problems = check_dataset(tmp_path).problems
    assert [(Path(p.path).name, p.rule) for p in problems] == [("ISIC_0000001_segmentation.png", "mask values")]
    assert "[128] besides 0 and 255" in problems[0].detail
    loaded = read_mask(truth / "ISIC_0000000_segmentation.png", (48, 64), images / "ISIC_0000000.jpg")
    np.testing.assert_array_equal(loaded, one_bit.astype(np.uint8))
    with pytest.raises(DataError, match=r"ISIC_0000001_segmentation.png: mask values \(values \[128\] besides"):
        read_mask(truth / "ISIC_0000001_segmentation.png", (48, 64))


def test_cli_list_writes_datalist(brats2021_dir, tmp_path, capsys):
    out = tmp_path / "datalist.json"
    assert main(["data", "list", str(brats2021_dir), "--out", str(out), "--folds", "2", "--seed", "3"]) == 0
    assert out.is_file() and "brats2021: 4 cases (4 labelled" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and str(tmp_path / "missing") in err
    with pytest.raises(Exception):
        main(["--debug", "data", "check", str(tmp_path / "missing")])
