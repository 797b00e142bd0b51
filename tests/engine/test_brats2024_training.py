"""BraTS 2024+ labels train with the resection cavity as its own region, and infer back to 2024+ values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import read_model_spec


@pytest.fixture(scope="module")
def brats2024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.data.synth.writers import write_brats_dataset

    out = tmp_path_factory.mktemp("brats2024")
    write_brats_dataset(out, cases=4, shape=(32, 32, 24), seed=0, fmt="brats2024")
    return out


def test_train_and_infer_with_the_resection_cavity(brats2024, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", brats2024, "--output", out, *set_args({**TINY, "max_epochs": "1"}),
                    "--no-tracking", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    spec = read_model_spec(out / "models" / "model.pt")[0]
    assert spec.label_convention == "brats2024"
    assert spec.output_names == ("TC", "WT", "ET", "RC") and spec.network_kwargs["out_channels"] == 4
    resolved = json.loads((out / "configs" / "train.json").read_text())
    assert resolved["network_spec"]["kwargs"]["out_channels"] == 4
    metrics = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["final_metrics"]
    assert {"val_dice_TC", "val_dice_WT", "val_dice_ET", "val_dice_RC"} <= set(metrics)

    preds = tmp_path / "preds"
    case = sorted(p for p in brats2024.iterdir() if p.is_dir())[0]
    result = medseg("infer", out, "--input", case, "--output", preds, "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    mask = nib.load(preds / f"{case.name}.nii.gz")
    truth = nib.load(next(case.glob("*-seg.nii.gz")))
    assert mask.shape == truth.shape and np.allclose(mask.affine, truth.affine)
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 3, 4}


def test_a_2024_set_without_et_needs_the_labels_id(brats2024, tmp_path):
    """A 4 with no 3 could be 2021's ET or 2024's cavity: the run refuses to guess and names the id to set."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(brats2024, data)
    for seg in data.rglob("*-seg.nii.gz"):
        img = nib.load(seg)
        labels = np.asarray(img.dataobj)
        nib.save(nib.Nifti1Image(np.where(labels == 3, 1, labels).astype(labels.dtype), img.affine, img.header), seg)
    refused = medseg("train", BUNDLE, "--data", data, "--output", tmp_path / "x", *set_args({**TINY, "max_epochs": "1"}),
                     "--no-tracking", cwd=tmp_path)
    assert refused.returncode == 2 and "brats2024" in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "x").exists()
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", data, "--output", out,
                    *set_args({**TINY, "max_epochs": "1", "labels": "brats2024"}), "--no-tracking", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert read_model_spec(out / "models" / "model.pt")[0].output_names == ("TC", "WT", "ET", "RC")
