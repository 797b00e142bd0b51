"""Bad volumes (issue #16, item 5): 2D and 5D NIfTI, two files for one modality, qform far from sform, and
label values above 65535; each one line naming the file and the rule, before any work.

Every input is a real file written with nibabel (a copy of the good 4-case BraTS set with one case
broken, or a generic dataset). Each runs through the real CLI: ``data check`` exits 1 with a row
naming the file and the rule; ``train`` exits 2 before anything is written; ``infer`` fails the case,
naming the file and the rule, writes the others, and never runs the network on it.
"""


import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bad_input_helpers import (
    CASE,
    GOOD,
    TRAIN_SET,
    UNET_1CH,
    failed_lines,
    infer,
    one_line_error,
    snapshot,
    train_refusal,
)
from rel_helpers import files_under
from tiny_training import BUNDLE, set_args

from medseg.checkpoint import save_checkpoint
from medseg.cli.main import main
from medseg.networks import build_network

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
    before = snapshot(root)
    assert main(["data", "check", str(root)]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    for path in bad["check"]:
        assert any(str(path) in line and rule in line for line in rows), (path, out)
    for path in bad.get("both", []):  # both files are named
        assert any(rule in line and path.name in line for line in rows), (path, out)
    assert "in 1 case(s) of 4" in out  # the other cases were read too, and passed
    assert "Traceback" not in out + err
    assert snapshot(root) == before, "data check must never modify the data"


@pytest.mark.parametrize("row", list(ROWS))
def test_train(row, broken, tmp_path, capsys, isolated_global_state):
    root, bad = broken[row]
    line, _ = train_refusal(root, tmp_path / "out", capsys, bad["train"], ROWS[row][1])
    for path in bad.get("both", []):
        assert path.name in line


@pytest.mark.parametrize("row", list(ROWS))
def test_infer(row, broken, brats_model, tmp_path, capsys, predictions):
    root, bad = broken[row]
    out_dir = tmp_path / "prédictions"
    code = infer(brats_model, [root], out_dir)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = [line for line in failed_lines(out) if line.startswith(f"{CASE}:")]
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
    one_line_error(run.stderr, "train", bad["train"], "not 3D")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()



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
    assert infer(bundle, [data / "imagesTr"], tmp_path / "out") == 0
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
    line = one_line_error(capsys.readouterr().err, "data", data / "dataset.json", rule)
    assert str(too_big) in line
    out_dir = tmp_path / "run"
    assert main(["train", str(BUNDLE.parent / "generic_3d"), "--data", str(data), "--output", str(out_dir),
                 "--set", "max_epochs=1", "--set", "num_workers=0", "--no-tracking"]) == 2
    line = one_line_error(capsys.readouterr().err, "train", data / "dataset.json", rule)
    assert str(too_big) in line
    assert not out_dir.exists() or files_under(out_dir) == set()
