"""The same config through MONAI's own tools: ``monai.bundle run``, ``torchrun`` with DDP, and the bundle checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
import torch
from mlflow import MlflowClient
from tiny_training import BUNDLE, REPO, TINY, monai_evaluate

from medseg.checkpoint import save_checkpoint
from medseg.networks import build_network

BUNDLES = ["brats_attention_unet3d", "brats_segresnet", "generic_3d"]


def _monai_args(values: dict[str, str]) -> list[str]:
    """MONAI's ``--id value`` arguments (python-fire reads ``True``/``False`` as booleans)."""
    out: list[str] = []
    for key, value in values.items():
        out += [f"--{key}", {"true": "True", "false": "False"}.get(value, value)]
    return out


def _run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_monai_bundle_run_gives_the_same_kind_of_run(tiny_brats, tmp_path):
    out = tmp_path / "out"
    values = {**TINY, "max_epochs": "2"}
    result = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs/train.json"),
                   "--dataset_dir", str(tiny_brats), "--output_dir", str(out), *_monai_args(values)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    assert meta["epochs"] == 2 and (out / "models" / "model.pt").is_file() and (out / "models" / "last.pt").is_file()
    assert json.loads((out / "configs" / "train.json").read_text())["max_epochs"] == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["max_epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_dice_WT")) == 2
    # The output bundle's evaluate.json (shared by every bundle) scores its best model again: the same Dice.
    scores = monai_evaluate(out, tmp_path / "evaluated", cwd=tmp_path)
    assert float(scores["val_mean_dice"]) == pytest.approx(meta["best_metric"], abs=1e-6)


def test_torchrun_two_cpu_processes_gloo(tiny_brats, tmp_path):
    """DDP under torchrun with 2 CPU processes: one output bundle, one MLflow run, written by rank 0."""
    out = tmp_path / "ddp"
    configs = f"['{BUNDLE / 'configs/train.json'}','{BUNDLE / 'configs/multi_gpu_train.json'}']"
    values = {**TINY, "max_epochs": "2", "num_folds": "2"}  # 2 training and 2 validation cases, one per rank
    result = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(tiny_brats),
                   "--output_dir", str(out), *_monai_args(values)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    assert meta["epochs"] == 2 and (out / "models" / "model.pt").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medseg")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [meta["mlflow_run_id"]]  # rank 1 tracked nothing
    assert runs[0].info.status == "FINISHED"
    # Each rank saw half of the 2 training cases: one iteration per epoch, logged by both ranks.
    log = result.stdout + result.stderr
    assert log.count("epoch 2/2") >= 2


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    """As MONAI users call it (the metadata's smallest shape, n=1), and at n=2."""
    root = REPO / "bundles" / bundle
    for n in ([], ["--n", "2"]):
        result = _run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file",
                       "configs/metadata.json", "--config_file", "configs/inference.json", *n,
                       "--bundle_root", "."], cwd=root)
        assert result.returncode == 0, (n, result.stderr[-3000:])
        assert "verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", BUNDLES)
def test_ckpt_export(bundle, tmp_path):
    """MONAI's ckpt_export and CheckpointLoader read a medseg checkpoint (weights under ``model``, as MONAI keeps them)."""
    root = REPO / "bundles" / bundle
    spec = json.loads((root / "configs" / "inference.json").read_text())["network_spec"]
    kwargs = {k: v for k, v in spec["kwargs"].items()}
    if bundle == "generic_3d":
        kwargs.update(in_channels=1, out_channels=2)
    net = build_network(spec["name"], **kwargs)
    ckpt = save_checkpoint(tmp_path / "model.pt", net, network={"name": spec["name"], "kwargs": kwargs})
    ts = tmp_path / "model.ts"
    result = _run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
                   "--ckpt_file", str(ckpt), "--meta_file", "configs/metadata.json", "--config_file",
                   "configs/inference.json", "--key_in_ckpt", "model", "--bundle_root", "."], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    scripted = torch.jit.load(str(ts))
    meta = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    x = torch.randn(1, meta["num_channels"], 32, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-4)
    # MONAI's CheckpointLoader, as model-zoo inference configs and MONAI Label use it.
    fresh = build_network(spec["name"], **kwargs).eval()
    CheckpointLoader(load_path=str(ckpt), load_dict={"model": fresh}, map_location="cpu")(Engine(lambda e, b: None))
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
