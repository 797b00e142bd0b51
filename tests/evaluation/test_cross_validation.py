"""Merging the folds' out-of-fold masks: every case exactly once, or a clear refusal."""

from __future__ import annotations

import pytest

from medseg.errors import MedsegError
from medseg.evaluation.cross_validation import evaluation_task, gather_oof


def _fold(root, k, cases, extra=()):
    oof = root / f"fold_{k}" / "oof"
    oof.mkdir(parents=True)
    for case in cases:
        (oof / f"{case}.nii.gz").write_bytes(b"mask")
        (oof / f"{case}_prob.nii.gz").write_bytes(b"prob")
    for name in extra:
        (oof / name).write_bytes(b"x")
    return root / f"fold_{k}"


def test_masks_are_linked_once_and_probability_maps_stay(tmp_path):
    folds = [_fold(tmp_path, 0, ["a", "b"]), _fold(tmp_path, 1, ["c"], extra=(".tmp-partial",))]
    owner = gather_oof(folds, {0: ["a", "b"], 1: ["c"]}, tmp_path / "oof")
    assert owner == {"a": 0, "b": 0, "c": 1}
    assert sorted(p.name for p in (tmp_path / "oof").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]


def test_a_missing_a_foreign_or_a_shared_case_is_refused(tmp_path):
    folds = [_fold(tmp_path / "x", 0, ["a"]), _fold(tmp_path / "x", 1, ["c"])]
    with pytest.raises(MedsegError, match=r"missing \['b'\]"):
        gather_oof(folds, {0: ["a", "b"], 1: ["c"]}, tmp_path / "oof")
    with pytest.raises(MedsegError, match=r"not its own \['c'\]"):
        gather_oof(folds, {0: ["a"], 1: []}, tmp_path / "oof")
    shared = [_fold(tmp_path / "y", 0, ["a"]), _fold(tmp_path / "y", 1, ["a"])]
    with pytest.raises(MedsegError, match="predicted by folds 0 and 1"):
        gather_oof(shared, {0: ["a"], 1: ["a"]}, tmp_path / "oof2")


def test_the_evaluation_task_follows_the_models_task():
    assert evaluation_task("regions") == "brats"
    assert evaluation_task("multiclass") == "labels"
    assert evaluation_task("binary") == "isic"
