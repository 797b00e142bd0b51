"""``medseg data`` and ``medseg infer`` read a folder as the same layout: one detector (issue #17)."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from medseg.data.discovery import discover
from medseg.data.layouts.detect import detect_layout
from medseg.data.synth.isic import write_isic_dataset
from medseg.data.synth.writers import write_brats_dataset
from medseg.errors import DataError
from medseg.inference.inputs import expand_inputs
from medseg.inference.model import load_inference_model

DICOM = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files" / "dicomdirtests"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for fmt in ("brats2021", "brats2023", "msd"):
        write_brats_dataset(root / fmt, 2, (16, 16, 16), seed=5, fmt=fmt)
        out[fmt] = root / fmt
    write_isic_dataset(root / "isic", 2, size=(40, 32), seed=1)
    out["isic"] = root / "isic"
    out["dicom"] = DICOM
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    return out


@pytest.mark.parametrize("name,kind,data_layout", [
    ("brats2021", "brats", "brats2021"), ("brats2023", "brats", "brats2023"), ("msd", "msd", "msd"),
    ("isic", "isic", "isic"), ("dicom", "dicom", "dicom"),
])
def test_data_and_infer_see_the_same_layout(folders, multiclass_bundle, name, kind, data_layout):
    layout = detect_layout(folders[name])
    assert layout.kind == kind
    assert discover(folders[name]).layout == data_layout
    cases = expand_inputs([folders[name]], load_inference_model(multiclass_bundle))
    if kind == "isic":  # a 3D model is told what the folder is, not "no inputs found"
        assert len(cases) == 1 and "ISIC 2018 dataset of 2D images; this model is 3D" in cases[0].problem
    else:
        expected = {"dicom"} if kind == "dicom" else {"nifti"}
        assert cases and {c.kind for c in cases} == expected, [(c.kind, c.problem) for c in cases]


def test_a_folder_mixing_brats_conventions_is_both_to_the_detector_and_refused_by_data(folders, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for fmt in ("brats2021", "brats2023"):
        for case in folders[fmt].iterdir():
            if case.is_dir():
                (mixed / case.name).symlink_to(case)
    assert sorted(detect_layout(mixed).brats) == ["brats2021", "brats2023"]
    with pytest.raises(DataError, match="mixed layouts"):
        discover(mixed)


def test_nothing_known(folders):
    assert detect_layout(folders["empty"]).kind == "none"
