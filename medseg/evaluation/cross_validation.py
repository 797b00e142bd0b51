"""The cross-validation summary: every out-of-fold prediction scored once, over all folds and per fold.

Each fold of ``medseg cv`` writes the masks of its own validation cases into
``CV_DIR/fold_K/oof/``. :func:`gather_oof` links them into one folder, ``CV_DIR/oof/``,
refusing a case predicted by two folds or by none, and :func:`summarize_cv` scores that folder
against the dataset with :func:`medseg.evaluation.evaluate` (per-region Dice and HD95 for
BraTS, per-class for other labels) and adds the statistics of each fold.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.evaluation.report import EvaluationResult, describe
from medseg.evaluation.runner import evaluate
from medseg.utils.atomic import atomic_write_text

__all__ = ["CV_SUMMARY", "choose_cv_postprocessing", "evaluation_task", "gather_oof", "summarize_cv"]

CV_SUMMARY = "cv_summary.json"
_MASK_SUFFIX = ".nii.gz"
_EXTRA = ("_prob", "_uncertainty")


def _case_of(name: str) -> str | None:
    """The case id of an out-of-fold mask file name (``None`` for probability and uncertainty maps)."""
    if not name.endswith(_MASK_SUFFIX) or name.startswith("."):
        return None
    stem = name[: -len(_MASK_SUFFIX)]
    return None if stem.endswith(_EXTRA) else stem


def gather_oof(fold_dirs: Sequence[Path], expected: dict[int, Sequence[str]], into: Path) -> dict[str, int]:
    """Link every fold's out-of-fold masks into ``into`` and return ``case id -> fold``.

    Args:
        fold_dirs: the folds' output bundles, fold ``k`` at index ``k``.
        expected: fold -> the ids of its validation cases (from the datalist).
        into: the merged folder (made new each time).

    Raises:
        MedsegError: a case predicted by two folds, an expected case without its mask, or a
            mask of a case its fold did not validate on.
    """
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    owner: dict[str, int] = {}
    for fold, folder in enumerate(fold_dirs):
        oof = folder / "oof"
        masks = {c: p for p in sorted(oof.glob(f"*{_MASK_SUFFIX}")) if (c := _case_of(p.name)) is not None}
        missing = sorted(set(expected[fold]) - set(masks))
        extra = sorted(set(masks) - set(expected[fold]))
        if missing or extra:
            raise MedsegError(f"{oof}: fold {fold}'s out-of-fold masks do not match its validation cases "
                              f"(missing {missing[:5]}, not its own {extra[:5]})")
        for case in masks:
            if case in owner:
                raise MedsegError(f"case {case} is predicted by folds {owner[case]} and {fold}: folds must not "
                                  "share cases")
            owner[case] = fold
        for path in masks.values():  # the masks only: probability maps stay in the fold's folder
            try:
                os.link(path, into / path.name)
            except OSError:
                shutil.copyfile(path, into / path.name)
    return owner


def evaluation_task(spec_task: str | None) -> str:
    """The ``medseg evaluate`` task of a model's task: BraTS regions, classes, or 2D lesions."""
    return {"regions": "brats", "multiclass": "labels", "binary": "isic"}.get(str(spec_task), "labels")


def summarize_cv(oof_dir: Path, data: Path, task: str, owner: dict[str, int], out_dir: Path,
                 convention: str | None = None) -> tuple[EvaluationResult, dict[str, Any]]:
    """Score the merged out-of-fold predictions and write ``cv_metrics.csv``, ``cv_summary.json`` and figures.

    Args:
        oof_dir: the merged out-of-fold folder (:func:`gather_oof`).
        data: the dataset (the truth).
        task: the ``medseg evaluate`` task (:func:`evaluation_task`).
        owner: case id -> the fold that predicted it.
        out_dir: where the reports go.
        convention: the label convention of the truth, when the layout does not say it.

    Returns:
        The evaluation, and the summary written to ``cv_summary.json``: ``overall`` (each
        metric's mean, median, std, quartiles, range, n over all out-of-fold cases),
        ``per_fold`` (the same per fold), ``cases`` and ``folds``.
    """
    result = evaluate(oof_dir, data, task, out_dir / "cv_metrics.csv", convention=convention)
    if not result.ok:
        bad = ", ".join(f"{c.case_id} ({c.error})" for c in result.failed[:3])
        raise MedsegError(f"{len(result.failed)} out-of-fold case(s) could not be scored: {bad}")
    folds = sorted(set(owner.values()))
    per_fold = {}
    for fold in folds:
        cases = [c for c in result.cases if owner.get(c.case_id) == fold]
        per_fold[str(fold)] = {name: describe([c.metrics[name] for c in cases if name in c.metrics])
                               for name in result.summary}
    summary = {"task": task, "convention": result.convention, "cases": len(result.cases), "folds": len(folds),
               "overall": result.summary, "per_fold": per_fold,
               "files": {k: str(Path(v).name) for k, v in result.files.items()}}
    atomic_write_text(out_dir / CV_SUMMARY, json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return result, summary


def choose_cv_postprocessing(oof_dir: Path, data: Path, task: str, fold_dirs: Sequence[Path], out_dir: Path,
                             convention: str | None = None) -> dict[str, Any]:
    """Choose the post-processing on the out-of-fold masks and record it in every fold's model.

    The choice (:func:`medseg.postprocessing.choose_postprocessing`) goes into each fold's
    ``models/model.pt`` (its model spec's ``postprocessing``) and ``configs/inference.json``
    (``label_postprocessing``; the bundle is signed again), so ``medseg infer`` and the bundle's
    own inference apply it; ``postprocessing.json`` in ``out_dir`` reports every rule tried.

    Returns:
        ``{"spec": ..., "report": [...], "cases": n}``.
    """
    from medseg.checkpoint import set_postprocessing
    from medseg.engine.trust import sign_bundle
    from medseg.evaluation.pairing import pair_cases
    from medseg.postprocessing import choose_postprocessing

    if task not in ("brats", "labels"):
        return {"spec": None, "report": [], "cases": 0, "note": f"no post-processing rules for the {task} task"}
    pairing = pair_cases(oof_dir, data, task, convention=convention)
    pairs = [(p.pred, p.truth) for p in pairing.pairs if p.pred is not None]
    regional = pairing.convention is not None and pairing.convention.is_region_based
    classes = [] if regional or pairing.convention is None else sorted(v for v in pairing.convention.valid_values if v)
    choice = choose_postprocessing(pairs, pairing.convention if regional else None, classes)
    spec = choice.spec if (choice.spec["largest_component"] or choice.spec["et_min_voxels"]) else None
    for folder in fold_dirs:
        set_postprocessing(folder / "models" / "model.pt", spec)
        config_path = folder / "configs" / "inference.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            if "label_postprocessing" in config:
                config["label_postprocessing"] = spec
                atomic_write_text(config_path, json.dumps(config, indent=4) + "\n")
                sign_bundle(folder)
    record = {"spec": spec, "report": choice.report, "cases": choice.cases}
    atomic_write_text(out_dir / "postprocessing.json", json.dumps(record, indent=2) + "\n")
    return record
