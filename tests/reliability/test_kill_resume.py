"""A training process SIGKILLed mid-epoch, mid-validation or mid-checkpoint-write resumes to the same result.

Each run is a real ``medseg train`` subprocess that kills itself with SIGKILL at a point named
by ``MEDSEG_FAULT_AT`` (see :mod:`medseg.utils.faults`); ``medseg train --resume`` then has
to finish with exactly the metrics and weights of an uninterrupted run (CPU, deterministic).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from tiny_training import BUNDLE, TINY, medseg, set_args

from medseg.checkpoint import load_checkpoint

METRICS = ("train_loss", "val_mean_dice", "val_dice_TC", "val_dice_WT", "val_dice_ET", "lr")


def _final(out: Path) -> dict:
    return json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]


# Two epochs: every fault below strikes in epoch 2, after epoch 1's checkpoint exists.
TRAIN = {**TINY, "max_epochs": "2"}


@pytest.fixture(scope="module")
def straight(tiny_brats_rel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run."""
    cwd = tmp_path_factory.mktemp("straight")
    result = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", cwd / "out", *set_args(TRAIN),
                    "--no-tracking", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "out"


def _assert_same_result(resumed: Path, straight: Path) -> None:
    a, b = _final(straight), _final(resumed)
    assert b["epochs"] == a["epochs"] == 2
    for key in METRICS:
        assert b["final_metrics"][key] == a["final_metrics"][key], key  # bit for bit on the CPU
    assert b["best_metric"] == a["best_metric"]
    wa = load_checkpoint(straight / "models" / "last.pt")["model"]
    wb = load_checkpoint(resumed / "models" / "last.pt")["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list((resumed / "models").glob(".*.part*")), "a temporary checkpoint file was left behind"


@pytest.mark.parametrize(
    ("fault", "state_files"),
    [
        # 3 training iterations per epoch: the 5th is the middle of epoch 2.
        ("train-iteration:5", {"last.pt", "model.pt"}),
        # 1 validation iteration per epoch: the 2nd is epoch 2's validation, before its metrics exist.
        ("val-iteration:2", {"last.pt", "model.pt"}),
        # Epoch 2's last.pt: epoch 1's was moved to last.prev.pt and the new one is a complete
        # temporary file, not yet renamed onto last.pt.
        ("checkpoint-write:2", {"last.prev.pt", "model.pt"}),
    ],
    ids=["mid-epoch", "mid-validation", "checkpoint-write"],
)
def test_sigkill_then_resume_matches_uninterrupted(fault, state_files, straight, tiny_brats_rel, tmp_path):
    out = tmp_path / "out"
    killed = medseg("train", BUNDLE, "--data", tiny_brats_rel, "--output", out, *set_args(TRAIN),
                    "--no-tracking", cwd=tmp_path, env={"MEDSEG_FAULT_AT": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    models = out / "models"
    assert {p.name for p in models.iterdir() if not p.name.startswith(".")} == state_files
    partial = list(models.glob(".last.pt.*.part.pt"))
    assert len(partial) == (1 if fault.startswith("checkpoint-write") else 0)
    assert not (out / "configs" / "metadata.json").exists() or "medseg_training" not in json.loads(
        (out / "configs" / "metadata.json").read_text())
    newest = models / ("last.prev.pt" if partial else "last.pt")
    assert load_checkpoint(newest)["epoch"] == 1
    if partial:
        # What a writer without temp-file-and-rename would have left: a torn last.pt. Resume
        # must skip it, with a warning, and take epoch 1's last.prev.pt.
        (models / "last.pt").write_bytes(partial[0].read_bytes()[: partial[0].stat().st_size // 2])

    resumed = medseg("train", BUNDLE, "--resume", out, "--no-tracking", cwd=tmp_path)
    log = resumed.stdout + resumed.stderr  # the bundle's logging.conf logs to stdout
    assert resumed.returncode == 0, log[-3000:]
    assert f"resumed from {newest} at epoch 1" in log, log[-3000:]
    if partial:
        assert f"removed {partial[0]}, left by a write that was interrupted" in log
        assert "skipped unusable checkpoint" in log and "last.pt: not a readable torch file" in log
    _assert_same_result(out, straight)


def test_fault_hook_is_inert_unless_set_and_rejects_a_bad_spec(monkeypatch):
    """Unset, the hook does nothing; a mistyped ``MEDSEG_FAULT_AT`` fails loudly instead of never firing."""
    from medseg.utils import faults

    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    for point in faults.FAULT_POINTS:
        faults.fault_point(point)  # would SIGKILL pytest itself if the hook were live
    monkeypatch.setenv(faults.FAULT_ENV, "checkpoint:2")
    with pytest.raises(ValueError, match="MEDSEG_FAULT_AT='checkpoint:2': expected POINT:N"):
        faults.fault_point("checkpoint-write")
