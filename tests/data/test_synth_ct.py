"""``medseg data synth ct``: abdominal CT in HU, an organ with lesions, in the nnU-Net v2 layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.cli.main import main
from medseg.data.synth.ct import make_ct_case
from medseg.data.synth.writers import write_ct_dataset
from medseg.errors import InvalidValueError

SHAPE = (48, 48, 24)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _case(seed: int, index: int, shape: tuple[int, int, int] = SHAPE):
    return make_ct_case(np.random.default_rng(np.random.SeedSequence([seed, index])), shape)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    write_ct_dataset(out, 3, SHAPE, seed=1)
    return out


def test_layout_and_dataset_json(ct_dir):
    meta = json.loads((ct_dir / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (ct_dir / "imagesTr").iterdir()) == [f"case_{i:03d}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (ct_dir / "labelsTr").iterdir()) == [f"case_{i:03d}.nii.gz" for i in range(3)]
    for i in range(3):
        image = nib.load(ct_dir / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        label = nib.load(ct_dir / "labelsTr" / f"case_{i:03d}.nii.gz")
        assert image.get_data_dtype() == np.int16 and image.shape == label.shape == SHAPE
        np.testing.assert_array_equal(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) == {0, 1, 2}


def test_hounsfield_units_of_air_organ_lesion_and_bone(ct_dir):
    for i in range(3):
        hu = np.asarray(nib.load(ct_dir / "imagesTr" / f"case_{i:03d}_0000.nii.gz").dataobj).astype(np.float64)
        label = np.asarray(nib.load(ct_dir / "labelsTr" / f"case_{i:03d}.nii.gz").dataobj)
        assert abs(hu[:4, :4, :].mean() + 1000) < 5 and hu.min() >= -1024  # the corners are air
        organ = ndimage.binary_erosion(label == 1, iterations=2)  # away from partial volume
        assert organ.sum() > 50 and 48 < hu[organ].mean() < 72
        lesion = hu[label == 2].mean()
        assert hu[organ].mean() - 45 < lesion < hu[organ].mean() - 10, (lesion, hu[organ].mean())
        assert hu.max() > 400  # bone
        assert ((hu > -200) & (hu < -50)).mean() > 0.02  # fat


def test_ct_normalisation_beats_a_per_image_zscore(ct_dir):
    # The benchmark's premise: air and bone dominate a per-image z-score, so the organ/lesion
    # contrast shrinks to a small fraction of a unit; dataset foreground statistics keep it.
    pairs = [(np.asarray(nib.load(ct_dir / "imagesTr" / f"case_{i:03d}_0000.nii.gz").dataobj).astype(np.float64),
              np.asarray(nib.load(ct_dir / "labelsTr" / f"case_{i:03d}.nii.gz").dataobj)) for i in range(3)]
    foreground = np.concatenate([hu[label > 0] for hu, label in pairs])
    low, high = np.percentile(foreground, [0.5, 99.5])
    clipped = np.clip(foreground, low, high)
    mean, std = clipped.mean(), clipped.std()
    for hu, label in pairs:
        zscore = (hu - hu.mean()) / hu.std()
        ct = (np.clip(hu, low, high) - mean) / std
        naive = zscore[label == 1].mean() - zscore[label == 2].mean()
        good = ct[label == 1].mean() - ct[label == 2].mean()
        assert naive < 0.08 and good > 10 * naive, (naive, good)


def test_cases_depend_only_on_seed_and_index(tmp_path):
    a, b, c = _case(5, 1), _case(5, 1), _case(5, 2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    write_ct_dataset(tmp_path / "one", 1, SHAPE, seed=5)
    write_ct_dataset(tmp_path / "two", 2, SHAPE, seed=5)
    write_ct_dataset(tmp_path / "again", 2, SHAPE, seed=5)
    assert _digest(tmp_path / "two") == _digest(tmp_path / "again")
    for name in ("imagesTr/case_000_0000.nii.gz", "labelsTr/case_000.nii.gz"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "two" / "imagesTr" / "case_001_0000.nii.gz").dataobj),
                                  _case(5, 1).image)


def test_spacing_resamples_the_ct(tmp_path):
    write_ct_dataset(tmp_path, 2, SHAPE, seed=0, spacings=[(0.8, 0.8, 2.5), (1.0, 1.0, 1.0)])
    image = nib.load(tmp_path / "imagesTr" / "case_000_0000.nii.gz")
    label = nib.load(tmp_path / "labelsTr" / "case_000.nii.gz")
    assert image.shape == label.shape == (60, 60, 10)
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.8, 2.5), rtol=1e-6)
    assert image.get_data_dtype() == np.int16
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}
    assert nib.load(tmp_path / "imagesTr" / "case_001_0000.nii.gz").shape == SHAPE
    with pytest.raises(InvalidValueError, match=r"case 0 .*axis z would have 1 voxel"):
        write_ct_dataset(tmp_path / "bad", 1, SHAPE, spacings=[(1, 1, 20)])
    with pytest.raises(InvalidValueError, match="at least 16"):
        make_ct_case(np.random.default_rng(0), (48, 48, 8))


def test_cli_writes_a_dataset_that_check_and_list_accept(tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["data", "synth", "ct", "--out", str(out), "--cases", "2", "--shape", "48", "48", "24",
                 "--seed", "3", "--spacing", "1", "1", "2"]) == 0
    assert "wrote 2 ct cases" in capsys.readouterr().out
    assert nib.load(out / "imagesTr" / "case_001_0000.nii.gz").shape == (48, 48, 12)
    assert main(["data", "check", str(out)]) == 0
    assert "no problems found" in capsys.readouterr().out
    datalist = tmp_path / "list.json"
    assert main(["data", "list", str(out), "--out", str(datalist), "--folds", "2"]) == 0
    listed = json.loads(datalist.read_text())
    assert listed["channel_names"] == ["CT"] and len(listed["training"]) == 2
    assert main(["data", "synth", "ct", "--out", str(out), "--cases", "1"]) == 2  # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
