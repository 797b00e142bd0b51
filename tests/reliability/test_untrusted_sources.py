"""Issue 14, items 1-5: no config code from outside runs, no identifier leaves in an artifact.

Each test is an attack that worked before, now refused or harmless, tried through the real CLI
(``python -m medseg`` in a subprocess) against a real ``mlflow server``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from rel_helpers import brats_bundle
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.engine.data import prepare_datalist
from medseg.errors import MedsegError
from medseg.tracking import open_tracking

PATIENT = "Zyxwv^Quentin"


def _touch(marker: Path) -> str:
    return f"$__import__('pathlib').Path({str(marker)!r}).touch()"


def _ours(folder: Path) -> list[Path]:
    """What medseg left in a temporary folder (torch's own caches aside)."""
    return [p for p in folder.iterdir() if p.name.startswith("medseg")]


def _one_line_error(result, *needles: str) -> None:
    err = result.stderr
    assert result.returncode == 2, result.stdout[-2000:] + err[-2000:]
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for needle in needles:
        assert needle in err, err


# -- 1. export ----------------------------------------------------------------------------------------------
def _export_bundle(root: Path, marker: Path, plain_weights: bool = False) -> Path:
    brats_bundle(root)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"] = _touch(marker)  # code where MONAI would build the network
    config.pop("network_spec")
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    meta = {"network_data_format": {"inputs": {"image": {"num_channels": 4, "spatial_shape": [16, 16, 16]}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    if plain_weights:
        ckpt = torch.load(root / "models" / "model.pt", weights_only=True)
        torch.save(ckpt["model"], root / "models" / "model.pt")
    return root


def test_export_builds_from_the_checkpoint_spec_and_never_runs_config_code(tmp_path):
    marker = tmp_path / "export code ran"
    bundle = _export_bundle(tmp_path / "b", marker)
    result = medseg("export", bundle, "--format", "onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (bundle / "models" / "model.onnx").is_file() and not marker.exists()
    # A plain state dict has no spec: the config's network_def would be needed, and it is code.
    plain = _export_bundle(tmp_path / "plain", marker, plain_weights=True)
    result = medseg("export", plain, "--format", "onnx", cwd=tmp_path)
    _one_line_error(result, "no network spec to build from", "--trust-bundle")
    assert not marker.exists() and not (plain / "models" / "model.onnx").exists()
    # With the flag the code does run: the refusal is what kept it from running.
    medseg("export", plain, "--format", "onnx", "--trust-bundle", cwd=tmp_path)
    assert marker.exists()


# -- 3. trust by content ------------------------------------------------------------------------------------
def test_a_runs_folder_in_the_working_directory_is_not_trusted(tiny_brats_rel, tmp_path, monkeypatch):
    """A cloned repository or unpacked archive with ``runs/`` used to be trusted for where it lay."""
    monkeypatch.delenv("MEDSEG_TRUSTED_BUNDLES", raising=False)
    marker = tmp_path / "planted code ran"
    planted = shutil.copytree(BUNDLE, tmp_path / "runs" / "brats_attention_unet3d" / "20260101-000000")
    config = json.loads((planted / "configs" / "train.json").read_text())
    config["tracking_uri"] = f"$({_touch(marker)[1:]}, None)[1]"
    (planted / "configs" / "train.json").write_text(json.dumps(config))
    (planted / "medseg-signature.json").write_text('{"format": 1, "hmac": "00"}')  # a forged signature
    result = medseg("train", planted, "--resume", planted, "--data", tiny_brats_rel, cwd=tmp_path)
    _one_line_error(result, "not a trusted bundle")
    result = medseg("train", planted, "--data", tiny_brats_rel, "--output", tmp_path / "o", cwd=tmp_path)
    _one_line_error(result, "not a trusted bundle")
    assert not marker.exists()


# -- 2, 4, 5: a tracked run, its artifacts and its reproduction ----------------------------------------------
@pytest.fixture(scope="module")
def tracked(tiny_brats_rel: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny tracked run whose config carries a patient identifier (as if copied from a DICOM header)."""
    work = tmp_path_factory.mktemp("tracked14")
    out = work / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out,
                    *set_args({**TINY, "max_epochs": "1"}), "--set", f"+PatientName={PATIENT}",
                    "--tracking-uri", mlflow_server, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    return {"out": out, "run_id": meta["mlflow_run_id"], "work": work, "meta": meta}


def test_no_artifact_holds_the_identifier_in_plain_text(tracked, mlflow_server, tmp_path):
    assert PATIENT in (tracked["out"] / "configs" / "train.json").read_text()  # it stays on this machine
    local = Path(MlflowClient(mlflow_server).download_artifacts(tracked["run_id"], "", str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.as_posix().endswith("bundle/configs/train.json") for p in files)
    leaks = [p for p in files if PATIENT.encode() in p.read_bytes() or b"Zyxwv" in p.read_bytes()]
    assert leaks == []
    assert not any(p.name == ".medseg.lock" for p in files)
    params = MlflowClient(mlflow_server).get_run(tracked["run_id"]).data.params
    assert params["PatientName"].startswith("sha256:") and len(params["medseg.sha256.config"]) == 64


def test_reproduce_never_runs_a_config_planted_on_the_server(tracked, mlflow_server, tiny_brats_rel, tmp_path):
    """Stock MLflow has no authentication: anyone who reaches it can replace a run's artifacts."""
    client, run_id = MlflowClient(mlflow_server), tracked["run_id"]
    marker = tmp_path / "server code ran"
    planted = tmp_path / "planted" / "train.json"
    planted.parent.mkdir()
    config = json.loads((tracked["out"] / "configs" / "train.json").read_text())
    planted.write_text(json.dumps({**config, "network_def": _touch(marker)}))
    client.log_artifact(run_id, str(planted), "bundle/configs")  # the old reproduce trained this file
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--data", tiny_brats_rel,
                    "--output", tmp_path / "again", cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not marker.exists()
    rows = [line for line in result.stdout.splitlines() if line.startswith(("val_", "train_loss"))]
    assert rows and all(line.rstrip().endswith("yes") for line in rows), result.stdout
    assert _ours(scratch) == []

    # The resolved config itself replaced with one whose values run code: refused by its sha256.
    resolved = tmp_path / "resolved" / "resolved.json"
    resolved.parent.mkdir()
    downloaded = json.loads(Path(client.download_artifacts(run_id, "config/resolved.json", str(tmp_path))).read_text())
    downloaded["overrides"] = {**downloaded["overrides"], "learning_rate": _touch(marker)}
    resolved.write_text(json.dumps(downloaded))
    client.log_artifact(run_id, str(resolved), "config")
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--data", tiny_brats_rel,
                    "--output", tmp_path / "never", cwd=tmp_path, env={"TMPDIR": str(scratch)})
    _one_line_error(result, "config/resolved.json was changed after training")
    assert not marker.exists() and not (tmp_path / "never").exists() and _ours(scratch) == []


def _fake_run(uri: str, dataset: Path, config: dict, digests: bool = True) -> str:
    """A run as a server may hold it: logged through medseg's own session (digests) or by hand (none)."""
    session = open_tracking(uri, "attacks")
    run_id = session.start_run("crafted")
    if digests:
        session.log_config(config)
        session.log_provenance(Path(__file__).parent, 0, "cpu", dataset)
    else:
        from medseg.tracking.manifest import build_manifest

        folder = Path(tempfile.mkdtemp(prefix="crafted-"))
        for name, data in (("config/resolved.json", config), ("dataset/manifest.json", build_manifest(dataset))):
            (folder / Path(name).name).write_text(json.dumps(data))
            session.client.log_artifact(run_id, str(folder / Path(name).name), str(Path(name).parent))
    session.end_run("FINISHED")
    return run_id


def test_reproduce_refuses_recorded_code_and_unverifiable_runs(mlflow_server, tiny_brats_rel, tmp_path):
    marker = tmp_path / "recorded code ran"
    config = {"bundle_name": "brats_attention_unet3d", "dataset_dir": str(tiny_brats_rel),
              "overrides": {"network_spec#kwargs#features": {"_target_": "os.system", "command": "true"},
                            "learning_rate": _touch(marker)}}
    run_id = _fake_run(mlflow_server, tiny_brats_rel, config)
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, "--output", tmp_path / "o", cwd=tmp_path,
                    timeout=120)
    _one_line_error(result, f"config of MLflow run {run_id}", "would run code", "--trust-bundle")
    assert not marker.exists() and not (tmp_path / "o").exists()
    # A bundle name that walks out of the installed bundles' folder.
    run_id = _fake_run(mlflow_server, tiny_brats_rel, {**config, "bundle_name": "../../tmp/evil", "overrides": {}})
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, cwd=tmp_path, timeout=120)
    _one_line_error(result, "is not a plain folder name")
    # Artifacts with no recorded sha256 cannot be verified.
    run_id = _fake_run(mlflow_server, tiny_brats_rel, {**config, "overrides": {}}, digests=False)
    result = medseg("reproduce", run_id, "--tracking-uri", mlflow_server, cwd=tmp_path, timeout=120)
    _one_line_error(result, "no sha256 was recorded", "--trust-bundle")


# -- 5. the output may not hold the dataset ------------------------------------------------------------------
def test_output_around_the_dataset_is_refused_before_anything_is_written(tiny_brats_rel, tmp_path):
    parent = tmp_path / "study"
    data = shutil.copytree(tiny_brats_rel, parent / "data")
    before = sorted(p.relative_to(parent) for p in parent.rglob("*"))
    result = medseg("train", BUNDLE, "--data", data, "--output", parent, "--no-tracking", cwd=tmp_path)
    _one_line_error(result, f"--output {parent} contains the dataset folder {data}")
    result = medseg("train", BUNDLE, "--data", data, "--output", data / "run", "--no-tracking", cwd=tmp_path)
    _one_line_error(result, "is inside the dataset folder")
    assert sorted(p.relative_to(parent) for p in parent.rglob("*")) == before
    # The same rule where the bundle config itself writes (python -m monai.bundle run).
    with pytest.raises(MedsegError, match="contains the dataset folder"):
        prepare_datalist(data, parent, check_contents=False)
