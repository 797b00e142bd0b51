"""More bad inputs (issue #16, item 5): each one is one line naming the file and the rule, before any work.

Every input is a real file: NIfTI volumes written with nibabel (a copy of the good 4-case BraTS
set with one case broken), DICOM series made by editing pydicom's shipped CT series ``CT5N``
with pydicom, and pydicom's shipped structured report and RT dose files. Each runs through the
real CLI (``medseg.cli.main.main``, the console script's entry point; the kill test and one
refusal run ``python -m medseg`` in a child process):

* ``data check``: exit 1, a row naming the file and the rule, the other cases checked, nothing modified;
* ``train``: exit 2 before anything is written, one line ``medseg train: error: FILE: RULE (...)``;
* ``infer``: exit 1, the case failed naming the file and the rule, the other cases written, and
  the network never ran on the bad case (the sliding-window predictor is counted).

No traceback is printed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from rel_helpers import brats_bundle, files_under, pydicom_series, single_channel_bundle
from tiny_training import BUNDLE, set_args

from medseg.checkpoint import save_checkpoint
from medseg.cli.main import main
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.networks import build_network

CASE = "BraTS2021_00001"  # the case each NIfTI row breaks
GOOD = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
TRAIN_SET = {"max_epochs": "1", "roi_size": "[16,16,16]", "num_workers": "0",
             "network_spec#kwargs#features": "[4,8,16]"}
CT5N = pydicom_series("dicomdirtests", "98892001", "CT5N")  # 5 axial CT slices of 16x16, 2.5 mm apart
SR = pydicom_series("test-SR.dcm")  # Comprehensive SR Storage: no pixels
RTDOSE = pydicom_series("rtdose.dcm")  # RT Dose Storage: a 15-frame dose grid, not an image series
UNET_1CH = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                                       "strides": [2], "num_res_units": 0, "norm": "batch"}}


# --- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture
def predictions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sources the network ran on, in order (``SlidingWindowPredictor.predict`` is counted)."""
    seen: list[str] = []
    real = SlidingWindowPredictor.predict

    def counted(self, image, *args, **kwargs):
        seen.append(str(getattr(image, "meta", {}).get("filename_or_obj", "?")))
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(SlidingWindowPredictor, "predict", counted)
    return seen


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _one_line_error(err: str, command: str, bad: Path, rule: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medseg {command}: error: {bad}: {rule}"), err
    assert "Traceback" not in err
    return lines[0]


def _failed_lines(out: str) -> list[str]:
    """The lines of the summary's ``failed (N):`` list."""
    assert "failed (" in out, out
    return [line.strip() for line in out[out.index("failed ("):].splitlines()[1:]]


def _infer(bundle: Path, inputs: list[Path], out: Path, *flags: str) -> int:
    return main(["infer", str(bundle), "--input", *map(str, inputs), "--output", str(out), "--no-progress", *flags])


@pytest.fixture(scope="module")
def brats_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-channel BraTS-regions model bundle."""
    return brats_bundle(tmp_path_factory.mktemp("bundle4"))


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 1-channel, 2-class model bundle (MONAI U-Net, random weights)."""
    return single_channel_bundle(tmp_path_factory.mktemp("bundle1"), network=UNET_1CH)


# --- NIfTI rows: 2D and 5D volumes, two files for one modality, qform != sform ------------------------------


def _file(case: Path, modality: str, ext: str = ".nii.gz") -> Path:
    return case / f"{case.name}_{modality}{ext}"


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), img.affine), path)


def two_d(case: Path) -> dict[str, Path | list[Path]]:
    """Every file of the case is one 2D slice (the case that ended training in SIGABRT)."""
    files = [_file(case, m) for m in ("t1", "t1ce", "t2", "flair", "seg")]
    for path in files:
        _rewrite(path, lambda d: np.ascontiguousarray(d[:, :, 12]))
    return {"check": files, "train": min(files, key=str), "infer": _file(case, "t1")}


def five_d(case: Path) -> dict[str, Path | list[Path]]:
    """T2 as (X, Y, Z, 1, 1): its extra dimensions are all 1, which the old rule let through."""
    path = _file(case, "t2")
    _rewrite(path, lambda d: d[:, :, :, None, None])
    return {"check": [path], "train": path, "infer": path}


def duplicate_modality(case: Path) -> dict[str, Path | list[Path]]:
    """``_t1.nii.gz`` and an uncompressed ``_t1.nii`` of other content: which one is T1?"""
    gz, plain = _file(case, "t1"), _file(case, "t1", ".nii")
    img = nib.load(gz)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), plain)
    return {"check": [gz], "train": gz, "infer": gz, "both": [gz, plain]}


def qform_30mm_from_sform(case: Path) -> dict[str, Path | list[Path]]:
    """T1ce's qform 30 mm to the right of its sform, both coded (ITK reads one, nibabel the other)."""
    path = _file(case, "t1ce")
    img = nib.load(path)
    shifted = img.affine.copy()
    shifted[0, 3] += 30.0
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(shifted, code=1)
    nib.save(out, path)
    reread = nib.load(path).header
    assert reread["qform_code"] == 1 and reread["sform_code"] == 1
    return {"check": [path], "train": path, "infer": path}


# row -> (breaks the case and says which file each command names, rule of check and train, rule of infer)
ROWS: dict[str, tuple[Callable[[Path], dict[str, Path | list[Path]]], str, str]] = {
    "2d": (two_d, "not 3D", "not 3D"),
    "5d": (five_d, "not 3D", "not 3D"),
    "duplicate-modality": (duplicate_modality, "duplicate modality", "duplicate modality"),
    "qform-sform": (qform_30mm_from_sform, "qform/sform mismatch", "qform/sform mismatch"),
}


@pytest.fixture(scope="module")
def broken(tiny_brats_rel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Row -> (dataset folder, the files each command must name): one copy of the good set per row."""
    out = {}
    for name, (breaker, _, _) in ROWS.items():
        root = tmp_path_factory.mktemp(f"more-{name}") / "data set ü"
        shutil.copytree(tiny_brats_rel, root)
        out[name] = (root, breaker(root / CASE))
    return out


@pytest.mark.parametrize("row", list(ROWS))
def test_data_check(row, broken, capsys):
    root, bad = broken[row]
    rule = ROWS[row][1]
    before = _snapshot(root)
    assert main(["data", "check", str(root)]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    for path in bad["check"]:
        assert any(str(path) in line and rule in line for line in rows), (path, out)
    for path in bad.get("both", []):  # both files are named
        assert any(rule in line and path.name in line for line in rows), (path, out)
    assert "in 1 case(s) of 4" in out  # the other cases were read too, and passed
    assert "Traceback" not in out + err
    assert _snapshot(root) == before, "data check must never modify the data"


@pytest.mark.parametrize("row", list(ROWS))
def test_train(row, broken, tmp_path, capsys, isolated_global_state):
    root, bad = broken[row]
    out_dir = tmp_path / "out"
    code = main(["train", str(BUNDLE), "--data", str(root), "--output", str(out_dir), *set_args(TRAIN_SET),
                 "--no-tracking"])
    _, err = capsys.readouterr()
    assert code == 2, err
    line = _one_line_error(err, "train", bad["train"], ROWS[row][1])
    for path in bad.get("both", []):
        assert path.name in line
    assert not out_dir.exists() or files_under(out_dir) == set(), "a refused run must write nothing"


@pytest.mark.parametrize("row", list(ROWS))
def test_infer(row, broken, brats_model, tmp_path, capsys, predictions):
    root, bad = broken[row]
    out_dir = tmp_path / "prédictions"
    code = _infer(brats_model, [root], out_dir)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = [line for line in _failed_lines(out) if line.startswith(f"{CASE}:")]
    assert len(failed) == 1 and str(bad["infer"]) in failed[0] and ROWS[row][2] in failed[0], out
    for path in bad.get("both", []):
        assert path.name in failed[0]
    assert code == 1
    assert files_under(out_dir) == {f"{case}.nii.gz" for case in GOOD}  # the others written, nothing partial
    assert len(predictions) == len(GOOD) and not any(CASE in p for p in predictions), predictions


def test_a_2d_case_is_refused_by_train_in_a_real_process(broken, tmp_path):
    """The console script itself: the all-2D case ended training in SIGABRT; now one line, exit 2."""
    root, bad = broken["2d"]
    run = subprocess.run([sys.executable, "-m", "medseg", "train", str(BUNDLE), "--data", str(root), "--output",
                          str(tmp_path / "out"), *set_args(TRAIN_SET), "--no-tracking"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    _one_line_error(run.stderr, "train", bad["train"], "not 3D")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()


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
    before = _snapshot(dicom_set["root"])
    assert main(["data", "check", str(dicom_set["root"])]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    for name, (rule, detail) in DICOM_RULES.items():
        hits = [r for r in rows if str(dicom_set[name]) in r and rule in r]
        assert len(hits) == 1 and detail in hits[0], (name, out)
    assert "4 problem(s) in 4 case(s) of 5 (dicom)" in out
    assert "Traceback" not in out + err
    assert _snapshot(dicom_set["root"]) == before


def test_dicom_infer_fails_each_bad_series_before_the_network(dicom_set, ct_model, tmp_path, capfd, predictions):
    out_dir = tmp_path / "out"
    assert _infer(ct_model, [dicom_set["root"]], out_dir, "--dicom-seg") == 1
    out, err = capfd.readouterr()
    failed = _failed_lines(out)
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
    assert _infer(ct_model, [series], tmp_path / "out") == 0
    out, err = capfd.readouterr()
    assert "Non uniform sampling" not in out + err and "WARNING" not in err, err
    mask = nib.load(tmp_path / "out" / "nearly even.nii.gz")
    assert mask.shape == (16, 16, 5)
    assert np.isclose(float(np.linalg.norm(mask.affine[:3, 2])), 2.525, atol=1e-4)  # (z_last - z_first) / 4


# --- label values above 65535 --------------------------------------------------------------------------------


def _generic_dataset(root: Path, labels: dict[str, str], value: int) -> Path:
    """A 3-case nnU-Net/MSD-style dataset; case c1's label holds ``value``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    for i in range(3):
        nib.save(nib.Nifti1Image(rng.uniform(1, 100, (16, 16, 12)).astype(np.float32), affine),
                 root / "imagesTr" / f"c{i}.nii.gz")
        dtype = np.int64 if value > 2**31 - 1 else np.int32
        label = np.zeros((16, 16, 12), dtype)
        label[4:8, 4:8, 4:8] = value if i == 1 else 1
        nib.save(nib.Nifti1Image(label, affine, dtype=dtype), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(
        '{"name": "big labels", "modality": {"0": "CT"}, "labels": '
        + "{" + ", ".join(f'"{k}": "{v}"' for k, v in labels.items()) + "}}")
    return root


def _label_bundle(root: Path, values: list[int], winner: int) -> Path:
    """A 1-channel model whose every voxel is class ``winner`` (weights zero, the last bias decides)."""
    network = {"name": "unet", "kwargs": {**UNET_1CH["kwargs"], "out_channels": len(values)}}
    model = build_network(network["name"], **network["kwargs"])
    state = model.state_dict()
    biases = [k for k, v in state.items() if k.endswith("bias") and v.shape == (len(values),)]
    for key, value in state.items():
        if key.endswith(("weight", "bias")):
            value.zero_()
    state[biases[-1]][winner] = 10.0
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(
        '{"roi_size": [16, 16, 16], "sw_batch_size": 2, "sw_overlap": 0.25}')
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "label_values": values, "channels": ["image"]}
    save_checkpoint(root / "models" / "model.pt", state, network=network, label_convention="big labels",
                    channel_names=["image"], preprocessing=prep)
    return root


def test_label_value_70000_is_checked_and_written_exactly(tmp_path, capsys):
    """Masks are uint8, uint16 or uint32, the smallest that holds the values: 70000 is written, not an OverflowError."""
    data = _generic_dataset(tmp_path / "big", {"0": "background", "1": "a", "70000": "b"}, 70000)
    assert main(["data", "check", str(data)]) == 0
    bundle = _label_bundle(tmp_path / "bundle", [0, 1, 70000], winner=2)
    assert _infer(bundle, [data / "imagesTr"], tmp_path / "out") == 0
    out, err = capsys.readouterr()
    assert "OverflowError" not in out + err and "Traceback" not in out + err
    mask = nib.load(tmp_path / "out" / "c1.nii.gz")
    assert mask.get_data_dtype() == np.uint32
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) == {70000}


def test_a_label_value_no_mask_can_hold_is_one_line_naming_dataset_json(tmp_path, capsys, isolated_global_state):
    too_big = 2**32  # one more than uint32 holds
    data = _generic_dataset(tmp_path / "huge", {"0": "background", str(too_big): "b"}, too_big)
    rule = "label value out of range"
    assert main(["data", "check", str(data)]) == 2
    line = _one_line_error(capsys.readouterr().err, "data", data / "dataset.json", rule)
    assert str(too_big) in line
    out_dir = tmp_path / "run"
    assert main(["train", str(BUNDLE.parent / "generic_3d"), "--data", str(data), "--output", str(out_dir),
                 "--set", "max_epochs=1", "--set", "num_workers=0", "--no-tracking"]) == 2
    line = _one_line_error(capsys.readouterr().err, "train", data / "dataset.json", rule)
    assert str(too_big) in line
    assert not out_dir.exists() or files_under(out_dir) == set()


# --- output names longer than the file system allows ------------------------------------------------------------


def _volume(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.uniform(1, 100, (20, 18, 12)).astype(np.float32), affine), str(path))
    return path


@pytest.fixture
def long_named(tmp_path: Path) -> dict[str, Path]:
    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("the test names are sized for a 255-byte NAME_MAX")
    long = _volume(tmp_path / "in" / ("é" * 120 + ".nii.gz"), 0)  # 240 + 7 = 247 bytes: legal
    assert len(os.fsencode(long.name)) == 247
    return {"long": long, "short": _volume(tmp_path / "in" / "short.nii.gz", 1)}


def test_an_output_name_too_long_fails_the_case_before_the_network(long_named, ct_model, tmp_path, capsys,
                                                                   predictions):
    """With --save-prob the 247-byte input's ``_uncertainty.nii.gz`` would be 259 bytes: refused up front."""
    out_dir = tmp_path / "out"
    assert _infer(ct_model, [long_named["long"], long_named["short"]], out_dir, "--save-prob") == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = _failed_lines(out)
    assert len(failed) == 1 and str(long_named["long"]) in failed[0], out
    assert "output name too long" in failed[0] and "259-byte" in failed[0] and "255 bytes" in failed[0]
    assert files_under(out_dir) == {"short.nii.gz", "short_prob.nii.gz", "short_uncertainty.nii.gz"}
    assert len(predictions) == 1 and predictions[0].endswith("short.nii.gz"), predictions  # never on the long one


def test_a_legal_long_output_name_is_written(long_named, ct_model, tmp_path, capsys):
    """Without --save-prob the 247-byte mask name is legal: written (its temporary name is shortened to fit)."""
    out_dir = tmp_path / "out"
    assert _infer(ct_model, [long_named["long"]], out_dir) == 0, capsys.readouterr().out
    assert files_under(out_dir) == {long_named["long"].name}


# --- temporary files of a killed run --------------------------------------------------------------------------

# The real CLI, SIGKILLed by itself at its first output rename: every temporary file of that case
# is complete and none is renamed, as after a kill at the worst moment.
_KILLED_AT_FIRST_RENAME = """
import os, signal, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(src)).startswith(".") and str(dst).endswith(".nii.gz"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from medseg.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rerun_removes_the_temporary_files_of_a_killed_infer(ct_model, tmp_path):
    inputs = [_volume(tmp_path / "in" / f"case{i}.nii.gz", i) for i in range(2)]
    out_dir = tmp_path / "out"
    args = ["infer", str(ct_model), "--input", *map(str, inputs), "--output", str(out_dir), "--no-progress",
            "--save-prob"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_FIRST_RENAME, *args], capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = sorted(p.name for p in out_dir.iterdir())
    assert len(left) == 3 and all(name.startswith(".case0") and name.endswith(".part.nii.gz") for name in left), left
    tag = re.search(r"\.(\d+)-([0-9a-f]{6})\.[a-z0-9_]{8}\.part\.nii\.gz$", left[0])
    assert tag is not None and int(tag[1]) != os.getpid(), left
    # Not medseg's to remove: a user's hidden file, and a temporary file of a process that still runs (this one).
    user_file = out_dir / ".notes.part.txt"
    user_file.write_text("mine")
    live = out_dir / f".case9.nii.gz.{os.getpid()}-{tag[2]}.abcd1234.part.nii.gz"
    live.write_bytes(b"being written")

    rerun = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, timeout=300,
                           env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in left:
        assert f"removed {out_dir / name}, left by an interrupted run" in rerun.stderr
    assert files_under(out_dir) == {f"case{i}{s}.nii.gz" for i in range(2) for s in ("", "_prob", "_uncertainty")} \
        | {user_file.name, live.name}
    assert user_file.read_text() == "mine" and live.read_bytes() == b"being written"


def test_the_temporary_file_pattern_is_medsegs_own(tmp_path):
    """Only ``.<target>.<pid>-<host>.<8 random>.part<ext>`` files of dead processes of this host (or the
    untagged names of older medseg versions) are removed; any other ``.part`` name stays."""
    from medseg.utils import atomic

    host = atomic._host_tag()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    removable = [f".scan.nii.gz.{dead}-{host}.k2j4_x9q.part.nii.gz", ".last.pt.abcd1234.part.pt",
                 ".model.onnx.zz99yy88.part.onnx"]
    kept = [f".scan.nii.gz.{os.getpid()}-{host}.k2j4_x9q.part.nii.gz",  # this process: still writing
            f".scan.nii.gz.{dead}-{'0' * 6 if host != '0' * 6 else '1' * 6}.k2j4_x9q.part.nii.gz",  # another host
            ".notes.part.txt", ".thesis.partial.tex", ".draft.part1.nii.gz", "scan.nii.gz.abcd1234.part.nii.gz",
            ".a.nii.gz.abcd1234.part.png"]
    for name in removable + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = atomic.remove_partial_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(removable)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_temporary_names_fit_name_max(tmp_path, monkeypatch):
    """A 254-byte target gets a temporary name of at most 255 bytes that keeps its extension."""
    from medseg.utils.atomic import atomic_write_bytes

    if os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("sized for a 255-byte NAME_MAX")
    target = tmp_path / ("日" * 82 + "x.nii.gz")  # 246 + 1 + 7 = 254 bytes
    seen = []
    real = os.replace

    def spy(src, dst, *args, **kwargs):
        seen.append(Path(src).name)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert len(os.fsencode(seen[0])) <= 255 and seen[0].endswith(".part.nii.gz") and seen[0].startswith(".日")
