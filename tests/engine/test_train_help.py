"""What a newcomer reads before training: the ids ``--set`` takes, and refused typos."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from tiny_training import REPO, medseg

from medseg.engine.runner import settable_ids


@pytest.mark.parametrize("bundle", ["brats_segresnet", "isic_light_unet"])
def test_train_help_lists_the_bundles_ids_with_defaults(bundle, tmp_path):
    root = REPO / "bundles" / bundle
    result = medseg("train", root, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = {}
    for line in result.stdout.split(f"--set ids of {root}", 1)[1].splitlines()[1:]:
        key, _, value = line.strip().partition(" ")
        listed[key] = json.loads(value.strip())
    config = json.loads((root / "configs" / "train.json").read_text())
    assert listed == settable_ids(root)
    for key in ("max_epochs", "batch_size", "learning_rate", "roi_size", "val_interval", "amp", "seed", "dataset_dir"):
        assert listed[key] == config[key], key
    # Wiring and code are not settings.
    assert not set(listed) & {"imports", "network_def", "train", "validate", "optimizer", "run", "hyperparameters"}


def test_train_help_without_a_bundle_is_the_plain_help(tmp_path):
    result = medseg("train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--preset" in result.stdout and "--set ids of" not in result.stdout


def test_a_typo_in_set_is_refused_with_the_nearest_ids(tmp_path):
    result = medseg("train", REPO / "bundles" / "brats_segresnet", "--data", tmp_path, "--set", "max_epoch=1",
                    "--no-tracking", cwd=tmp_path)
    assert result.returncode == 2
    assert "--set max_epoch:" in result.stderr and "did you mean max_epochs" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_heldout_metrics_go_to_the_run_they_score(mlflow_server):
    from medseg.tracking.heldout import log_heldout_metrics

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("heldout") or client.get_experiment(
        client.create_experiment("heldout"))
    run = client.create_run(experiment.experiment_id)
    client.set_terminated(run.info.run_id, "FINISHED")
    assert log_heldout_metrics(run.info.run_id, {"dice_WT": 0.84, "hd95_ET": float("nan")}, mlflow_server)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics == {"heldout_dice_WT": 0.84}  # a NaN (an empty case's HD95) is left out
    assert not log_heldout_metrics("0" * 32, {"dice_WT": 0.5}, mlflow_server)  # a warning, not an error
