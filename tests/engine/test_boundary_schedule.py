"""The boundary-loss weight rises each epoch on the routes a user takes (issue #15, item 6)."""

from __future__ import annotations

import json

from tiny_training import BUNDLE, TINY, medseg, monai_run, reproduce_exactly, set_args

BOUNDARY = {"name": "boundary", "kwargs": {"sigmoid": True, "alpha_start": 0.01, "alpha_step": 0.05}}


def _weights(out):
    history = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]
    return history["final_metrics"].get("boundary_weight")


def test_boundary_weight_moves_under_medseg_train_and_reproduces(tiny_brats, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out,
                    *set_args({**TINY, "max_epochs": "3"}), "--set", f"loss_spec={json.dumps(BOUNDARY)}",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from medseg.checkpoint import load_checkpoint

    history = load_checkpoint(out / "models" / "last.pt")["extra"]["history"]["boundary_weight"]
    assert [round(w, 6) for _, w in history] == [0.01, 0.06, 0.11]  # alpha_start + alpha_step * (epoch - 1)
    assert abs(_weights(out) - 0.11) < 1e-9

    reproduce_exactly(out, tiny_brats, tmp_path / "again", cwd=tmp_path)
    assert abs(_weights(tmp_path / "again") - 0.11) < 1e-9


def test_boundary_weight_moves_under_monai_bundle_run(tiny_brats, tmp_path):
    extra = tmp_path / "boundary.json"
    extra.write_text(json.dumps({"loss_spec": BOUNDARY}))
    out = tmp_path / "out"
    result = monai_run([BUNDLE / "configs" / "train.json", extra], tiny_brats, out,
                       {**TINY, "max_epochs": "2", "tracking_enabled": "false"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert abs(_weights(out) - 0.06) < 1e-9
