"""Outputs keep the input's shape and affine, and the bundle's label values, for every NIfTI input kind.

The networks here are 1x1x1 convolutions with hand-set weights (see conftest), so the
exact expected label of every voxel follows from the original image: a flipped,
permuted or shifted output would not match.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from infer_helpers import NIBABEL_DATA, expected_multiclass, pointwise_bundle, zscore
from medseg.data.synth.writers import write_brats_dataset

SHAPE = (24, 20, 16)


def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def _assert_same_geometry(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape[:3] == ref.shape[:3]
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
    assert int(out.header["sform_code"]) > 0 and int(out.header["qform_code"]) > 0


@pytest.fixture(scope="module")
def oblique_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One volume of nibabel's example4d.nii.gz: a real oblique (and LAS) affine, qform and sform both coded."""
    src = nib.load(str(NIBABEL_DATA / "example4d.nii.gz"))
    assert not np.allclose(src.affine[:3, :3], np.diag(np.diag(src.affine[:3, :3])))  # really oblique
    img = nib.Nifti1Image(np.asanyarray(src.dataobj)[..., 0], src.affine, src.header)
    path = tmp_path_factory.mktemp("oblique") / "example3d.nii.gz"
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("name", ["oblique", "las"])
def test_single_channel_geometry_and_labels(name, oblique_volume, multiclass_bundle, infer_cli, tmp_path):
    source = oblique_volume if name == "oblique" else NIBABEL_DATA / "anatomical.nii"
    if name == "las":
        assert nib.aff2axcodes(nib.load(str(source)).affine) == ("L", "A", "S")
    assert infer_cli(multiclass_bundle, "--input", source, "--output", tmp_path / "out") == 0
    case_id = source.name.split(".nii")[0]
    labels, out = _read(tmp_path / "out" / f"{case_id}.nii.gz")
    original, ref = _read(source)
    _assert_same_geometry(out, ref)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 4}
    expected, clear = expected_multiclass(original)
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert {1, 4} <= set(np.unique(labels[clear]))  # every class occurs, so the check has teeth
    assert not (Path.cwd() / "EXECUTED").exists()  # the bundle's "$..." entry was never evaluated


def _region_bundle(root: Path, convention: str, order: list[str]) -> Path:
    """4 channels (t1, t1ce, t2, flair) -> regions: TC from t1ce, WT from flair, ET from t2, in ``order``."""
    source = {"TC": 1, "WT": 3, "ET": 2}
    weight = [[10.0 if c == source[r] else 0.0 for c in range(4)] for r in order]
    return pointwise_bundle(root, weight, [0.0, 0.0, 0.0], convention=convention,
                            channels=["t1", "t1ce", "t2", "flair"], task="regions", output_names=order)


def _expected_regions(channels: dict[str, np.ndarray], et_value: int) -> tuple[np.ndarray, np.ndarray]:
    z = {name: zscore(a) for name, a in channels.items()}
    tc, wt, et = z["t1ce"] > 0, z["flair"] > 0, z["t2"] > 0
    out = np.zeros(tc.shape, np.uint8)
    out[wt], out[tc], out[et] = 2, 1, et_value  # BraTS painting order: WT, then TC, then ET
    clear = np.all([np.abs(z[n]) > 1e-3 for n in ("t1ce", "flair", "t2")], axis=0)
    return out, clear


@pytest.mark.parametrize("fmt, values, order, names", [
    ("brats2021", {0, 1, 2, 4}, ["TC", "WT", "ET"], {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}),
    ("brats2023", {0, 1, 2, 3}, ["WT", "TC", "ET"], {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
])
def test_brats_case_folder_labels_follow_the_convention(fmt, values, order, names, infer_cli, tmp_path):
    data = tmp_path / "data"
    (case_dir,) = write_brats_dataset(data, cases=1, shape=SHAPE, seed=3, fmt=fmt)
    bundle = _region_bundle(tmp_path / "bundle", fmt, order)
    assert infer_cli(bundle, "--input", case_dir, "--output", tmp_path / "out") == 0
    sep = "_" if fmt == "brats2021" else "-"
    labels, out = _read(tmp_path / "out" / f"{case_dir.name}.nii.gz")
    channels = {c: _read(case_dir / f"{case_dir.name}{sep}{s}.nii.gz")[0] for c, s in names.items()}
    _assert_same_geometry(out, nib.load(str(case_dir / f"{case_dir.name}{sep}{names['t1']}.nii.gz")))
    assert set(np.unique(labels)) <= values
    expected, clear = _expected_regions(channels, et_value=4 if fmt == "brats2021" else 3)
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert set(np.unique(labels[clear])) == values


def test_msd_4d_input_as_dataset_and_as_file(infer_cli, tmp_path):
    data = tmp_path / "Task01"
    files = write_brats_dataset(data, cases=2, shape=SHAPE, seed=5, fmt="msd")
    bundle = _region_bundle(tmp_path / "bundle", "msd_brain", ["TC", "WT", "ET"])
    assert infer_cli(bundle, "--input", data, "--output", tmp_path / "out_dataset") == 0
    assert infer_cli(bundle, "--input", files[0], "--output", tmp_path / "out_file") == 0
    stacked, ref = _read(files[0])
    msd_order = json.loads((data / "dataset.json").read_text())["modality"]  # FLAIR, T1w, t1gd, T2w
    assert [msd_order[k] for k in "0123"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    channels = {"flair": stacked[..., 0], "t1": stacked[..., 1], "t1ce": stacked[..., 2], "t2": stacked[..., 3]}
    z = {n: zscore(a) for n, a in channels.items()}
    expected = np.zeros(SHAPE, np.uint8)
    expected[z["flair"] > 0], expected[z["t1ce"] > 0], expected[z["t2"] > 0] = 1, 2, 3  # MSD: WT 1, TC 2, ET 3
    clear = np.all([np.abs(z[n]) > 1e-3 for n in ("t1ce", "flair", "t2")], axis=0)
    for folder in ("out_dataset", "out_file"):
        labels, out = _read(tmp_path / folder / "BRATS_001.nii.gz")
        assert out.shape == SHAPE
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(labels[clear], expected[clear])
    assert (tmp_path / "out_dataset" / "BRATS_002.nii.gz").is_file()


def test_real_network_keeps_geometry_with_pixdim_resampling(oblique_volume, unet_bundle, infer_cli, tmp_path):
    """A real (tiny) network, with resampling to another spacing and back: the shape and affine still match."""
    import torch

    from medseg.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(unet_bundle / "models" / "model.pt")
    resampled = tmp_path / "resampled.pt"
    save_checkpoint(resampled, ckpt["model"], network=ckpt["network"], label_convention="toy",
                    channel_names=["image"], preprocessing={**ckpt["preprocessing"], "pixdim": [3.0, 3.0, 3.0]})
    assert infer_cli(unet_bundle, "--checkpoint", resampled, "--input", oblique_volume, "--output", tmp_path / "o") == 0
    labels, out = _read(tmp_path / "o" / "example3d.nii.gz")
    _assert_same_geometry(out, nib.load(str(oblique_volume)))
    assert set(np.unique(labels)) <= {0, 1}
    assert torch.is_tensor(ckpt["model"][next(iter(ckpt["model"]))])
