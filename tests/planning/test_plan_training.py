"""``medseg plan`` -> ``medseg train bundles/generic_3d --plan`` -> ``medseg infer``, as a user runs them.

A tiny anisotropic synthetic set with mixed spacings (0.9 x 0.9 x 4 mm and 1 x 1 x 1.5 mm), the
real command line in subprocesses, a real ``mlflow server``, and ``python -m monai.bundle run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient
from tiny_training import REPO, medseg, monai_run, set_args

from medseg.checkpoint import read_model_spec
from medseg.data.synth.writers import write_brats_dataset

GENERIC = REPO / "bundles" / "generic_3d"
SPACINGS = [(0.9, 0.9, 4.0), (1.0, 1.0, 1.5)]


@pytest.fixture(scope="module")
def aniso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aniso") / "Dataset001_Aniso"
    write_brats_dataset(root, 6, (40, 40, 32), seed=3, fmt="nnunet", spacings=SPACINGS)
    return root


@pytest.fixture(scope="module")
def planned(aniso: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("plan")
    result = medseg("plan", aniso, "--out", work / "plans", "--gpu-memory", "1", "--workers", "2", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((work / "plans" / "plan.json").read_text())
    return {"work": work, "plan_file": work / "plans" / "plan.json", "plan": plan, "stdout": result.stdout}


def _tiny(plan: dict) -> dict[str, str]:
    """A narrow network of the planned depth, 2 epochs: seconds per epoch on 2 cores."""
    levels = len(plan["network"]["filters"])
    return {"max_epochs": "2", "num_workers": "0", "deterministic": "true", "sw_batch_size": "2",
            "network_filters": json.dumps([4 * 2**min(i, 2) for i in range(levels)]).replace(" ", "")}


def test_plan_shows_a_table_and_writes_both_files(planned):
    plan = planned["plan"]
    assert "target spacing (mm)" in planned["stdout"] and "patch size" in planned["stdout"]
    assert (planned["plan_file"].parent / "fingerprint.json").is_file()
    # Median spacing per axis over 3 + 3 cases (4 and 1.5 mm slices): 2.75 mm, not > 3x 0.95 mm.
    assert plan["target_spacing"] == pytest.approx([0.95, 0.95, 2.75])
    assert plan["normalization"] == ["zscore"] * 4
    assert set(plan) >= {"target_spacing", "patch_size", "batch_size", "normalization"}


def test_plan_refuses_to_overwrite_its_files(planned, aniso):
    result = medseg("plan", aniso, "--out", planned["work"] / "plans", cwd=planned["work"])
    assert result.returncode == 2 and "exists" in result.stderr


def test_train_from_a_plan_then_infer_writes_every_mask_in_its_inputs_geometry(planned, aniso, tmp_path):
    out = tmp_path / "run"
    result = medseg("train", GENERIC, "--data", aniso, "--plan", planned["plan_file"], "--output", out,
                    "--no-tracking", *set_args(_tiny(planned["plan"])), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "different voxel spacings" not in result.stdout + result.stderr  # the plan resamples them to one
    spec, _ = read_model_spec(out / "models" / "model.pt")
    assert spec.network == "dynunet"
    assert spec.network_kwargs["strides"] == planned["plan"]["network"]["strides"]
    assert spec.preprocessing["pixdim"] == planned["plan"]["target_spacing"]
    assert spec.preprocessing["planned"]["normalization"] == planned["plan"]["normalization"]
    assert spec.inference.roi_size == tuple(planned["plan"]["patch_size"])
    assert json.loads((out / "configs" / "plan.json").read_text()) == planned["plan"]
    assert (out / "configs" / "fingerprint.json").is_file()

    preds = tmp_path / "preds"
    result = medseg("infer", out, "--input", aniso, "--output", preds, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    images = sorted((aniso / "imagesTr").glob("*_0000.nii.gz"))
    assert len(images) == 6
    spacings = set()
    for image in images:
        case = image.name.removesuffix("_0000.nii.gz")
        source, mask = nib.load(image), nib.load(preds / f"{case}.nii.gz")
        assert mask.shape == source.shape, case
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 3}
        spacings.add(tuple(round(float(z), 2) for z in source.header.get_zooms()[:3]))
    assert len(spacings) == 2  # both spacings came back to their own grids


def test_set_overrides_a_planned_value(planned, aniso, tmp_path):
    out = tmp_path / "run"
    values = {**_tiny(planned["plan"]), "max_epochs": "1", "roi_size": "[32,32,16]", "pixdim": "[1.5,1.5,3.0]"}
    result = medseg("train", GENERIC, "--data", aniso, "--plan", planned["plan_file"], "--output", out,
                    "--no-tracking", *set_args(values), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    spec, _ = read_model_spec(out / "models" / "model.pt")
    assert spec.inference.roi_size == (32, 32, 16) and spec.preprocessing["pixdim"] == [1.5, 1.5, 3.0]
    assert spec.preprocessing["planned"]["normalization"] == planned["plan"]["normalization"]


def test_monai_bundle_run_trains_from_a_plan_file(planned, aniso, tmp_path):
    out = tmp_path / "run"
    values = {**_tiny(planned["plan"]), "max_epochs": "1", "tracking_enabled": "False",
              "plan_file": str(planned["plan_file"])}
    result = monai_run([GENERIC / "configs" / "train.json"], aniso, out, values, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads((out / "configs" / "plan.json").read_text()) == planned["plan"]
    assert read_model_spec(out / "models" / "model.pt")[0].network == "dynunet"


def test_a_bad_plan_is_refused_before_anything_is_made(planned, aniso, tmp_path):
    bad = dict(planned["plan"], patch_size=[4096, 4096, 4096])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(bad))
    result = medseg("train", GENERIC, "--data", aniso, "--plan", path, "--output", tmp_path / "run",
                    "--no-tracking", cwd=tmp_path)
    assert result.returncode == 2 and "bad plan value patch_size" in result.stderr and str(path) in result.stderr
    assert not (tmp_path / "run").exists()
    other = medseg("train", REPO / "bundles" / "brats_segresnet", "--data", aniso, "--plan", planned["plan_file"],
                   "--no-tracking", cwd=tmp_path)
    assert other.returncode == 2 and "does not train from a plan" in other.stderr


def test_auto_plan_is_tracked_and_reproduce_reuses_it(planned, aniso, mlflow_server, tmp_path):
    out = tmp_path / "auto"
    result = medseg("train", GENERIC, "--data", aniso, "--plan", "auto", "--gpu-memory", "1", "--output", out,
                    "--tracking-uri", mlflow_server, *set_args(_tiny(planned["plan"])), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    shown = result.stdout + result.stderr
    assert "planning from" in shown and "target spacing (mm)" in shown  # the plan as a table
    plan = json.loads((out / "configs" / "plan.json").read_text())
    assert {k: v for k, v in plan.items() if k != "memory"} == {
        k: v for k, v in planned["plan"].items() if k != "memory"}
    run_id = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["mlflow_run_id"]
    client = MlflowClient(mlflow_server)
    names = {f.path for f in client.list_artifacts(run_id, "bundle/configs")}
    assert {"bundle/configs/plan.json", "bundle/configs/fingerprint.json"} <= names
    logged = json.loads(Path(client.download_artifacts(run_id, "bundle/configs/plan.json", str(tmp_path))).read_text())
    assert logged == plan
    params = client.get_run(run_id).data.params
    assert [params[f"pixdim.{i}"] for i in range(3)] == [str(v) for v in plan["target_spacing"]]
    assert [params[f"roi_size.{i}"] for i in range(3)] == [str(v) for v in plan["patch_size"]]
    assert params["normalization.0"] == plan["normalization"][0]
    assert not any(k.startswith("plan.") for k in params)  # the plan is an artifact, its values are params

    again = tmp_path / "again"
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--data", aniso, "--output", again,
                    cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "planning from" not in result.stdout + result.stderr  # the stored plan, not a new one
    assert json.loads((again / "configs" / "plan.json").read_text()) == plan
    rows = [line for line in result.stdout.splitlines() if line.startswith(("val_", "train_loss"))]
    assert rows and all(line.rstrip().endswith("yes") for line in rows), result.stdout
