"""The 2D ISIC bundles through ``medseg train`` with MLflow tracking, and MONAI's bundle-workflow contract.

The accuracy check trains the light UNet from scratch on synthetic ISIC-like images, infers
on held-out images written with another seed, and scores them with ``medseg evaluate
--task isic``: the mean thresholded Jaccard must reach 0.75. Its settings are the ones
the bundle's docs state as the CPU budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from monai.bundle import ConfigWorkflow
from PIL import Image
from tiny_training import REPO, medseg, monai_evaluate, set_args

from medseg.checkpoint import load_checkpoint
from medseg.data.synth.isic import write_isic_dataset
from medseg.networks import build_network

LIGHT = REPO / "bundles" / "isic_light_unet"
DEEPLAB = REPO / "bundles" / "isic_deeplabv3plus"
# The CPU budget of bundles/isic_light_unet/docs/README.md ("Accuracy on synthetic data").
LIGHT_BUDGET = {"max_epochs": "30", "batch_size": "8", "roi_size": "[96,96]", "learning_rate": "0.003",
                "warmup_epochs": "1", "num_workers": "0", "val_interval": "10", "deterministic": "true"}
TINY_DEEPLAB = {"max_epochs": "3", "batch_size": "4", "roi_size": "[64,64]", "num_workers": "0", "freeze_epochs": "1",
                "network_spec#kwargs#encoder_depth": "10", "network_spec#kwargs#aspp_channels": "32",
                "network_spec#kwargs#low_level_channels": "8", "warmup_epochs": "1", "deterministic": "true"}


@pytest.fixture(scope="module")
def isic_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isic_train")
    write_isic_dataset(root, cases=40, size=(192, 144), seed=0)
    return root


@pytest.fixture(scope="module")
def isic_heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isic_heldout")
    write_isic_dataset(root, cases=12, size=(192, 144), seed=99)
    return root


@pytest.mark.parametrize("bundle", ["isic_light_unet", "isic_deeplabv3plus", "brats_attention_unet3d",
                                    "brats_segresnet", "generic_3d"])
def test_bundle_workflow_contract(bundle, tmp_path):
    """MONAI's ConfigWorkflow finds every required train and infer property of every bundle."""
    root = REPO / "bundles" / bundle
    for kind, config in (("train", "train.json"), ("infer", "inference.json")):
        workflow = ConfigWorkflow(config_file=str(root / "configs" / config),
                                  meta_file=str(root / "configs" / "metadata.json"), workflow_type=kind)
        # Only checks that the ids exist; nothing is instantiated, so no data is needed.
        missing = [name for name, prop in workflow.properties.items()
                   if prop.get("required") and prop.get("id") and workflow.parser.get(prop["id"]) is None]
        assert missing == [], (bundle, kind, missing)
    train = json.loads((root / "configs" / "train.json").read_text())
    for key in ("max_epochs", "batch_size", "learning_rate", "roi_size", "val_interval", "amp", "seed", "dataset_dir"):
        assert key in train, (bundle, key)


@pytest.mark.slow
def test_light_unet_from_scratch_reaches_jaccard_075(isic_train, isic_heldout, mlflow_server, tmp_path):
    out = tmp_path / "light"
    result = medseg("train", str(LIGHT), "--data", str(isic_train), "--output", str(out), *set_args(LIGHT_BUDGET),
                    "--tracking-uri", mlflow_server, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt = load_checkpoint(out / "models" / "model.pt")
    assert ckpt["network"]["name"] == "light_unet"
    assert ckpt["preprocessing"] == {"task": "binary", "spatial_dims": 2, "image_size": [96, 96], "resize": "stretch",
                                     "normalize": "none", "channels": ["R", "G", "B"]}
    run_id = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["mlflow_run_id"]
    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["network_spec.name"] == "light_unet" and "val_jaccard" in run.data.metrics

    preds = tmp_path / "preds"
    inputs = isic_heldout / "ISIC2018_Task1-2_Training_Input"
    result = medseg("infer", str(out), "--input", str(inputs), "--output", str(preds), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # MONAI's own runner on the output bundle's inference config writes the same masks.
    monai_preds = tmp_path / "monai_preds"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                             str(out / "configs" / "inference.json"), "--dataset_dir", str(isic_heldout),
                             "--output_dir", str(monai_preds)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    masks = sorted(p for p in preds.glob("*.png") if not p.stem.endswith("_overlay"))
    assert len(masks) == 12
    for mask in masks:
        ours, theirs = np.asarray(Image.open(mask)), np.asarray(Image.open(monai_preds / mask.name))
        assert ours.shape == theirs.shape == (144, 192) and (ours == theirs).mean() > 0.999, mask.name
    csv = tmp_path / "eval" / "metrics.csv"
    result = medseg("evaluate", "--pred", str(preds), "--truth", str(isic_heldout), "--task", "isic", "--out", str(csv),
                    cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((csv.parent / "summary.json").read_text())
    assert summary["n_evaluated"] == 12
    assert summary["metrics"]["thresholded_jaccard"]["mean"] >= 0.75, summary["metrics"]
    # The 2D output bundle's evaluate.json (the same file as the 3D bundles') scores its best model again.
    scores = monai_evaluate(out, tmp_path / "evaluated", cwd=tmp_path)
    best = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["best_metric"]
    assert float(scores["val_mean_dice"]) == pytest.approx(best, abs=1e-6) and "val_jaccard" in scores


def test_deeplab_fine_tunes_from_a_local_encoder_file(isic_train, mlflow_server, tmp_path):
    # A local ResNet-10 weights file with torchvision's key names (here from a seeded network,
    # standing in for a downloaded ImageNet file; nothing is downloaded).
    torch.manual_seed(0)
    donor = build_network("deeplabv3plus", in_channels=3, out_channels=1, encoder_depth=10, aspp_channels=32,
                          low_level_channels=8)
    weights = tmp_path / "resnet10.pth"
    torch.save({**donor.encoder.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, weights)
    out = tmp_path / "deeplab"
    result = medseg("train", str(DEEPLAB), "--data", str(isic_train), "--output", str(out), *set_args(TINY_DEEPLAB),
                    "--set", f"encoder_weights={weights}", "--tracking-uri", mlflow_server, cwd=tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "FROM SCRATCH" not in log
    matched = len(donor.encoder.state_dict())
    assert f"encoder weights: {weights}: {matched} keys matched; 2 unexpected (e.g. fc.weight, fc.bias)" in log
    run_id = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["mlflow_run_id"]
    run = MlflowClient(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["encoder_weights"] == str(weights)
    last = load_checkpoint(out / "models" / "last.pt")
    groups = last["optimizer_state"]["param_groups"]
    names = [g.get("name") for g in groups]
    assert names == [f"encoder.stage{i}" for i in range(5)] + ["head"]
    # Unfrozen after epoch 1, with layer-wise rates: each shallower stage at layer_decay (0.5) times the next.
    # The cosine schedule ends at 0, so the rates are read where the schedule keeps them: its base_lrs.
    lrs = last["scheduler_state"]["base_lrs"]
    assert len(lrs) == 6 and lrs[5] > 0
    for shallower, deeper in zip(lrs[:4], lrs[1:5]):
        assert shallower == pytest.approx(0.5 * deeper)
    assert lrs[4] == pytest.approx(0.1 * lrs[5])
    # The stem moved away from the file's weights once unfrozen.
    trained = load_checkpoint(out / "models" / "last.pt")["model"]
    assert not torch.equal(trained["encoder.conv1.weight"], donor.encoder.state_dict()["conv1.weight"])


def test_deeplab_without_weights_says_it_trains_from_scratch(isic_train, tmp_path):
    out = tmp_path / "scratch"
    result = medseg("train", str(DEEPLAB), "--data", str(isic_train), "--output", str(out),
                    *set_args({**TINY_DEEPLAB, "max_epochs": "1"}), "--no-tracking", cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "trains FROM SCRATCH" in result.stdout + result.stderr
