"""One discovery code path finds BraTS 2021, BraTS 2023, MSD, nnU-Net-style, ISIC and DICOM layouts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from medseg.data.conventions import BRATS_CHANNELS
from medseg.data.datalist import assign_folds, split_fold, write_datalist
from medseg.data.discovery import discover
from medseg.data.readers import read_nifti
from medseg.data.synth.isic import write_isic_dataset
from medseg.data.synth.writers import write_brats_dataset
from medseg.errors import DataError

SHAPE = (24, 24, 20)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for fmt in ("brats2021", "brats2023", "msd", "nnunet"):
        write_brats_dataset(root / fmt, 3, SHAPE, seed=5, fmt=fmt)  # same seed: same anatomy in every layout
        out[fmt] = root / fmt
    write_isic_dataset(root / "isic", 3, size=(64, 48), seed=1)
    out["isic"] = root / "isic"
    return out


@pytest.mark.parametrize("fmt,layout,convention", [
    ("brats2021", "brats2021", "brats2021"), ("brats2023", "brats2023", "brats2023"),
    ("msd", "msd", "msd_brain"), ("nnunet", "generic", "SyntheticGlioma"),
])
def test_layout_detected(layouts, fmt, layout, convention):
    ds = discover(layouts[fmt])
    assert ds.layout == layout
    assert ds.convention.name == convention
    assert len(ds.cases) == 3 and all(c.has_label for c in ds.cases)
    assert not ds.problems


def _regions_of_first_case(ds) -> np.ndarray:
    """Load case 0 in canonical channel order and map its label to (TC, WT, ET) regions."""
    case = ds.cases[0]
    label, _ = read_nifti(case.label)
    if ds.layout == "generic":  # plain multi-class: regions from the dataset's own label names
        return np.stack([np.isin(label, (1, 3)), np.isin(label, (1, 2, 3)), label == 3]).astype(np.uint8)
    return ds.convention.to_regions(label)


def _canonical_image(ds) -> np.ndarray:
    case = ds.cases[0]
    if len(case.images) == 1:  # MSD 4D, channels last in the file
        data, _ = read_nifti(case.images[0])
        return np.moveaxis(data, -1, 0)[case.extra["channel_permutation"]]
    return np.stack([read_nifti(p)[0] for p in case.images])


def test_region_mapping_agrees_across_layouts_on_known_voxels(layouts):
    """The same synthetic case written in 4 layouts maps to identical regions and channels."""
    reference = _regions_of_first_case(discover(layouts["brats2021"]))
    ref_image = _canonical_image(discover(layouts["brats2021"]))
    assert reference[1].sum() > 0  # the case has a tumour
    for fmt in ("brats2023", "msd", "nnunet"):
        ds = discover(layouts[fmt])
        assert np.array_equal(_regions_of_first_case(ds), reference), fmt
        if fmt != "nnunet":
            assert np.allclose(_canonical_image(ds), ref_image), fmt
    # Known voxels: in 2021 an ET voxel is label 4, in 2023 and MSD 3; an edema voxel is 2 / 2 / 1.
    et = tuple(np.argwhere(reference[2])[0]) if reference[2].any() else None
    ed = tuple(np.argwhere(reference[1] & ~reference[0])[0])
    values = {fmt: read_nifti(discover(layouts[fmt]).cases[0].label)[0] for fmt in ("brats2021", "brats2023", "msd")}
    assert (values["brats2021"][ed], values["brats2023"][ed], values["msd"][ed]) == (2, 2, 1)
    if et is not None:
        assert (values["brats2021"][et], values["brats2023"][et], values["msd"][et]) == (4, 3, 3)


def test_msd_skips_appledouble_and_reorders_channels(layouts, tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    shutil.copytree(layouts["msd"], root)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    ds = discover(root)
    assert [c.case_id for c in ds.cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert ds.channel_names == BRATS_CHANNELS
    assert ds.cases[0].extra["channel_permutation"] == [1, 2, 3, 0]


def test_unlabelled_cases_are_marked(layouts, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(layouts["brats2021"], root)
    (root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").unlink()
    ds = discover(root)
    assert [c.has_label for c in ds.cases] == [True, False, True]
    datalist = json.loads(write_datalist(ds, tmp_path / "dl.json", folds=2).read_text())
    assert [e["case_id"] for e in datalist["testing"]] == ["BraTS2021_00001"]
    assert datalist["testing"][0]["has_label"] is False and "label" not in datalist["testing"][0]


def test_isic_and_generic_2d_pairs(layouts):
    ds = discover(layouts["isic"])
    assert ds.layout == "isic" and ds.spatial_dims == 2
    assert [c.case_id for c in ds.cases] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert all(c.label.name == f"{c.case_id}_segmentation.png" for c in ds.cases)


def test_generic_single_channel_any_classes(tmp_path):
    root = tmp_path / "Dataset042_Liver"
    for split in ("imagesTr", "labelsTr", "imagesTs"):
        (root / split).mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    for i in range(3):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), affine), root / "imagesTr" / f"liver_{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(np.full((8, 8, 4), i % 3, np.uint8), affine), root / "labelsTr" / f"liver_{i}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), affine), root / "imagesTs" / "liver_9_0000.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "liver": 1, "tumour": 2},
                                                   "file_ending": ".nii.gz"}))
    ds = discover(root)
    assert ds.layout == "generic" and ds.channel_names == ("CT",)
    assert ds.convention.valid_values == {0, 1, 2} and not ds.convention.is_region_based
    assert [(c.case_id, c.has_label) for c in ds.cases] == [("liver_0", True), ("liver_1", True), ("liver_2", True),
                                                            ("liver_9", False)]


def test_datalist_is_monai_readable_and_folds_are_deterministic(layouts, tmp_path):
    ds = discover(layouts["brats2021"])
    out = write_datalist(ds, tmp_path / "lists" / "datalist.json", folds=3, seed=1)
    items = load_decathlon_datalist(out, data_list_key="training")
    assert len(items) == 3
    assert all(Path(p).is_file() for item in items for p in item["image"])
    assert [Path(p).name for p in items[0]["image"]] == [f"BraTS2021_00000_{m}.nii.gz" for m in BRATS_CHANNELS]
    datalist = json.loads(out.read_text())
    assert sorted(e["fold"] for e in datalist["training"]) == [0, 1, 2]
    train, val = split_fold(datalist, 0)
    assert len(train) == 2 and len(val) == 1
    ids = [f"case{i}" for i in range(10)]
    assert assign_folds(ids, 5, seed=3) == assign_folds(list(reversed(ids)), 5, seed=3)
    assert assign_folds(ids, 5, seed=3) != assign_folds(ids, 5, seed=4)
    assert sorted(list(assign_folds(ids, 5, seed=3).values()).count(k) for k in range(5)) == [2] * 5


def test_unknown_layout_and_missing_dir_are_clear_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown layout"):
        discover(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def test_real_dicom_series_from_pydicom(tmp_path):
    """pydicom's bundled dicomdirtests: multi-slice CT/MR series, one folder mixing three series."""
    import pydicom

    source = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files" / "dicomdirtests"
    ds = discover(source)
    assert ds.layout == "dicom"
    by_id = {c.case_id: c for c in ds.cases}
    ct = by_id["98892001_CT5N"]
    assert ct.extra["num_files"] == 5 and ct.extra["modality"] == "CT" and ct.label is None
    rules = {(p.case_id, p.rule) for p in ds.problems}
    assert ("98892003_MR1", "mixed series") in rules
    assert not any(p.case_id == "98892001_CT5N" for p in ds.problems)
    # A series with one slice taken out is reported as missing a slice.
    broken = tmp_path / "ct"
    shutil.copytree(source / "98892001" / "CT5N", broken)
    positions = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in broken.iterdir()}
    middle = sorted(positions, key=positions.get)[2]
    middle.unlink()
    problems = discover(broken).problems
    assert [p.rule for p in problems] == ["missing slice"]
