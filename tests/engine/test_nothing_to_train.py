"""A run that would train nothing stops before it starts; a finished run always leaves a model (issue #15, item 7)."""

from __future__ import annotations

import json

from tiny_training import BUNDLE, REPO, TINY, medseg, set_args

from medseg.checkpoint import load_checkpoint
from medseg.data.synth.isic import write_isic_dataset

LIGHT = REPO / "bundles" / "isic_light_unet"


def test_fewer_images_than_the_batch_size_is_refused_with_what_to_change(tmp_path):
    """12 images, 5 folds: 9 train, fewer than batch_size 16 with drop_last. MONAI skipped the run and exited 0."""
    data = tmp_path / "isic"
    write_isic_dataset(data, cases=12, size=(96, 72), seed=0)
    out = tmp_path / "out"
    result = medseg("train", LIGHT, "--data", data, "--output", out, "--no-tracking", "--set", "max_epochs=2",
                    "--set", "roi_size=[64,64]", "--set", "num_workers=0", cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("medseg train:")]
    assert len(errors) == 1 and "nothing to train" in errors[0], result.stderr
    assert "make no batch of batch_size=16" in errors[0] and "--set batch_size=N" in errors[0]
    assert not (out / "models").exists()
    # What the message says to change makes the run train and leave a model.
    result = medseg("train", LIGHT, "--data", data, "--output", tmp_path / "ok", "--no-tracking", "--set",
                    "max_epochs=1", "--set", "roi_size=[64,64]", "--set", "num_workers=0", "--set", "batch_size=4",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ok" / "models" / "model.pt")["extra"]["selected"] == "best"


def test_a_run_whose_score_never_improved_keeps_its_last_weights(tiny_brats, tmp_path):
    """Validation never ran (val_interval past max_epochs): models/model.pt holds the last weights and says so."""
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, "--no-tracking",
                    *set_args({**TINY, "max_epochs": "1", "val_interval": "2"}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = load_checkpoint(out / "models" / "model.pt")
    last = load_checkpoint(out / "models" / "last.pt")
    assert best["extra"]["selected"] == "last" and best["epoch"] == 1
    assert all((best["model"][k] == last["model"][k]).all() for k in best["model"])
    meta = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    assert meta["model"] == "last"
    infer = medseg("infer", out, "--input", sorted(p for p in tiny_brats.iterdir() if p.is_dir())[0],
                   "--output", tmp_path / "pred", "--no-progress", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-2000:]
