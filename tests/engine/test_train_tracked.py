"""``medseg train`` end to end against a real ``mlflow server``: output bundle, MLflow contents, reproduce."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import build_from_checkpoint, load_checkpoint


@pytest.fixture(scope="module")
def tracked_run(tiny_brats: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 3-epoch run tracked on the real server, registered as a model."""
    work = tmp_path_factory.mktemp("tracked")
    out = work / "out"
    result = medseg("train", str(BUNDLE), "--data", str(tiny_brats), "--output", str(out), *set_args(TINY),
                    "--tracking-uri", mlflow_server, "--register", "medseg-test-model", cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    return {"out": out, "run_id": meta["medseg_training"]["mlflow_run_id"], "meta": meta, "stdout": result.stdout,
            "work": work}


def test_output_bundle_is_complete(tracked_run):
    out = tracked_run["out"]
    for rel in ("configs/train.json", "configs/inference.json", "configs/evaluate.json", "configs/metadata.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE",
                "models/model.pt", "models/last.pt", "datalist.json"):
        assert (out / rel).is_file(), rel
    resolved = json.loads((out / "configs" / "train.json").read_text())
    assert resolved["max_epochs"] == 3 and resolved["roi_size"] == [16, 16, 16]
    assert resolved["network_spec"]["kwargs"]["features"] == [4, 8, 16]
    info = tracked_run["meta"]["medseg_training"]
    assert info["epochs"] == 3
    assert set(info["final_metrics"]) >= {"train_loss", "lr", "samples_per_s", "val_mean_dice", "val_dice_TC",
                                          "val_dice_WT", "val_dice_ET"}
    best = load_checkpoint(out / "models" / "model.pt")
    assert best["network"]["name"] == "attention_unet3d" and best["label_convention"] == "brats2021"
    assert best["channel_names"] == ["t1", "t1ce", "t2", "flair"] and best["extra"]["output_names"] == ["TC", "WT", "ET"]
    assert best["best_metric"] == pytest.approx(info["best_metric"])
    net = build_from_checkpoint(best)
    assert sum(p.numel() for p in net.parameters()) > 0
    last = load_checkpoint(out / "models" / "last.pt")
    assert last["epoch"] == 3 and last["optimizer_state"] is not None and last["rng_state"] is not None


def test_mlflow_run_holds_params_metrics_artifacts_tags(tracked_run, mlflow_server):
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracked_run["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["max_epochs"] == "3" and params["seed"] == "0" and params["network_spec.name"] == "attention_unet3d"
    for metric in ("train_loss", "val_dice_WT", "lr", "samples_per_s"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == [1, 2, 3], metric
    tags = run.data.tags
    for tag in ("medseg.git_commit", "medseg.git_dirty", "medseg.version.monai", "medseg.version.torch",
                "medseg.version.cuda", "medseg.device", "medseg.dataset_hash"):
        assert tags.get(tag), tag
    assert tags["medseg.seed"] == "0"

    def listing(path: str = "") -> set[str]:
        return {a.path for a in client.list_artifacts(run.info.run_id, path)}

    assert {"checkpoints/model.pt"} <= listing("checkpoints")
    assert "config/resolved.json" in listing("config")
    assert "dataset/manifest.json" in listing("dataset")
    assert {"figures/training_curves.png", "figures/validation_overlays.png"} <= listing("figures")
    assert "bundle/configs" in listing("bundle")
    manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "dataset/manifest.json",
                                                         str(tracked_run["work"]))).read_text())
    assert manifest["dataset_hash"] == tags["medseg.dataset_hash"] and manifest["count"] == 20
    versions = client.search_model_versions("name='medseg-test-model'")
    assert [v.run_id for v in versions] == [run.info.run_id]


def test_mlflow_run_is_tidy(tracked_run, mlflow_server, tiny_brats):
    """Params are the settings (no imports, expressions or wiring); the dataset is an MLflow input; one model copy."""
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracked_run["run_id"])
    params = run.data.params
    assert not [k for k, v in params.items() if k.startswith(("imports", "_", "train.", "validate.", "hyperparameters"))
                or v.startswith(("$", "@"))]
    assert len(params) < 120 and {"learning_rate", "roi_size.0", "augmentation.preset", "loss_spec.name"} <= set(params)
    # The Datasets panel: the dataset folder, the manifest's digest, the training context.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == tiny_brats.name
    assert dataset_input.dataset.digest == run.data.tags["medseg.dataset_hash"][:16]
    assert json.loads(dataset_input.dataset.source) == {"uri": str(tiny_brats.resolve())}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    def files(path: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for item in client.list_artifacts(run.info.run_id, path):
            out.update(files(item.path) if item.is_dir else {item.path: item.file_size})
        return out

    artifacts = files()
    weights = [p for p in artifacts if p.endswith(".pt")]
    assert weights == ["checkpoints/model.pt"], weights  # one copy of the model, no training state
    model_bytes = (tracked_run["out"] / "models" / "model.pt").stat().st_size
    assert artifacts["checkpoints/model.pt"] == model_bytes
    assert "bundle/configs/train.json" in artifacts and not any(p.startswith("bundle/models") for p in artifacts)
    # Where the run is, said before training starts.
    stdout = tracked_run["stdout"]
    assert stdout.index(f"MLflow run {run.info.run_id} (new)") < stdout.index("epoch 1/3")
    assert f"see it with: {mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in stdout
    assert stdout.index("-> output bundle ") < stdout.index("epoch 1/3")
    assert stdout.count("epoch 1/3") == 1 and "Engine run resuming" not in stdout and "Epoch[1] Complete" not in stdout


def test_a_bundle_logged_without_weights_still_serves_infer(tracked_run, mlflow_server, tmp_path):
    """``runs:/RUN/bundle`` has no models/ now; ``medseg infer`` takes the weights from ``checkpoints/``."""
    from medseg.inference.sources import fetch_model

    folder = fetch_model(f"runs:/{tracked_run['run_id']}/bundle", mlflow_server)
    ours = load_checkpoint(folder / "models" / "model.pt")["model"]
    theirs = load_checkpoint(tracked_run["out"] / "models" / "model.pt")["model"]
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_reproduce_matches_bit_for_bit_and_refuses_changed_data(tracked_run, mlflow_server, tiny_brats, tmp_path):
    result = medseg("reproduce", tracked_run["run_id"], "--tracking-uri", mlflow_server, "--data", str(tiny_brats),
                    "--output", str(tmp_path / "again"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("val_", "train_loss"))]
    assert len(rows) >= 5 and all(line.rstrip().endswith("yes") for line in rows), result.stdout
    assert "code: the same commit, uncommitted changes and package versions as the run" in result.stdout
    client = MlflowClient(mlflow_server)
    again = json.loads((tmp_path / "again" / "configs" / "metadata.json").read_text())["medseg_training"]
    new_run = client.get_run(again["mlflow_run_id"])
    assert new_run.data.tags["medseg.reproduction_of"] == tracked_run["run_id"]
    original = tracked_run["meta"]["medseg_training"]["final_metrics"]
    for key in ("val_mean_dice", "val_dice_WT", "train_loss"):
        assert again["final_metrics"][key] == original[key]  # bit for bit
    # A changed dataset is reported file by file and nothing is trained.
    changed = tmp_path / "changed"
    shutil.copytree(tiny_brats, changed)
    flair = next(changed.rglob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:-10] + b"0123456789")
    result = medseg("reproduce", tracked_run["run_id"], "--tracking-uri", mlflow_server, "--data", str(changed),
                    "--output", str(tmp_path / "never"), cwd=tmp_path)
    assert result.returncode == 1
    assert flair.relative_to(changed).as_posix() in result.stdout
    assert not (tmp_path / "never").exists()


def test_reproduce_reports_other_code_and_strict_refuses_it(tracked_run, mlflow_server, tiny_brats, tmp_path):
    """The run recorded its commit, diff and package versions; a reproduction says what differs now."""
    client = MlflowClient(mlflow_server)
    run_id = tracked_run["run_id"]
    client.set_tag(run_id, "medseg.version.monai", "0.0.1")
    client.set_tag(run_id, "medseg.git_commit", "0123456789abcdef")
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--data", str(tiny_brats),
                    "--output", str(tmp_path / "strict"), "--strict", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "--strict refuses" in result.stderr and "monai: run 0.0.1, installed " in result.stderr
    assert "git commit: run 0123456789ab, installed " in result.stderr
    assert not (tmp_path / "strict").exists()
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--data", str(tiny_brats),
                    "--output", str(tmp_path / "again"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (code,) = [line for line in result.stdout.splitlines() if line.startswith("code: ")]
    assert code.startswith("code: differs from the run's: ") and "monai: run 0.0.1" in code


def test_a_registered_model_infers_and_exports_by_name(tracked_run, mlflow_server, tiny_brats, tmp_path):
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``runs:/`` URIs: weights and spec only, cached by sha256."""
    import hashlib

    import nibabel as nib
    import numpy as np

    client = MlflowClient(mlflow_server)
    run_id, name = tracked_run["run_id"], "medseg-test-model"
    client.set_registered_model_alias(name, "champion", "1")
    case = sorted(p for p in tiny_brats.iterdir() if p.is_dir())[0]
    env = {"MEDSEG_HOME": str(tmp_path / "home")}
    local = medseg("infer", tracked_run["out"], "--input", case, "--output", tmp_path / "local", "--no-progress",
                   cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    expected = np.asarray(nib.load(next((tmp_path / "local").glob("*.nii.gz"))).dataobj)
    for i, uri in enumerate((f"models:/{name}/1", f"models:/{name}@champion", f"runs:/{run_id}/checkpoints/model.pt")):
        result = medseg("infer", uri, "--tracking-uri", mlflow_server, "--input", case, "--output",
                        tmp_path / f"out{i}", "--no-progress", cwd=tmp_path, env=env)
        assert result.returncode == 0, (uri, result.stderr[-3000:])
        (mask,) = (tmp_path / f"out{i}").glob("*.nii.gz")
        assert np.array_equal(np.asarray(nib.load(mask).dataobj), expected), uri
    weights = hashlib.sha256((tracked_run["out"] / "models" / "model.pt").read_bytes()).hexdigest()
    cached = [p.name for p in (tmp_path / "home" / "cache" / "models").iterdir()]
    assert cached == [weights]  # three URIs, one copy of the same weights
    result = medseg("export", f"models:/{name}@champion", "--tracking-uri", mlflow_server, "--format", "onnx",
                    "--out", tmp_path / "model.onnx", cwd=tmp_path, env=env)
    assert result.returncode == 0 and (tmp_path / "model.onnx").is_file(), result.stderr[-3000:]
    result = medseg("infer", f"models:/{name}/99", "--tracking-uri", mlflow_server, "--input", case, "--output",
                    tmp_path / "never", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "not found in the model registry" in result.stderr
    assert result.stderr.strip().count("\n") == 0

    # Code planted in the run's logged bundle config is read as data or dropped, never run.
    marker = tmp_path / "registry code ran"
    planted = tmp_path / "planted" / "inference.json"
    planted.parent.mkdir()
    planted.write_text(json.dumps({"roi_size": f"$__import__('pathlib').Path({str(marker)!r}).touch()",
                                   "network_spec": {"_target_": "os.system", "command": "true"}}))
    client.log_artifact(run_id, str(planted), "bundle/configs")
    result = medseg("infer", f"runs:/{run_id}/checkpoints/model.pt", "--tracking-uri", mlflow_server, "--input",
                    case, "--output", tmp_path / "planted-out", "--no-progress", cwd=tmp_path,
                    env={"MEDSEG_HOME": str(tmp_path / "home2")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
