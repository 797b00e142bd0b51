"""Deep supervision is one setting, reachable from both routes, and reproduces (issue #15, items 1 and 5 of the audit)."""

from __future__ import annotations

import json

from tiny_training import BUNDLE, TINY, medseg, monai_run, reproduce_exactly, set_args

from medseg.checkpoint import load_checkpoint


def test_deep_supervision_from_medseg_train_infers_and_reproduces(tiny_brats, tmp_path):
    out = tmp_path / "out"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out,
                    *set_args({**TINY, "max_epochs": "2", "deep_supervision": "true"}), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load_checkpoint(out / "models" / "model.pt")
    assert ckpt["network"]["kwargs"]["deep_supervision"] is True
    case = sorted(p for p in tiny_brats.iterdir() if p.is_dir())[0]
    infer = medseg("infer", out, "--input", case, "--output", tmp_path / "pred", "--no-progress", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-2000:]
    reproduce_exactly(out, tiny_brats, tmp_path / "again", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "again" / "models" / "model.pt")["network"]["kwargs"]["deep_supervision"]


def test_deep_supervision_from_monai_bundle_run_with_an_extra_config(tiny_brats, tmp_path):
    extra = tmp_path / "deep.json"
    extra.write_text(json.dumps({"deep_supervision": True}))
    out = tmp_path / "out"
    result = monai_run([BUNDLE / "configs" / "train.json", extra], tiny_brats, out,
                       {**TINY, "max_epochs": "1", "tracking_enabled": "false"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(out / "models" / "model.pt")["network"]["kwargs"]["deep_supervision"] is True
    assert json.loads((out / "configs" / "train.json").read_text())["deep_supervision"] is True
