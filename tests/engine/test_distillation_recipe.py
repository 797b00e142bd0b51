"""Distillation as a recipe: a trained teacher bundle distilled into a smaller student (issue #15, item 3).

The teacher trains for an epoch; ``--set teacher=<its output bundle>`` distils it into a
student with a quarter of the features; the student's ``model.pt`` holds the student alone,
under its own spec, so ``medseg infer`` uses it; ``medseg reproduce`` retrains it bit for bit
from the same teacher file and refuses a changed one. The same through ``python -m monai.bundle
run`` with an extra config file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_training import BUNDLE, TINY, medseg, monai_run, reproduce_exactly, set_args

from medseg.checkpoint import WEIGHTS_KEY, load_checkpoint, save_checkpoint
from medseg.errors import MedsegError
from medseg.networks import build_network
from medseg.transfer import load_teacher, teacher_record

STUDENT = {"network_spec#kwargs#features": "[2,4,8]"}


@pytest.fixture(scope="module")
def teacher(tiny_brats, tmp_path_factory) -> Path:
    """A teacher bundle trained for one epoch."""
    work = tmp_path_factory.mktemp("teacher")
    out = work / "teacher"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out, "--no-tracking",
                    *set_args({**TINY, "max_epochs": "1"}), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _student_only(model_pt: Path) -> dict:
    ckpt = load_checkpoint(model_pt)
    assert ckpt["network"]["kwargs"]["features"] == [2, 4, 8]
    assert not any(key.startswith(("teacher.", "student.")) for key in ckpt[WEIGHTS_KEY])
    student = build_network(ckpt["network"]["name"], **ckpt["network"]["kwargs"])
    student.load_state_dict(ckpt[WEIGHTS_KEY], strict=True)  # the student alone, under its own spec
    return ckpt


def test_distil_infer_and_reproduce_from_medseg(tiny_brats, teacher, tmp_path):
    out = tmp_path / "student"
    result = medseg("train", BUNDLE, "--data", tiny_brats, "--output", out,
                    *set_args({**TINY, **STUDENT, "max_epochs": "1"}), "--set", f"teacher={teacher}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _student_only(out / "models" / "model.pt")
    _student_only(out / "models" / "last.pt")
    written = json.loads((out / "configs" / "train.json").read_text())
    digest = teacher_record(teacher)
    assert written["teacher"] == digest and digest["path"] == str((teacher / "models" / "model.pt").resolve())

    case = min(p for p in tiny_brats.iterdir() if p.is_dir())
    infer = medseg("infer", out, "--input", case, "--output", tmp_path / "pred", "--no-progress", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-2000:]
    assert list((tmp_path / "pred").rglob("*.nii.gz"))

    reproduce_exactly(out, tiny_brats, tmp_path / "again", cwd=tmp_path)
    _student_only(tmp_path / "again" / "models" / "model.pt")

    # Another teacher file under the same name: the reproduction refuses it before training.
    ckpt = load_checkpoint(teacher / "models" / "model.pt")
    ckpt[WEIGHTS_KEY] = {k: v + 1 for k, v in ckpt[WEIGHTS_KEY].items()}
    changed = tmp_path / "changed"
    (changed / "models").mkdir(parents=True)
    save_checkpoint(changed / "models" / "model.pt", ckpt[WEIGHTS_KEY], network=ckpt["network"],
                    label_convention=ckpt["label_convention"], channel_names=ckpt["channel_names"],
                    preprocessing=ckpt["preprocessing"], extra=ckpt["extra"])
    with pytest.raises(MedsegError, match="differs from the one recorded"):
        teacher_record({"path": str(changed), "sha256": digest["sha256"]})


def test_distil_through_monai_bundle_run_with_an_extra_config(tiny_brats, teacher, tmp_path):
    extra = tmp_path / "distill.json"
    # The distillation term alone: a temperature-softened KL between two networks' outputs, far
    # below the Dice-focal task loss (about 1 in the first epoch) that a run without the teacher reports.
    extra.write_text(json.dumps({"teacher": str(teacher), "distillation": {"temperature": 3.0, "alpha_kd": 1.0,
                                                                           "alpha_task": 0.0}}))
    out = tmp_path / "out"
    result = monai_run([BUNDLE / "configs" / "train.json", extra], tiny_brats, out,
                       {**TINY, **STUDENT, "max_epochs": "1", "tracking_enabled": "false"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _student_only(out / "models" / "model.pt")
    written = json.loads((out / "configs" / "train.json").read_text())
    assert written["distillation"]["temperature"] == 3.0 and written["teacher"]["sha256"]
    final = json.loads((out / "configs" / "metadata.json").read_text())["medseg_training"]["final_metrics"]
    assert 0.0 < final["train_loss"] < 0.2, final


def _save(path: Path, spec: dict, **meta) -> Path:
    net = build_network(spec["name"], **spec["kwargs"])
    return save_checkpoint(path, net, network=spec, **meta)


SPEC = {"name": "attention_unet3d",
        "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "features": [2, 4]}}
PRE = {"task": "regions", "orientation": "RAS", "normalize": "nonzero_channel_wise",
       "channels": ["t1", "t1ce", "t2", "flair"]}


def test_a_teacher_that_does_not_fit_is_refused_naming_it(tmp_path):
    good = _save(tmp_path / "good.pt", SPEC, preprocessing=PRE, extra={"output_names": ["TC", "WT", "ET"]})
    net = load_teacher(good, student_spec=SPEC, output_names=["TC", "WT", "ET"], preprocessing=PRE)
    assert not net.training and isinstance(net, torch.nn.Module)
    assert load_teacher(None, student_spec=SPEC) is None

    with pytest.raises(MedsegError, match=r"good\.pt.*outputs: teacher \['TC', 'WT', 'ET'\], student \['WT', 'TC', 'ET'\]"):
        load_teacher(good, student_spec=SPEC, output_names=["WT", "TC", "ET"], preprocessing=PRE)
    with pytest.raises(MedsegError, match="preprocessing 'normalize'"):
        load_teacher(good, student_spec=SPEC, preprocessing={**PRE, "normalize": "imagenet"})
    with pytest.raises(MedsegError, match="input channels: teacher 4, student 2"):
        load_teacher(good, student_spec={"name": "x", "kwargs": {"in_channels": 2}})
    with pytest.raises(MedsegError, match="deep supervision"):
        load_teacher(good, student_spec={"name": "x", "kwargs": {"deep_supervision": True}})
    with pytest.raises(MedsegError, match="teacher checkpoint not found"):
        load_teacher(tmp_path / "nowhere", student_spec=SPEC)
    (tmp_path / "plain.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedsegError, match="plain.pt"):
        load_teacher(tmp_path / "plain.pt", student_spec=SPEC)
