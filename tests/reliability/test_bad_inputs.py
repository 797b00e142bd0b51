"""The bad-input matrix: every broken file is one clear line naming it and the rule, for each command.

Each row breaks one file of an otherwise good 4-case BraTS set (real files written with
nibabel) and runs the real CLI (``medseg.cli.main.main``, the console script's entry point)
for each command the row applies to:

* ``data check``: exit 1, a table row naming the file and the rule, the other 3 cases checked,
  nothing modified;
* ``train``: exit 2 before anything is written, one line ``medseg train: error: FILE: RULE (...)``;
* ``infer``: exit 1, the case reported failed naming the file and the rule, the other 3 cases
  written, nothing partial in the output folder.

No traceback is printed unless ``--debug`` is given.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bad_input_helpers import one_line_error, snapshot, train_refusal
from rel_helpers import brats_bundle, files_under
from tiny_training import BUNDLE, set_args

from medseg.cli.main import main

CASE = "BraTS2021_00001"  # the case every row breaks
GOOD = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
TRAIN_SET = {"max_epochs": "1", "roi_size": "[16,16,16]", "num_workers": "0",
             "network_spec#kwargs#features": "[4,8,16]"}


def _file(case: Path, modality: str) -> Path:
    return case / f"{case.name}_{modality}.nii.gz"


def _rewrite(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    img = nib.load(path)
    data, affine = change(np.asarray(img.dataobj), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def truncated(case: Path) -> Path:
    path = _file(case, "t1")
    path.write_bytes(path.read_bytes()[:3000])
    return path


def not_nifti(case: Path) -> Path:
    path = _file(case, "t1")
    path.write_bytes(b"%PDF-1.4 a report saved under a NIfTI name\n" * 40)
    return path


def zero_bytes(case: Path) -> Path:
    path = _file(case, "t2")
    path.write_bytes(b"")
    return path


def four_d(case: Path) -> Path:
    path = _file(case, "flair")
    _rewrite(path, lambda d, a: (np.stack([d, d], -1), a))
    return path


def missing_modality(case: Path) -> Path:
    path = _file(case, "t1ce")
    path.unlink()
    return path


def shape_mismatch(case: Path) -> Path:
    path = _file(case, "t2")
    _rewrite(path, lambda d, a: (d[:-2], a))
    return path


def affine_mismatch(case: Path) -> Path:
    path = _file(case, "t1ce")

    def shift(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a[:3, 3] += 1.5
        return d, a

    _rewrite(path, shift)
    return path


def nan_voxels(case: Path) -> Path:
    path = _file(case, "flair")

    def poison(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = d.astype(np.float32)
        d[3, 4, 5] = np.nan
        return d, a

    _rewrite(path, poison)
    return path


def label_values(case: Path) -> Path:
    path = _file(case, "seg")

    def seven(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = d.copy()
        d[0, 0, 0] = 7
        return d, a

    _rewrite(path, seven)
    return path


# row -> (breaks the case and returns the bad file, rule of data check and train, rule of infer or None)
ROWS: dict[str, tuple[Callable[[Path], Path], str, str | None]] = {
    "truncated": (truncated, "unreadable", "unreadable"),
    "not-nifti": (not_nifti, "unreadable", "unreadable"),
    "zero-byte": (zero_bytes, "unreadable", "unreadable"),
    "4d-for-3d": (four_d, "not 3D", "channel count"),
    "missing-modality": (missing_modality, "missing modality", "missing modality"),
    "shape-mismatch": (shape_mismatch, "shape mismatch", "geometry mismatch"),
    "affine-mismatch": (affine_mismatch, "affine mismatch", "geometry mismatch"),
    "nan-voxels": (nan_voxels, "non-finite values", "non-finite values"),
    "label-values": (label_values, "unexpected label values", None),  # inference reads no labels
}


@pytest.fixture(scope="module")
def broken(tiny_brats_rel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Row -> (dataset folder, the broken file): one copy of the good set per row."""
    out = {}
    for name, (breaker, _, _) in ROWS.items():
        root = tmp_path_factory.mktemp(f"bad-{name}") / "data set ü"
        shutil.copytree(tiny_brats_rel, root)
        out[name] = (root, breaker(root / CASE))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-channel BraTS-regions model bundle for ``medseg infer``."""
    return brats_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.mark.parametrize("row", list(ROWS))
def test_data_check(row, broken, capsys):
    root, bad = broken[row]
    rule = ROWS[row][1]
    before = snapshot(root)
    assert main(["data", "check", str(root)]) == 1
    out, err = capsys.readouterr()
    assert any(str(bad) in line and rule in line for line in out.splitlines()), out
    assert "in 1 case(s) of 4" in out  # the other cases were read too, and passed
    assert "Traceback" not in out + err
    assert snapshot(root) == before, "data check must never modify the data"


@pytest.mark.parametrize("row", list(ROWS))
def test_train(row, broken, tmp_path, capsys, isolated_global_state):
    root, bad = broken[row]
    _, err = train_refusal(root, tmp_path / "out", capsys, bad, ROWS[row][1])
    assert "run 'medseg data check" in err


@pytest.mark.parametrize("row", [r for r in ROWS if ROWS[r][2] is not None])
def test_infer(row, broken, bundle, tmp_path, capsys):
    root, bad = broken[row]
    out_dir = tmp_path / "prédictions ü"
    code = main(["infer", str(bundle), "--input", str(root), "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = [line for line in out.splitlines() if line.strip().startswith(f"{CASE}:")]
    assert len(failed) == 1 and str(bad) in failed[0] and ROWS[row][2] in failed[0], out
    assert code == 1
    assert files_under(out_dir) == {f"{case}.nii.gz" for case in GOOD}  # the others written, nothing partial


def test_train_in_a_real_process_prints_one_line_and_debug_shows_the_traceback(broken, tmp_path):
    """The console script itself: one line, no traceback; ``--debug`` gives the traceback."""
    root, bad = broken["truncated"]
    args = ["train", str(BUNDLE), "--data", str(root), "--output", str(tmp_path / "out"),
            *set_args(TRAIN_SET), "--no-tracking"]
    quiet = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 2
    one_line_error(quiet.stderr, "train", bad, "unreadable")
    loud = subprocess.run([sys.executable, "-m", "medseg", "--debug", *args], capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    assert f"DataError: {bad}: unreadable" in loud.stderr
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()


def test_good_set_under_spaces_and_non_ascii_passes_check_and_infer(tiny_brats_rel, bundle, tmp_path, capsys):
    """The clean set lives under ``rel brats dätä/`` (see conftest); the kill tests also train from it."""
    assert " " in str(tiny_brats_rel) and "ä" in str(tiny_brats_rel)
    assert main(["data", "check", str(tiny_brats_rel)]) == 0
    out_dir = tmp_path / "out 日本 é"
    assert main(["infer", str(bundle), "--input", str(tiny_brats_rel), "--output", str(out_dir),
                 "--no-progress"]) == 0
    assert files_under(out_dir) == {f"{case}.nii.gz" for case in [CASE, *GOOD]}
    capsys.readouterr()


def test_output_equal_to_the_input_folder_is_refused(tiny_brats_rel, bundle, tmp_path, capsys,
                                                     isolated_global_state):
    data = tmp_path / "data"
    shutil.copytree(tiny_brats_rel, data)
    before = snapshot(data)
    assert main(["infer", str(bundle), "--input", str(data), "--output", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {data} is the input folder {data}" in err
    assert main(["train", str(BUNDLE), "--data", str(data), "--output", str(data), "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {data} is the dataset folder {data}" in err
    assert main(["train", str(BUNDLE), "--data", str(data), "--output", str(data / "run"),
                 "--no-tracking"]) == 2
    assert "is inside the dataset folder" in capsys.readouterr().err
    assert snapshot(data) == before
