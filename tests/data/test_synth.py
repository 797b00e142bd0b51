"""Synthetic data: deterministic, realistic enough (contrast ordering), valid layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.synth.brats import make_brats_case
from medseg.data.synth.isic import make_isic_image, write_isic_dataset
from medseg.data.synth.writers import write_brats_dataset


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_brats_synth_is_deterministic(tmp_path):
    a = make_brats_case(np.random.default_rng(3), (32, 32, 24))
    b = make_brats_case(np.random.default_rng(3), (32, 32, 24))
    c = make_brats_case(np.random.default_rng(4), (32, 32, 24))
    assert all(np.array_equal(a.images[k], b.images[k]) for k in a.images)
    assert np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    write_brats_dataset(tmp_path / "x", 2, (24, 24, 20), seed=1)
    write_brats_dataset(tmp_path / "y", 2, (24, 24, 20), seed=1)
    assert _digest(tmp_path / "x") == _digest(tmp_path / "y")


def test_brats_contrasts_order_tissues_like_mri():
    case = make_brats_case(np.random.default_rng(11), (64, 64, 48), p_no_enhancing=0.0)
    label = case.label
    t1ce, t2, flair = (case.images[k].astype(float) for k in ("t1ce", "t2", "flair"))
    oedema, enhancing = label == 2, label == 4
    head = case.images["t1"] > 0.5 * np.percentile(case.images["t1"], 60)
    normal = head & (label == 0)
    assert oedema.any() and enhancing.any()
    # Oedema is hyperintense on FLAIR and T2; the enhancing rim is bright on T1ce.
    assert flair[oedema].mean() > 1.3 * flair[normal].mean()
    assert t2[oedema].mean() > t2[normal].mean()
    assert t1ce[enhancing].mean() > 1.3 * t1ce[normal].mean()
    # Noise and bias: not piecewise constant.
    assert np.std(flair[normal]) > 0.05 * flair[normal].mean()


def test_brats_cases_vary_and_some_lack_enhancing():
    cases = [make_brats_case(np.random.default_rng(np.random.SeedSequence([0, i])), (32, 32, 24)) for i in range(12)]
    sizes = [int((c.label > 0).sum()) for c in cases]
    assert len(set(sizes)) == len(sizes)
    assert any(not c.has_enhancing for c in cases) and any(c.has_enhancing for c in cases)
    for c in cases:
        assert (4 in np.unique(c.label)) == c.has_enhancing


def test_brats_files_have_brats_naming_dtype_and_non_identity_affine(tmp_path):
    write_brats_dataset(tmp_path, 1, (24, 24, 20), seed=0)
    files = sorted(p.name for p in (tmp_path / "BraTS2021_00000").iterdir())
    assert files == [f"BraTS2021_00000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
    img = nib.load(tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert img.shape == (24, 24, 20)
    assert not np.allclose(img.affine, np.eye(4))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def test_isic_synth_layout_and_masks(tmp_path):
    from PIL import Image

    paths = write_isic_dataset(tmp_path, 3, seed=2)
    for path in paths:
        mask_path = tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"{path.stem}_segmentation.png"
        image, mask = np.asarray(Image.open(path)), np.asarray(Image.open(mask_path))
        assert image.ndim == 3 and image.shape[2] == 3
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) == {0, 255}
        # The lesion is darker than the skin around it.
        gray = image.mean(axis=2)
        assert gray[mask == 255].mean() < gray[mask == 0].mean()
    rgb1, m1 = make_isic_image(np.random.default_rng(5), (80, 60))
    rgb2, m2 = make_isic_image(np.random.default_rng(5), (80, 60))
    assert np.array_equal(rgb1, rgb2) and np.array_equal(m1, m2)


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        write_brats_dataset(tmp_path, 1, (24, 24, 20), fmt="brats2019")
    with pytest.raises(ValueError, match="at least 16"):
        make_brats_case(np.random.default_rng(0), (8, 8, 8))
