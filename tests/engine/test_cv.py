"""``medseg train --fold`` and ``medseg cv`` end to end: real CLI, a real ``mlflow server``, out-of-fold masks on disk."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient
from tiny_training import BUNDLE, REPO, TINY, medseg, set_args

from medseg.checkpoint import read_model_spec

# 4 cases in 2 folds: each fold trains on 2 and predicts the other 2; 2 epochs of 2 iterations.
CV = {**TINY, "max_epochs": "2"}


def _metadata(out: Path) -> dict:
    return json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]


def test_train_fold_writes_the_folds_out_of_fold_masks_in_their_geometry(tiny_brats, tmp_path):
    out = tmp_path / "fold1"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, "--fold", "1", "--no-tracking",
                    *set_args({**CV, "max_epochs": "1", "num_folds": "2"}), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    datalist = json.loads((out / "datalist.json").read_text())
    fold1 = sorted(e["case_id"] for e in datalist["training"] if e["fold"] == 1)
    assert fold1 and sorted(p.name.removesuffix(".nii.gz") for p in (out / "oof").glob("*.nii.gz")) == fold1
    for case in fold1:
        mask, source = nib.load(out / "oof" / f"{case}.nii.gz"), nib.load(tiny_brats / case / f"{case}_flair.nii.gz")
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 4}


@pytest.fixture(scope="module")
def cv_run(tiny_brats: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("cv")
    out = work / "cv"
    result = medseg("cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", out, "--tracking-uri",
                    mlflow_server, "--save-prob", *set_args(CV), cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"out": out, "work": work, "stdout": result.stdout, "state": json.loads((out / "cv.json").read_text())}


def test_cv_predicts_every_case_once_and_summarises(cv_run, tiny_brats):
    out = cv_run["out"]
    cases = sorted(p.name for p in tiny_brats.iterdir() if p.is_dir())
    merged = sorted(p.name.removesuffix(".nii.gz") for p in (out / "oof").glob("*.nii.gz"))
    assert merged == cases  # every labelled case exactly once
    per_fold = [sorted(p.name.removesuffix(".nii.gz") for p in (out / f"fold_{k}" / "oof").glob("*.nii.gz")
                       if not p.name.endswith(("_prob.nii.gz", "_uncertainty.nii.gz"))) for k in range(2)]
    assert all((out / f"fold_{k}" / "oof" / f"{c}_prob.nii.gz").is_file() for k in range(2) for c in per_fold[k])
    assert sorted(per_fold[0] + per_fold[1]) == cases and not set(per_fold[0]) & set(per_fold[1])
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["cases"] == 4 and summary["folds"] == 2
    for region in ("WT", "TC", "ET"):
        stats = summary["overall"][f"dice_{region}"]
        assert stats["n"] == 4 and 0.0 <= stats["mean"] <= 1.0
        assert set(summary["per_fold"]) == {"0", "1"}
    assert {"csv", "boxplot"} <= set(summary["files"]) and all((out / n).is_file() for n in summary["files"].values())
    assert summary["files"]["csv"] == "cv_metrics.csv" and summary["files"]["boxplot"] == "cv_metrics_boxplot.png"
    assert "2-fold cross-validation" in cv_run["stdout"] and "dice_WT" in cv_run["stdout"]
    # The post-processing chosen on these out-of-fold masks is recorded in every fold's model.
    post = json.loads((out / "postprocessing.json").read_text())
    assert {r["target"] for r in post["report"] if r["rule"] == "largest_component"} == {"WT", "TC", "ET"}
    for k in range(2):
        spec, _ = read_model_spec(out / f"fold_{k}" / "models" / "model.pt")
        assert spec.postprocessing == post["spec"]
        config = json.loads((out / f"fold_{k}" / "configs" / "inference.json").read_text())
        assert config["label_postprocessing"] == post["spec"]


def test_cv_is_one_parent_run_with_a_child_per_fold(cv_run, mlflow_server):
    client = MlflowClient(mlflow_server)
    parent_id = cv_run["state"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert 0.0 <= parent.data.metrics["cv_dice_WT_mean"] <= 1.0
    artifacts = {f.path for f in client.list_artifacts(parent_id, "cv")}
    assert {"cv/cv_summary.json", "cv/cv_metrics.csv", "cv/cv_metrics_boxplot.png", "cv/postprocessing.json"} <= artifacts
    assert {f.path for f in client.list_artifacts(parent_id, "dataset")} == {"dataset/manifest.json"}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.params["fold"] for c in children) == ["0", "1"]
    ids = {_metadata(cv_run["out"] / f"fold_{k}")["mlflow_run_id"] for k in range(2)}
    assert ids == {c.info.run_id for c in children}


def test_a_killed_cv_resumes_the_interrupted_fold_exactly(cv_run, tiny_brats, mlflow_server, tmp_path):
    out = tmp_path / "cv"
    args = ["cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", out, "--tracking-uri", mlflow_server,
            "--save-prob", *set_args(CV)]
    # Fold 0 has 2 epochs of 2 iterations; the 7th iteration is fold 1's third: in its second epoch, after its
    # first checkpoint.
    killed = medseg(*args, cwd=tmp_path, env={"MEDSEG_FAULT_AT": "train-iteration:7"})
    assert killed.returncode != 0
    state = json.loads((out / "cv.json").read_text())
    assert state["done"] == [0] and (out / "fold_1" / "models" / "last.pt").is_file()
    fold0 = (out / "fold_0" / "models" / "last.pt").stat().st_mtime_ns
    resumed = medseg(*args, cwd=tmp_path, env={"MEDSEG_FAULT_AT": ""})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert json.loads((out / "cv.json").read_text())["parent_run_id"] == state["parent_run_id"]
    assert "resuming its interrupted training" in resumed.stdout + resumed.stderr
    assert (out / "fold_0" / "models" / "last.pt").stat().st_mtime_ns == fold0  # kept, not trained again
    for k in range(2):  # both folds end bit for bit where the uninterrupted cross-validation's did
        a, b = _metadata(cv_run["out"] / f"fold_{k}"), _metadata(out / f"fold_{k}")
        keys = [key for key in a["final_metrics"] if key.startswith(("train_loss", "val_", "lr"))]
        assert keys and all(b["final_metrics"][key] == a["final_metrics"][key] for key in keys), k
    assert json.loads((out / "cv_summary.json").read_text())["overall"] == json.loads(
        (cv_run["out"] / "cv_summary.json").read_text())["overall"]
    client = MlflowClient(mlflow_server)
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"


def test_a_cv_folder_infers_as_the_ensemble_of_its_folds(cv_run, tiny_brats):
    out = cv_run["work"] / "ensemble"
    result = medseg("infer", cv_run["out"], "--input", tiny_brats, "--output", out, "--no-progress", cwd=cv_run["work"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for case in sorted(p.name for p in tiny_brats.iterdir() if p.is_dir()):
        mask, source = nib.load(out / f"{case}.nii.gz"), nib.load(tiny_brats / case / f"{case}_flair.nii.gz")
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2, 4}
    # A member of another kind is refused, naming it.
    other = medseg("infer", cv_run["out"] / "fold_0", REPO / "bundles" / "isic_light_unet", "--input", tiny_brats,
                   "--output", cv_run["work"] / "refused", cwd=cv_run["work"])
    assert other.returncode == 2 and "isic_light_unet" in other.stderr


def test_select_compares_configurations_and_their_ensemble_out_of_fold(cv_run, tiny_brats):
    other = cv_run["work"] / "cv_lr"
    result = medseg("cv", BUNDLE, "--data", tiny_brats, "--folds", "2", "--output", other, "--no-tracking",
                    "--save-prob", *set_args({**CV, "max_epochs": "1", "learning_rate": "0.01"}), cwd=cv_run["work"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    chosen = medseg("cv", "select", cv_run["out"], other, cwd=cv_run["work"])
    assert chosen.returncode == 0, chosen.stdout[-2000:] + chosen.stderr[-3000:]
    record = json.loads((cv_run["out"] / "selection.json").read_text())
    members = sorted(len(c["members"]) for c in record["candidates"])
    assert members == [1, 1, 2] and record["cases"] == 4
    singles = {c["members"][0]: c["mean_dice"] for c in record["candidates"] if len(c["members"]) == 1}
    summary = json.loads((cv_run["out"] / "cv_summary.json").read_text())["overall"]
    expected = sum(summary[f"dice_{r}"]["mean"] for r in ("TC", "WT", "ET")) / 3
    assert singles[str(cv_run["out"])] == pytest.approx(expected)
    assert record["best"]["mean_dice"] == max(c["mean_dice"] for c in record["candidates"])
    assert "best on 4 out-of-fold cases" in chosen.stdout


def test_cv_refuses_what_it_cannot_do_before_training(tiny_brats, tmp_path):
    from medseg.engine.cv import run_cv
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match="--folds"):
        run_cv(BUNDLE, tiny_brats, folds=1, output=tmp_path / "a", tracking=False)
    with pytest.raises(MedsegError, match="sets each fold's fold"):
        run_cv(BUNDLE, tiny_brats, folds=2, output=tmp_path / "b", overrides={"fold": 1}, tracking=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(MedsegError, match="not empty"):
        run_cv(BUNDLE, tiny_brats, folds=2, output=busy, tracking=False)
    assert (busy / "notes.txt").read_text() == "mine"
    begun = tmp_path / "begun"
    begun.mkdir()
    (begun / "cv.json").write_text(json.dumps({"format": "medseg-cv/1", "options": {
        "bundle": str(BUNDLE), "data": str(tiny_brats), "folds": 3, "overrides": {}, "preset": None,
        "save_prob": False}, "parent_run_id": None, "done": []}))
    with pytest.raises(MedsegError, match="begun with other folds"):
        run_cv(BUNDLE, tiny_brats, folds=2, output=begun, tracking=False)


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_a_cv_exports_as_one_registered_ensemble_bundle_that_medseg_and_monai_run_alike(cv_run, tiny_brats,
                                                                                          mlflow_server):
    import subprocess
    import sys

    from medseg.data.conventions import get_convention
    from medseg.postprocessing import apply_postprocessing

    work, ens = cv_run["work"], cv_run["work"] / "ensemble_bundle"
    result = medseg("export", cv_run["out"], "--format", "ensemble", "--out", ens, "--register", "cv-ensemble",
                    "--tracking-uri", mlflow_server, cwd=work)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    meta = json.loads((ens / "configs" / "metadata.json").read_text())["medseg_ensemble"]
    post = json.loads((cv_run["out"] / "postprocessing.json").read_text())["spec"]
    assert len(meta["members"]) == 2 and meta["postprocessing"] == post
    for k, member in enumerate(meta["members"]):
        assert (ens / member["folder"] / "models" / "model.pt").read_bytes() == \
            (cv_run["out"] / f"fold_{k}" / "models" / "model.pt").read_bytes()
    again = medseg("export", cv_run["out"], "--format", "ensemble", "--out", ens, cwd=work)
    assert again.returncode == 2 and "already exists" in again.stderr
    # MONAI's workflow contract, and its own runner, on one case; medseg infer on the folder and on the registry.
    script = ("from monai.bundle import ConfigWorkflow; w = ConfigWorkflow("
              f"config_file='{ens}/configs/inference.json', meta_file='{ens}/configs/metadata.json', "
              "workflow_type='infer'); w.initialize(); print('missing', w.check_properties())")
    check = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
                           check=False)
    assert "missing []" in check.stdout, check.stdout[-2000:] + check.stderr[-3000:]
    case = min(p.name for p in tiny_brats.iterdir() if p.is_dir())
    one = work / "one_case"
    one.mkdir()
    (one / case).symlink_to(tiny_brats / case)
    monai = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                            str(ens / "configs" / "inference.json"), "--dataset_dir", str(one), "--output_dir",
                            str(work / "by_monai")], cwd=work, capture_output=True, text=True, timeout=600,
                           check=False)
    assert monai.returncode == 0, monai.stdout[-2000:] + monai.stderr[-3000:]
    masks = {"by_monai": _mask(work / "by_monai" / f"{case}.nii.gz")}
    for name, source in (("by_bundle", ens), ("by_registry", "models:/cv-ensemble/1"), ("raw", ens),
                         ("by_cv", cv_run["out"])):
        extra = ["--no-postprocessing"] if name == "raw" else []
        run = medseg("infer", source, "--input", one, "--output", work / name, "--tracking-uri", mlflow_server,
                     "--no-progress", *extra, cwd=work)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        masks[name] = _mask(work / name / f"{case}.nii.gz")
    source = nib.load(tiny_brats / case / f"{case}_flair.nii.gz")
    assert nib.load(work / "by_monai" / f"{case}.nii.gz").shape == source.shape
    assert np.allclose(nib.load(work / "by_monai" / f"{case}.nii.gz").affine, source.affine)
    assert (masks["by_bundle"] == apply_postprocessing(masks["raw"], post, get_convention("brats2021"))).all()
    assert (masks["by_monai"] == masks["by_bundle"]).all() and (masks["by_registry"] == masks["by_bundle"]).all()
    assert (masks["by_cv"] == masks["by_bundle"]).all()
    client = MlflowClient(mlflow_server)
    version = client.get_model_version("cv-ensemble", "1")
    tags = client.get_run(version.run_id).data.tags
    assert set(tags["medseg.ensemble_members"].split(",")) == {
        _metadata(cv_run["out"] / f"fold_{k}")["mlflow_run_id"] for k in range(2)}
