"""Overrides of any kind are recorded as written, and a reproduction retrains exactly them (issue #15, item 1).

A component given with ``--set`` used to crash the output-bundle handler (it JSON-dumped what MONAI had
instantiated); given in an extra config file to ``python -m monai.bundle run``, it trained but the
output bundle and MLflow recorded the base config.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from tiny_training import BUNDLE, TINY, medseg, monai_run, set_args

LOSS = {"_target_": "DiceLoss", "sigmoid": True, "squared_pred": True}


def _store(work: Path) -> str:
    return f"sqlite:///{work / 'runs' / 'mlflow.db'}"


def test_a_component_override_trains_is_recorded_and_reproduces(tiny_brats, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, *set_args({**TINY, "max_epochs": "2"}),
                    "--set", f"loss={json.dumps(LOSS)}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "configs" / "train.json").read_text())
    assert written["loss"] == LOSS and written["overrides"]["loss"] == LOSS
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    client = MlflowClient(_store(tmp_path))
    logged = Path(client.download_artifacts(meta["mlflow_run_id"], "config/resolved.json", str(tmp_path)))
    assert json.loads(logged.read_text())["loss"] == LOSS

    # The recorded component is code: the server's word alone does not run it ...
    again = ["reproduce", meta["mlflow_run_id"], "--tracking-uri", _store(tmp_path), "--data", tiny_brats]
    result = medseg(*again, "--output", tmp_path / "refused", cwd=tmp_path)
    assert result.returncode == 2 and "would run code" in result.stderr and "'loss#_target_'" in result.stderr
    # ... the user's does, and the reproduction is the same model, bit for bit.
    result = medseg(*again, "--output", tmp_path / "again", "--trust-bundle", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("val_", "train_loss"))]
    assert rows and all(line.rstrip().endswith("yes") for line in rows), result.stdout
    assert json.loads((tmp_path / "again" / "configs" / "train.json").read_text())["loss"] == LOSS


def test_an_extra_config_file_to_monai_bundle_run_is_recorded(tiny_brats, tmp_path):
    extra = tmp_path / "my_loss.json"
    extra.write_text(json.dumps({"loss": LOSS}))
    out = tmp_path / "out"
    result = monai_run([BUNDLE / "configs" / "train.json", extra], tiny_brats, out,
                       {**TINY, "max_epochs": "1", "tracking_enabled": "false"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "configs" / "train.json").read_text())
    assert written["loss"] == LOSS and written["overrides"] == {"loss": LOSS}
    # The bundle's own settings given on the command line are values, not overrides of the recipe.
    assert written["max_epochs"] == 1 and "max_epochs" not in written["overrides"]
