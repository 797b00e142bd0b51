"""``planned_vs_fixed.py``'s scoring: held-out Dice per class of one arm's masks, in each case's own geometry."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from common import dice


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def score(pred_dir: Path, test_dir: Path, labels: dict[str, str]) -> dict[str, Any]:
    """Dice of each foreground class, masks of ``pred_dir`` against ``test_dir/labelsTr``, in each case's geometry.

    ``dice``: per case, then averaged over the cases, nnU-Net's way: a case where the class is
    absent from both truth and mask has no Dice (it is left out; a mask that has the class where
    the truth has none scores 0). ``dice_empty_as_1``: the BraTS way, such a case scores 1.
    ``pooled_dice``: the voxels of all held-out cases together. ``mean_dice``: the mean of ``dice``
    over the foreground classes (the headline).
    """
    classes = {int(v): name for name, v in labels.items() if int(v) != 0}
    names = list(classes.values())
    per_case, pooled = {}, defaultdict(lambda: [0, 0])
    for truth_path in sorted((test_dir / "labelsTr").glob("*.nii.gz")):
        case = truth_path.name[: -len(".nii.gz")]
        truth_img, pred_img = nib.load(truth_path), nib.load(pred_dir / truth_path.name)
        if truth_img.shape != pred_img.shape or not np.allclose(truth_img.affine, pred_img.affine, atol=1e-4):
            raise RuntimeError(f"{case}: the mask's geometry {pred_img.shape} differs from the label's "
                               f"{truth_img.shape} (or their affines differ)")
        truth, pred = np.asanyarray(truth_img.dataobj), np.asanyarray(pred_img.dataobj)
        row: dict[str, Any] = {"spacing": [round(float(z), 3) for z in truth_img.header.get_zooms()[:3]],
                               "shape": list(truth.shape)}
        for value, name in classes.items():
            t, p = truth == value, pred == value
            row[name] = dice(p, t) if (t.any() or p.any()) else None
            row[f"{name}_truth_voxels"] = int(t.sum())
            row[f"{name}_mask_voxels"] = int(p.sum())
            pooled[name][0] += 2 * int((t & p).sum())
            pooled[name][1] += int(t.sum()) + int(p.sum())
        row["mean"] = _mean([row[name] for name in names])
        per_case[case] = row
    if not per_case:
        raise RuntimeError(f"{test_dir}/labelsTr: no labels")
    rows = list(per_case.values())
    mean = {name: _mean([r[name] for r in rows]) for name in names}
    by_spacing = defaultdict(list)
    for r in rows:
        by_spacing["x".join(f"{z:g}" for z in r["spacing"])].append(r["mean"])
    return {"dice": mean, "mean_dice": _mean(list(mean.values())),
            "cases_scored": {name: sum(r[name] is not None for r in rows) for name in names},
            "dice_empty_as_1": {name: float(np.mean([1.0 if r[name] is None else r[name] for r in rows]))
                                for name in names},
            "pooled_dice": {n: (pooled[n][0] / pooled[n][1] if pooled[n][1] else None) for n in names},
            "mean_dice_by_spacing": {k: {"cases": len(v), "mean_dice": _mean(v)} for k, v in by_spacing.items()},
            "per_case": per_case}

