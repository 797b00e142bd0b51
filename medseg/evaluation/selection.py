"""``medseg cv select``: choose among configurations and their ensembles on out-of-fold predictions.

As nnU-Net's ``find_best_configuration``: every cross-validation folder is one configuration,
scored by the mean out-of-fold Dice over its regions (or classes) from its ``cv_summary.json``;
every combination of two or more configurations is an ensemble, scored on the same cases by
averaging the members' out-of-fold probability maps (``medseg cv --save-prob``) case by case
and turning the mean into labels with the first member's model. The best (highest mean Dice;
a tie goes to the fewest members) is written to ``selection.json`` with every candidate's
numbers.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.errors import MedsegError
from medseg.evaluation.cross_validation import CV_SUMMARY
from medseg.evaluation.runner import evaluate
from medseg.utils.atomic import atomic_write_text

__all__ = ["MAX_MEMBERS", "select_configuration"]

MAX_MEMBERS = 6  # 2^6 - 7 = 57 ensembles: each is one pass over the out-of-fold cases


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MedsegError(f"{path}: cannot be read ({err}); is this a finished medseg cv folder?") from err


def _score(summary: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Mean Dice over the regions or classes of an evaluation summary, and each one's mean."""
    dice = {k: float(v["mean"]) for k, v in summary.items() if k.startswith("dice_") and v.get("mean") is not None}
    if not dice:
        raise MedsegError("the summary holds no Dice to choose on")
    return float(np.mean(list(dice.values()))), dice


def _ensemble_masks(cv_dirs: Sequence[Path], owners: Sequence[dict[str, int]], into: Path) -> None:
    """Write the labels of the members' mean out-of-fold probabilities of every case into ``into``."""
    from medseg.inference.model import load_inference_model
    from medseg.inference.postprocess import probabilities_to_labels

    model = load_inference_model(cv_dirs[0] / "fold_0")
    for case in owners[0]:
        total = None
        affine = None
        for cv_dir, owner in zip(cv_dirs, owners):
            path = cv_dir / f"fold_{owner[case]}" / "oof" / f"{case}_prob.nii.gz"
            if not path.is_file():
                raise MedsegError(f"{path}: missing; ensembles are chosen on probability maps: run medseg cv with "
                                  "--save-prob")
            image = nib.load(path)
            probabilities = np.moveaxis(np.asarray(image.dataobj, dtype=np.float32), -1, 0)
            total = probabilities if total is None else total + probabilities
            affine = image.affine
        labels = probabilities_to_labels(total / len(cv_dirs), model)
        nib.save(nib.Nifti1Image(labels, affine), into / f"{case}.nii.gz")


def select_configuration(cv_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Score each configuration and each ensemble of them on the out-of-fold cases; write the choice.

    Args:
        cv_dirs: finished ``medseg cv`` folders of one dataset and one fold split.
        out: where ``selection.json`` goes (default: the first folder).

    Returns:
        ``{"best": {...}, "candidates": [...]}``; each candidate has its ``members``, ``mean_dice``
        and per-region ``dice``.

    Raises:
        MedsegError: unfinished folders, different datasets or folds, or missing probability maps.
    """
    dirs = [Path(d) for d in cv_dirs]
    if not 1 <= len(dirs) <= MAX_MEMBERS:
        raise MedsegError(f"medseg cv select compares 1 to {MAX_MEMBERS} cross-validations, got {len(dirs)}")
    states = [_read(d / "cv.json") for d in dirs]
    data = {s["options"]["data"] for s in states}
    folds = {s["options"]["folds"] for s in states}
    if len(data) > 1 or len(folds) > 1:
        raise MedsegError(f"the cross-validations differ in dataset or folds ({sorted(data)}, {sorted(folds)}); "
                          "out-of-fold predictions compare only on the same cases and split")
    summaries = [_read(d / CV_SUMMARY) for d in dirs]
    owners = [{p.name.removesuffix(".nii.gz"): k for k in range(s["options"]["folds"])
               for p in (d / f"fold_{k}" / "oof").glob("*.nii.gz") if not p.name.endswith(("_prob.nii.gz",
                                                                                           "_uncertainty.nii.gz"))}
              for d, s in zip(dirs, states)]
    if any(set(o) != set(owners[0]) for o in owners):
        raise MedsegError("the cross-validations predicted different cases out of fold")
    candidates = []
    for d, summary in zip(dirs, summaries):
        mean, dice = _score(summary["overall"])
        candidates.append({"members": [str(d)], "mean_dice": mean, "dice": dice})
    task = summaries[0]["task"]
    for size in range(2, len(dirs) + 1):
        for combo in itertools.combinations(range(len(dirs)), size):
            with tempfile.TemporaryDirectory(prefix="medseg-select-") as tmp:
                masks, scores = Path(tmp) / "masks", Path(tmp) / "scores"
                masks.mkdir()
                scores.mkdir()
                _ensemble_masks([dirs[i] for i in combo], [owners[i] for i in combo], masks)
                result = evaluate(masks, Path(next(iter(data))), task, scores / "metrics.csv")
            mean, dice = _score(result.summary)
            candidates.append({"members": [str(dirs[i]) for i in combo], "mean_dice": mean, "dice": dice})
    best = max(candidates, key=lambda c: (round(c["mean_dice"], 9), -len(c["members"])))
    record = {"best": best, "candidates": candidates, "cases": len(owners[0])}
    target = Path(out) if out is not None else dirs[0]
    atomic_write_text(target / "selection.json", json.dumps(record, indent=2) + "\n")
    return record
