"""``medseg data synth brats --spacing``: cases drawn at 1 mm, resampled over the same extent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main
from medseg.data.synth.brats import make_brats_case, resample_case
from medseg.data.synth.resample import resample_volume, resampled_shape
from medseg.data.synth.writers import write_brats_dataset
from medseg.errors import InvalidValueError

SHAPE = (24, 24, 16)
# Label values each format may hold, and the files whose shape and affine are checked.
FORMAT_LABELS = {"brats2021": {0, 1, 2, 4}, "brats2023": {0, 1, 2, 3}, "brats2024": {0, 1, 2, 3, 4},
                 "msd": {0, 1, 2, 3}, "nnunet": {0, 1, 2, 3}}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _volumes(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.nii.gz"))


def _is_label(path: Path) -> bool:
    return "labelsTr" in path.parts or path.name.endswith(("_seg.nii.gz", "-seg.nii.gz"))


@pytest.mark.parametrize("fmt", sorted(FORMAT_LABELS))
def test_every_format_is_written_at_the_spacing(tmp_path, fmt):
    spacing = (0.8, 1.5, 2.0)
    write_brats_dataset(tmp_path, 2, SHAPE, seed=0, fmt=fmt, spacings=[spacing])
    expected_shape = (30, 16, 8)  # round(24 / 0.8), round(24 / 1.5), round(16 / 2)
    expected_affine = np.diag([-0.8, -1.5, 2.0, 1.0])
    expected_affine[1, 3] = (16 - 1) * 1.5  # brats_affine's origin: y runs from (n - 1) * s down to 0
    files = _volumes(tmp_path)
    assert len(files) == (4 if fmt == "msd" else 10)
    for path in files:
        img = nib.load(path)
        assert img.shape[:3] == expected_shape, path
        np.testing.assert_allclose(img.header.get_zooms()[:3], spacing, rtol=1e-6)
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-5)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        values = set(np.unique(np.asarray(img.dataobj)).tolist())
        if _is_label(path):
            assert values <= FORMAT_LABELS[fmt] and len(values) > 1, (path, values)
        elif fmt != "msd":
            assert img.get_data_dtype() == np.int16


def test_resampled_case_keeps_labels_and_image_range():
    case = make_brats_case(np.random.default_rng(7), (32, 32, 24), cavity=True)
    resampled = resample_case(case, (0.7, 1.3, 2.2))
    shape = resampled_shape((32, 32, 24), (0.7, 1.3, 2.2))
    assert shape == (46, 25, 11)
    assert resampled.label.shape == shape and resampled.cavity.shape == shape
    assert set(np.unique(resampled.label).tolist()) <= set(np.unique(case.label).tolist())
    assert resampled.cavity.dtype == bool and resampled.cavity.any()
    assert not np.any(resampled.label[resampled.cavity])  # the cavity is still label 0
    for name, image in resampled.images.items():
        assert image.dtype == np.int16 and image.shape == shape
        assert case.images[name].min() <= image.min() and image.max() <= case.images[name].max()
    assert resampled.has_enhancing == bool((resampled.label == 4).any())
    assert resample_case(case, (1.0, 1.0, 1.0)) is case


def test_resampling_samples_the_same_extent_linearly_for_images_and_nearest_for_labels():
    ramp = np.broadcast_to((10 * np.arange(20, dtype=np.int16))[:, None, None], (20, 10, 10)).copy()
    coarse = resample_volume(ramp, (2.0, 1.0, 1.0), order=1)
    # Ten 2 mm voxels centred on the 1 mm grid: centres at 0.5, 2.5, ... 18.5 mm, halfway between samples.
    np.testing.assert_array_equal(coarse[:, 0, 0], 5 + 20 * np.arange(10))
    fine = resample_volume(ramp, (0.5, 1.0, 1.0), order=1)
    assert fine.shape == (40, 10, 10)
    assert abs(fine[:, 0, 0].mean() - ramp[:, 0, 0].mean()) < 0.5  # the same centre
    labels = np.zeros((20, 10, 10), np.uint8)
    labels[:10], labels[10:] = 1, 4
    nearest = resample_volume(labels, (0.7, 1.3, 3.0), order=0)
    assert set(np.unique(nearest).tolist()) == {1, 4}  # linear would have made 2s and 3s at the edge


def test_mixed_spacings_cycle_over_the_cases(tmp_path):
    spacings = [(1.0, 1.0, 1.0), (1.5, 1.5, 2.0)]
    write_brats_dataset(tmp_path / "mixed", 3, SHAPE, seed=2, fmt="nnunet", spacings=spacings)
    write_brats_dataset(tmp_path / "plain", 1, SHAPE, seed=2, fmt="nnunet")
    zooms = [nib.load(tmp_path / "mixed" / "labelsTr" / f"case_{i:03d}.nii.gz").header.get_zooms() for i in range(3)]
    assert [tuple(float(z) for z in zoom) for zoom in zooms] == [(1.0, 1.0, 1.0), (1.5, 1.5, 2.0), (1.0, 1.0, 1.0)]
    assert nib.load(tmp_path / "mixed" / "labelsTr" / "case_001.nii.gz").shape == (16, 16, 8)
    # A 1 mm entry writes exactly what no spacing writes.
    for name in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_000.nii.gz"):
        assert (tmp_path / "mixed" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


@pytest.mark.parametrize("fmt", ["brats2021", "brats2024", "msd"])
def test_no_spacing_writes_the_bytes_written_before(tmp_path, fmt):
    write_brats_dataset(tmp_path / "default", 2, SHAPE, seed=4, fmt=fmt)
    write_brats_dataset(tmp_path / "none", 2, SHAPE, seed=4, fmt=fmt, spacings=None)
    write_brats_dataset(tmp_path / "one_mm", 2, SHAPE, seed=4, fmt=fmt, spacings=[(1, 1, 1)])
    default = _digest(tmp_path / "default")
    assert default == _digest(tmp_path / "none") == _digest(tmp_path / "one_mm")
    assert all(nib.load(p).shape[:3] == SHAPE for p in _volumes(tmp_path / "default"))


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, 1.0, 20.5), (float("nan"), 1.0, 1.0)])
def test_bad_spacings_are_refused_before_anything_is_written(tmp_path, spacing):
    with pytest.raises(InvalidValueError, match=r"every value must be > 0 and <= 20 mm"):
        write_brats_dataset(tmp_path / "out", 2, SHAPE, spacings=[(1.0, 1.0, 1.0), spacing])
    assert not (tmp_path / "out").exists()


def test_too_few_voxels_names_the_case_and_the_axis(tmp_path):
    with pytest.raises(InvalidValueError, match=r"case 1 \(spacing 1x1x4 mm\): axis z would have 4 voxel"):
        write_brats_dataset(tmp_path / "out", 3, SHAPE, spacings=[(1, 1, 1), (1, 1, 4)])
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidValueError, match="at least one"):
        write_brats_dataset(tmp_path / "out", 1, SHAPE, spacings=[])


def test_cli_spacing_is_repeatable_and_checked(tmp_path, capsys):
    out = tmp_path / "aniso"
    assert main(["data", "synth", "brats", "--format", "nnunet", "--cases", "2", "--shape", "24", "24", "16",
                 "--spacing", "0.9", "0.9", "2", "--spacing", "1", "1", "1.5", "--out", str(out)]) == 0
    shapes = [nib.load(out / "imagesTr" / f"case_{i:03d}_0003.nii.gz").shape for i in range(2)]
    assert shapes == [(27, 27, 8), (24, 24, 11)]
    assert main(["data", "check", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "synth", "brats", "--shape", "24", "24", "16", "--spacing", "25", "1", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "every value must be > 0 and <= 20 mm" in capsys.readouterr().err
    assert main(["data", "synth", "isic", "--cases", "1", "--spacing", "1", "1", "1",
                 "--out", str(tmp_path / "isic")]) == 2
    assert "--spacing applies to brats and ct" in capsys.readouterr().err
