"""Exact resume: a run killed with SIGKILL and resumed ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import sys

import pytest
from mlflow import MlflowClient
from tiny_training import BUNDLE, TINY, final_training, kill_after_first_checkpoint, medseg, set_args

from medseg.checkpoint import load_checkpoint
from medseg.engine.handlers.run_state import newest_valid_checkpoint
from medseg.errors import MedsegError


@pytest.mark.parametrize("loader", [{}, {"device_augment": "true"}], ids=["plain_loader", "thread_loader"])
def test_sigkill_then_resume_matches_uninterrupted(loader, tiny_brats, tmp_path):
    """Also with the GPU fast path's background-thread loader, whose transform RNGs advance in the main process."""
    settings = {**TINY, **loader}
    straight = tmp_path / "straight"
    result = medseg("train", str(BUNDLE), "--data", str(tiny_brats), "--output", str(straight), *set_args(settings),
                    "--no-tracking", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    args = ["train", str(BUNDLE), "--data", str(tiny_brats), "--output", str(interrupted), *set_args(settings)]
    killed_at = kill_after_first_checkpoint([sys.executable, "-m", "medseg", *args], tmp_path,
                                            interrupted / "models" / "last.pt")
    assert killed_at in (1, 2)
    run_id = load_checkpoint(interrupted / "models" / "last.pt")["extra"]["mlflow_run_id"]
    assert not (interrupted / "configs" / "metadata.json").exists() or "medseg_training" not in json.loads(
        (interrupted / "configs" / "metadata.json").read_text())

    resumed = medseg("train", str(BUNDLE), "--resume", str(interrupted), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_training(straight), final_training(interrupted)
    assert b["epochs"] == a["epochs"] == 3
    for key in ("train_loss", "val_mean_dice", "val_dice_TC", "val_dice_WT", "val_dice_ET", "lr"):
        assert b["final_metrics"][key] == a["final_metrics"][key], key  # bit for bit on the CPU
    assert b["best_metric"] == a["best_metric"]
    # The same MLflow run continued, and it finished.
    assert b["mlflow_run_id"] == run_id
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["medseg.resume_count"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]


def test_resume_takes_newest_valid_checkpoint(tmp_path):
    import torch

    from medseg.checkpoint import save_checkpoint

    models = tmp_path / "models"
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    spec = {"name": "unet", "kwargs": {}}
    save_checkpoint(models / "last.prev.pt", net, network=spec, epoch=4, optimizer_state=opt.state_dict())
    save_checkpoint(models / "last.pt", net, network=spec, epoch=5, optimizer_state=opt.state_dict())
    assert newest_valid_checkpoint(models)[1]["epoch"] == 5
    (models / "last.pt").write_bytes((models / "last.pt").read_bytes()[:100])  # torn write of a non-atomic writer
    path, ckpt = newest_valid_checkpoint(models)
    assert path.name == "last.prev.pt" and ckpt["epoch"] == 4
    (models / "last.prev.pt").unlink()
    with pytest.raises(MedsegError, match="no valid checkpoint"):
        newest_valid_checkpoint(models)


def test_an_untracked_run_resumes_untracked(tiny_brats, tmp_path):
    out = tmp_path / "untracked"
    first = medseg("train", str(BUNDLE), "--data", str(tiny_brats), "--output", str(out),
                   *set_args({**TINY, "max_epochs": "1"}), "--no-tracking", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = medseg("train", str(BUNDLE), "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_training(out)["mlflow_run_id"] is None
    assert not (tmp_path / "runs").exists()  # no MLflow store was created
