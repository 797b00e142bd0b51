"""Output names of one batch never collide, and reruns replace exactly what they should.

* Two cases whose output files coincide (``scan``'s ``scan_prob.nii.gz`` is ``scan_prob``'s
  mask; 2D ``lesion``'s ``lesion_overlay.png`` is ``lesion_overlay``'s mask) stop the batch
  before anything runs, naming both inputs and the file.
* ``--overwrite`` replaces a case's whole set: a previous run's ``_prob`` / ``_uncertainty`` /
  ``_seg.dcm`` / 2D ``_prob.png`` that this run does not write are removed.
* Without ``--overwrite`` no existing file is replaced, byte for byte and by modification time.

All through the real CLI (``medseg.cli.main.main``), on real files: NIfTI volumes written with
nibabel, PNG/JPEG images written with Pillow, pydicom's CT series ``CT5N``; tiny real networks
with random weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from rel_helpers import files_under, pydicom_series, single_channel_bundle, volume_file

from medseg.checkpoint import save_checkpoint
from medseg.cli.main import main
from medseg.networks import build_network

CT5N = pydicom_series("dicomdirtests", "98892001", "CT5N")
_OLD = 1_000_000_000  # an mtime (2001) that no write of this test can produce


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different tiny 1-channel 3D models (seeds 0 and 1) and a tiny 2D RGB lesion model."""
    root = tmp_path_factory.mktemp("bundles")
    network = {"name": "light_unet", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                                "features": [4, 8, 16]}}
    torch.manual_seed(0)
    planar = build_network(network["name"], **network["kwargs"])
    save_checkpoint(root / "2d" / "models" / "model.pt", planar, network=network, label_convention="isic",
                    channel_names=["R", "G", "B"], extra={"output_names": ["lesion"]},
                    preprocessing={"task": "binary", "spatial_dims": 2, "image_size": [32, 32],
                                   "resize": "stretch", "normalize": "imagenet"})
    return {"a": single_channel_bundle(root / "a", seed=0), "b": single_channel_bundle(root / "b", seed=1),
            "2d": root / "2d"}


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def _infer(bundle: Path, inputs: list[Path], out: Path, *flags: str) -> int:
    return main(["infer", str(bundle), "--input", *map(str, inputs), "--output", str(out), "--no-progress", *flags])


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _age(folder: Path) -> None:
    for p in folder.iterdir():
        os.utime(p, ns=(_OLD * 10**9, _OLD * 10**9))


def test_a_mask_that_is_another_cases_probability_map_is_refused_before_anything_runs(bundles, tmp_path, capsys):
    scan = volume_file(tmp_path / "in" / "scan.nii.gz", 0)
    scan_prob = volume_file(tmp_path / "in" / "scan_prob.nii.gz", 1)
    out = tmp_path / "out"
    for flags in (("--save-prob",), ("--overwrite",)):  # --overwrite would remove scan's stale scan_prob.nii.gz
        assert _infer(bundles["a"], [tmp_path / "in"], out, *flags) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "scan_prob.nii.gz" in err and str(scan) in err and str(scan_prob) in err, err
        assert "'scan'" in err and "'scan_prob'" in err, err
        assert not out.exists(), flags  # refused before the network ran or anything was written
    # Without either flag the two cases' files are distinct: both are segmented.
    assert _infer(bundles["a"], [scan, scan_prob], out) == 0
    assert files_under(out) == {"scan.nii.gz", "scan_prob.nii.gz"}
    assert nib.load(str(out / "scan_prob.nii.gz")).shape == (20, 18, 12)  # a mask, not a 4D probability map


def test_a_2d_mask_that_is_another_images_overlay_is_refused(bundles, tmp_path, capsys):
    lesion = _image(tmp_path / "in" / "lesion.jpg", 0)
    overlay = _image(tmp_path / "in" / "lesion_overlay.jpg", 1)
    out = tmp_path / "out"
    assert _infer(bundles["2d"], [lesion, overlay], out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lesion_overlay.png" in err and str(lesion) in err and str(overlay) in err, err
    assert "overlay of case 'lesion'" in err and "mask of case 'lesion_overlay'" in err, err
    assert not out.exists()


def _prepare(kind: str, tmp_path: Path, bundles: dict[str, Path]) -> tuple[list[Path], Path, Path, list[str], str]:
    """Inputs, the first and second model, the extra flags of the first run and the case id."""
    if kind == "2d":
        return [_image(tmp_path / "in" / "lesion.png", 0)], bundles["2d"], bundles["2d"], ["--save-prob"], "lesion"
    if kind == "dicom":
        series = shutil.copytree(CT5N, tmp_path / "in" / "CT5N")
        return [series], bundles["a"], bundles["b"], ["--save-prob", "--dicom-seg"], "CT5N"
    return [volume_file(tmp_path / "in" / "scan.nii.gz", 0)], bundles["a"], bundles["b"], ["--save-prob"], "scan"


@pytest.mark.parametrize("kind", ["nifti", "dicom", "2d"])
def test_overwrite_removes_the_outputs_this_run_does_not_write(kind, bundles, tmp_path, capsys):
    inputs, first, second, flags, case = _prepare(kind, tmp_path, bundles)
    out = tmp_path / "out"
    assert _infer(first, inputs, out, *flags) == 0
    full = files_under(out)
    mask = f"{case}.png" if kind == "2d" else f"{case}.nii.gz"
    expected = {"nifti": {mask, f"{case}_prob.nii.gz", f"{case}_uncertainty.nii.gz"},
                "dicom": {mask, f"{case}_prob.nii.gz", f"{case}_uncertainty.nii.gz", f"{case}_seg.dcm"},
                "2d": {mask, f"{case}_overlay.png", f"{case}_prob.png"}}[kind]
    assert full == expected
    _age(out)
    before = _state(out)
    capsys.readouterr()
    # Another model, without --save-prob (and --dicom-seg): its mask must not sit beside the old model's maps.
    assert _infer(second, inputs, out, "--overwrite") == 0
    summary = capsys.readouterr().out
    kept = {mask, f"{case}_overlay.png"} & full
    assert files_under(out) == kept, summary
    after = _state(out)
    assert all(after[n][1] != before[n][1] for n in kept)  # rewritten by this run
    assert "removed" in summary and "1 written" in summary, summary


@pytest.mark.parametrize("kind", ["nifti", "2d"])
def test_a_rerun_without_overwrite_replaces_nothing(kind, bundles, tmp_path, capsys):
    inputs, first, second, flags, case = _prepare(kind, tmp_path, bundles)
    out = tmp_path / "out"
    assert _infer(first, inputs, out) == 0
    _age(out)
    before = _state(out)
    capsys.readouterr()
    # The same request: skipped, nothing touched.
    assert _infer(second, inputs, out) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert _state(out) == before
    # Asking for more outputs writes only the missing ones; the existing mask (and overlay) stay as they were.
    assert _infer(second, inputs, out, *flags) == 0
    summary = capsys.readouterr().out
    after = _state(out)
    assert {n: after[n] for n in before} == before, summary
    new = set(after) - set(before)
    assert new == ({f"{case}_prob.png"} if kind == "2d" else {f"{case}_prob.nii.gz", f"{case}_uncertainty.nii.gz"})
    assert "kept the existing" in summary and "1 written" in summary, summary
    # And once all exist, a rerun with the same flags skips again.
    _age(out)
    settled = _state(out)
    assert _infer(second, inputs, out, *flags) == 0
    assert "1 skipped" in capsys.readouterr().out and _state(out) == settled
