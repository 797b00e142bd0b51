"""Progressive unfreezing runs from both routes and reproduces bit for bit (issue #15, item 1).

``--set unfreeze_epochs_per_stage=1`` on the DeepLabV3+ bundle unfreezes one encoder stage per
epoch, deepest first; the same schedule given as a component in an extra config file to
``python -m monai.bundle run`` is recorded as written.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from tiny_training import REPO, medseg, monai_run, reproduce_exactly, set_args

from medseg.checkpoint import load_checkpoint
from medseg.data.synth.isic import write_isic_dataset

DEEPLAB = REPO / "bundles" / "isic_deeplabv3plus"
TINY = {"max_epochs": "3", "batch_size": "4", "roi_size": "[48,48]", "num_workers": "0", "freeze_epochs": "1",
        "network_spec#kwargs#encoder_depth": "10", "network_spec#kwargs#aspp_channels": "16",
        "network_spec#kwargs#low_level_channels": "8", "warmup_epochs": "1", "deterministic": "true",
        "val_interval": "3"}
SCHEDULE = {"_target_": "medseg.transfer.ProgressiveUnfreeze", "epochs_per_stage": 1, "freeze_epochs": 1,
            "encoder_lr_factor": 0.1, "layer_decay": 0.5}


@pytest.fixture(scope="module")
def isic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isic_small")
    write_isic_dataset(root, cases=12, size=(64, 48), seed=0)
    return root


def _schedule(out: Path, log: str) -> dict[int, list[bool]]:
    """Which encoder stages (stem first) trained in each epoch where that changed, as the run logged it."""
    groups = load_checkpoint(out / "models" / "last.pt")["optimizer_state"]["param_groups"]
    assert [g.get("name") for g in groups] == [f"encoder.stage{i}" for i in range(5)] + ["head"]
    found = {}
    for line in log.splitlines():
        match = re.search(r"epoch (\d+): encoder parts training: (\{.*\})", line)
        if match:
            stages = ast.literal_eval(match.group(2))
            found[int(match.group(1))] = [stages[f"encoder.stage{i}"] for i in range(5)]
    return found


# Epoch 1 the head only, epoch 2 the deepest stage too, epoch 3 the two deepest.
PROGRESSIVE = {1: [False] * 5, 2: [False, False, False, False, True], 3: [False, False, False, True, True]}


def test_progressive_unfreezing_from_medseg_train_reproduces(isic_small, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", DEEPLAB, "--data", isic_small, "--output", out, *set_args(TINY),
                    "--set", "unfreeze_epochs_per_stage=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _schedule(out, result.stdout + result.stderr) == PROGRESSIVE

    again = reproduce_exactly(out, isic_small, tmp_path / "again", cwd=tmp_path)
    assert _schedule(tmp_path / "again", again.stdout + again.stderr) == PROGRESSIVE


def test_progressive_unfreezing_as_a_component_in_an_extra_config_file(isic_small, tmp_path):
    extra = tmp_path / "unfreeze.json"
    extra.write_text(json.dumps({"transfer_schedule": SCHEDULE}))
    out = tmp_path / "out"
    result = monai_run([DEEPLAB / "configs" / "train.json", extra], isic_small, out,
                       {**TINY, "tracking_enabled": "false"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _schedule(out, result.stderr + result.stdout) == PROGRESSIVE
    written = json.loads((out / "configs" / "train.json").read_text())
    assert written["transfer_schedule"] == SCHEDULE and written["overrides"] == {"transfer_schedule": SCHEDULE}


def test_a_frozen_encoder_trains_under_torchrun(isic_small, tmp_path):
    """DDP with 2 gloo processes while the encoder is frozen: its parameters get no gradient in the first epoch.

    DDP must then be told to look for unused parameters (``ddp_find_unused_parameters``, on for
    this bundle while anything is frozen), or the second step stops with "Expected to have
    finished reduction in the prior iteration".
    """
    import subprocess
    import sys

    out = tmp_path / "ddp"
    configs = f"['{DEEPLAB / 'configs/train.json'}','{DEEPLAB / 'configs/multi_gpu_train.json'}']"
    values = {**TINY, "max_epochs": "2", "val_interval": "2", "tracking_enabled": "False"}
    args = [a for key, value in values.items() for a in (f"--{key}", value)]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "monai.bundle", "run", "--config_file", configs, "--dataset_dir", str(isic_small),
                             "--output_dir", str(out), *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    assert meta["epochs"] == 2 and (out / "models" / "model.pt").is_file()
