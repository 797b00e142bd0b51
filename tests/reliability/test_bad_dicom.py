"""Bad DICOM series (issue #16, item 5): gantry tilt, uneven spacing, folders without an image series.

The series are made by editing pydicom's shipped CT series ``CT5N`` with pydicom, beside pydicom's
shipped structured report and RT dose files; each is refused by ``data check`` and ``infer`` with one
line naming the folder and the rule, before the network runs.
"""


import math
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bad_input_helpers import (
    CT5N,
    RTDOSE,
    SR,
    failed_lines,
    infer,
    snapshot,
)
from rel_helpers import files_under

from medseg.cli.main import main

# --- DICOM rows: gantry tilt, uneven spacing, folders without an image series ---------------------------------


def _by_z(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                       .ImagePositionPatient[2]))


def _edit_slices(folder: Path, change: Callable[[pydicom.Dataset, int], None]) -> Path:
    for k, path in enumerate(_by_z(folder)):
        ds = pydicom.dcmread(path)
        change(ds, k)
        ds.save_as(path)
    return folder


def _tilted(folder: Path, degrees: float) -> Path:
    """What a CT gantry tilted by ``degrees`` writes: the slice plane tilted, the table still moving along z."""
    theta = math.radians(degrees)

    def tilt(ds: pydicom.Dataset, _k: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, f"{math.cos(theta):.6f}", f"{math.sin(theta):.6f}"]
        ds.GantryDetectorTilt = degrees

    return _edit_slices(folder, tilt)


def _spaced(folder: Path, gaps: list[float]) -> Path:
    """Slice k at the first slice's z plus the sum of the first k ``gaps`` (mm)."""
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    z0 = float(pydicom.dcmread(_by_z(folder)[0], stop_before_pixels=True).ImagePositionPatient[2])

    def move(ds: pydicom.Dataset, k: int) -> None:
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.6f}", f"{y:.6f}", f"{z0 + offsets[k]:.6f}"]

    return _edit_slices(folder, move)


def _only(file: Path, folder: Path) -> Path:
    """A folder holding a copy of ``file`` alone, under another patient name: the shipped SR's
    "Test^S R" would be redacted out of every path holding "test" (pytest's own folders)."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(file)
    ds.PatientName = "Zyxwv^Quentin"
    ds.save_as(folder / file.name)
    return folder


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of series: a good one, a 20°-tilted one, an unevenly spaced one, an SR-only and an RT-dose-only folder.

    The uneven one has gaps 2.5, 2.5, 2.75, 2.75 mm: each gap is within 10% of the median (the
    old rule), but slice 2 lies 0.25 mm (9.5% of a slice) from ITK's even grid.
    """
    root = tmp_path_factory.mktemp("dicom") / "séries ü"
    folders = {
        "good": shutil.copytree(CT5N, root / "good"),
        "tilted": _tilted(shutil.copytree(CT5N, root / "tilted"), 20.0),
        "uneven": _spaced(shutil.copytree(CT5N, root / "uneven"), [2.5, 2.5, 2.75, 2.75]),
        "sr": _only(SR, root / "report only"),
        "rtdose": _only(RTDOSE, root / "dose only"),
    }
    return {"root": root, **folders}


# rule and what else the line must say, per broken folder
DICOM_RULES = {
    "tilted": ("gantry tilt", "20.0°"),
    "uneven": ("uneven spacing", "0.25 mm"),
    "sr": ("no image series", "Comprehensive SR Storage (1.2.840.10008.5.1.4.1.1.88.33)"),
    "rtdose": ("no image series", "RT Dose Storage (1.2.840.10008.5.1.4.1.1.481.2)"),
}


def test_dicom_data_check(dicom_set, capsys):
    before = snapshot(dicom_set["root"])
    assert main(["data", "check", str(dicom_set["root"])]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    for name, (rule, detail) in DICOM_RULES.items():
        hits = [r for r in rows if str(dicom_set[name]) in r and rule in r]
        assert len(hits) == 1 and detail in hits[0], (name, out)
    assert "4 problem(s) in 4 case(s) of 5 (dicom)" in out
    assert "Traceback" not in out + err
    assert snapshot(dicom_set["root"]) == before


def test_dicom_infer_fails_each_bad_series_before_the_network(dicom_set, ct_model, tmp_path, capfd, predictions):
    out_dir = tmp_path / "out"
    assert infer(ct_model, [dicom_set["root"]], out_dir, "--dicom-seg") == 1
    out, err = capfd.readouterr()
    failed = failed_lines(out)
    assert len(failed) == len(DICOM_RULES), out
    for name, (rule, detail) in DICOM_RULES.items():
        hits = [line for line in failed if str(dicom_set[name]) in line and rule in line]
        assert len(hits) == 1 and detail in hits[0], (name, out)
    assert "Traceback" not in out + err and "WARNING: In" not in err  # no raw ITK warning either
    assert files_under(out_dir) == {"good.nii.gz", "good_seg.dcm"}  # the good series only
    assert len(predictions) == 1, predictions


def test_spacing_within_the_tolerance_is_read_without_a_raw_itk_warning(ct_model, tmp_path, capfd):
    """Gaps 2.5, 2.5, 2.55, 2.55 mm: every slice within 2% of a slice of the even grid ITK builds (the
    rule allows 5%); ITK's own warning ("Non uniform sampling ...") no longer reaches the terminal."""
    series = _spaced(shutil.copytree(CT5N, tmp_path / "in" / "nearly even"), [2.5, 2.5, 2.55, 2.55])
    assert main(["data", "check", str(series)]) == 0
    assert infer(ct_model, [series], tmp_path / "out") == 0
    out, err = capfd.readouterr()
    assert "Non uniform sampling" not in out + err and "WARNING" not in err, err
    mask = nib.load(tmp_path / "out" / "nearly even.nii.gz")
    assert mask.shape == (16, 16, 5)
    assert np.isclose(float(np.linalg.norm(mask.affine[:3, 2])), 2.525, atol=1e-4)  # (z_last - z_first) / 4
