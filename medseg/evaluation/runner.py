"""``evaluate``: pair predictions with truth, score every case, and write the reports.

This is the library function behind ``medseg evaluate``; the tests call it too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.readers import is_nifti, read_image_2d, read_nifti
from medseg.errors import DataError, InvalidValueError
from medseg.evaluation.figures import MontagePanel, plot_boxplots, plot_montage
from medseg.evaluation.lesionwise_runner import TASK as LESIONWISE_TASK
from medseg.evaluation.lesionwise_runner import evaluate_lesionwise
from medseg.evaluation.loading import check_values, load_pair, truth_convention
from medseg.evaluation.metrics import (
    brats_case_metrics,
    isic_case_metrics,
    labels_case_metrics,
)
from medseg.evaluation.pairing import CasePair, Pairing, pair_cases
from medseg.evaluation.report import (
    CaseResult,
    EvaluationResult,
    sibling_path,
    summarize,
    summary_record,
    write_csv,
    write_summary,
)
from medseg.utils.figures import REGION_COLOURS

logger = logging.getLogger(__name__)

#: Worst and best cases shown in the montage (each).
MONTAGE_CASES: int = 3


def _classes(pairing: Pairing, classes: Sequence[int] | None) -> list[int] | None:
    if classes is not None:
        return sorted(int(c) for c in classes)
    if pairing.convention is not None:
        return sorted(v for v in pairing.convention.valid_values if v != 0)
    return None


def evaluate_case(pair: CasePair, pairing: Pairing, classes: Sequence[int] | None = None) -> CaseResult:
    """Score one case; a :class:`~medseg.errors.DataError` becomes the case's error.

    Args:
        pair: the case's truth and prediction files.
        pairing: the evaluation the case belongs to (task and label convention).
        classes: ``labels`` task: the label values to score (``None``: those present).

    Returns:
        The metrics, or the reason the case failed.
    """
    result = CaseResult(pair.case_id, pred=pair.pred, truth=pair.truth)
    if pair.pred is None:
        result.error = pair.problem or "no prediction found"
        return result
    try:
        loaded = load_pair(pair.pred, pair.truth, binarize=pairing.task == "isic")
        if pairing.task == "isic":
            result.metrics = isic_case_metrics(loaded.pred, loaded.truth)
            return result
        conv = pairing.convention
        if conv is not None:
            check_values(loaded.truth, conv.valid_values, pair.truth, conv.name)
            check_values(loaded.pred, conv.valid_values, pair.pred, conv.name)
        if pairing.task == "brats":
            if conv is None:
                raise InvalidValueError("brats evaluation needs a label convention")
            result.metrics = brats_case_metrics(loaded.pred, loaded.truth, conv, loaded.spacing)
        else:
            result.metrics = labels_case_metrics(loaded.pred, loaded.truth, classes, loaded.spacing)
    except DataError as err:
        result.error = str(err)
    return result


def _fill_absent_classes(results: list[CaseResult]) -> None:
    """Give classes found in other cases but absent from both maps of a case Dice 1 and HD95 0."""
    names: dict[str, None] = {}
    for r in results:
        if r.ok:
            names.update(dict.fromkeys(r.metrics))
    order = sorted(names, key=lambda n: (not n.startswith("dice_"), int(n.split("_", 1)[1])))
    for r in results:
        if r.ok:
            r.metrics = {n: r.metrics.get(n, 1.0 if n.startswith("dice_") else 0.0) for n in order}


def case_score(result: CaseResult, task: str) -> float:
    """The number that ranks cases for the montage: Jaccard (ISIC) or the mean Dice."""
    if task == "isic":
        return result.metrics["jaccard"]
    values = [v for k, v in result.metrics.items() if k.startswith("dice_")]
    return float(np.mean(values)) if values else math.nan


def _axial_axis(affine: np.ndarray | None) -> int:
    """The array axis that runs most nearly along the world's inferior-superior axis."""
    return 2 if affine is None else int(np.argmax(np.abs(affine[2, :3])))


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.rot90(np.take(volume, index, axis=axis))  # for RAS-like (X, Y) slices: anterior up


def _montage_regions(pairing: Pairing, results: list[CaseResult]) -> dict[str, Any]:
    """The regions the montage draws, as scored: name -> what selects it in a label map.

    BraTS: the convention's regions (``TC``: its label values); ``labels``: each scored class
    value; ISIC: the lesion.
    """
    if pairing.task == "isic":
        return {"lesion": None}
    scored = list(dict.fromkeys(k[len("dice_"):] for r in results if r.ok for k in r.metrics if k.startswith("dice_")))
    convention = pairing.convention
    if pairing.task == "brats" and convention is not None and convention.is_region_based:
        return {name: tuple(convention.regions[name]) for name in convention.region_names if name in scored}
    return {name: (int(name),) for name in scored if name.lstrip("-").isdigit()}


def _masks(labels: np.ndarray, regions: dict[str, Any]) -> np.ndarray:
    """``(R, *S)`` boolean masks of ``regions`` in a label map (``None``: any non-zero value)."""
    return np.stack([labels != 0 if values is None else np.isin(labels, values) for values in regions.values()])


def _panel(pair: CasePair, task: str, title: str, regions: dict[str, Any]) -> MontagePanel:
    """Read a case again and cut the axial slice with the largest truth area (3D)."""
    loaded = load_pair(pair.pred, pair.truth, binarize=task == "isic")  # type: ignore[arg-type]
    truth, pred = loaded.truth, loaded.pred
    reference: np.ndarray | None = None
    if pair.reference is not None and pair.reference.is_file():
        try:
            if is_nifti(pair.reference):
                reference, _ = read_nifti(pair.reference)
                if reference.ndim == 4:
                    reference = reference[..., pair.reference_channel or 0]
            else:
                reference = read_image_2d(pair.reference)
        except DataError as err:
            logger.warning("montage: drawing %s on its truth mask: %s", pair.case_id, err)
    if reference is not None and reference.shape[: truth.ndim] != truth.shape:
        reference = None
    if reference is None:
        reference = truth.astype(np.float32)
    if truth.ndim == 2:
        return MontagePanel(reference, _masks(truth, regions), _masks(pred, regions), title)
    axis = _axial_axis(loaded.affine)
    others = tuple(a for a in range(3) if a != axis)
    area = np.count_nonzero(truth, axis=others)
    if not area.any():
        area = np.count_nonzero(pred, axis=others)
    index = int(np.argmax(area)) if area.any() else truth.shape[axis] // 2
    truth_cut, pred_cut = _cut(truth, axis, index), _cut(pred, axis, index)
    return MontagePanel(_cut(reference, axis, index), _masks(truth_cut, regions), _masks(pred_cut, regions),
                        f"{title}\naxial slice {index} of array axis {axis}")


def montage_rows(scored: list[tuple[float, str]], n: int) -> dict[str, list[tuple[float, str]]]:
    """The montage's rows from ``(score, case id)`` pairs sorted by score: ``worst n`` and ``best n``
    when those are ``2n`` different cases, otherwise one row of ``all cases``, lowest first (so no
    case is called both, or called worst for being second best of three)."""
    if len(scored) > 2 * n:
        return {f"worst {n}": scored[:n], f"best {n}": list(reversed(scored))[:n]}
    return {"all cases": list(scored)}


def _montage(pairing: Pairing, results: list[CaseResult], out_png: Path, n: int) -> Path | None:
    scored = sorted((score, r.case_id) for r in results
                    if r.ok and not math.isnan(score := case_score(r, pairing.task)))
    if not scored:
        return None
    label = "Jaccard" if pairing.task == "isic" else "mean Dice"
    chosen = montage_rows(scored, n)
    title = (f"{pairing.task}: all {len(scored)} cases by {label}, lowest first" if "all cases" in chosen
             else f"{pairing.task}: the {n} worst and {n} best of {len(scored)} cases by {label}")
    regions = _montage_regions(pairing, results)
    if not regions or len(regions) > len(REGION_COLOURS):
        logger.warning("montage: %d regions to draw; it shows 1 to %d", len(regions), len(REGION_COLOURS))
        return None
    by_id = {p.case_id: p for p in pairing.pairs}
    rows: dict[str, list[MontagePanel]] = {row: [] for row in chosen}
    for row, cases in chosen.items():
        for score, cid in cases:
            try:
                rows[row].append(_panel(by_id[cid], pairing.task, f"{cid}\n{label} {score:.3f}", regions))
            except DataError as err:  # a file changed since it was scored: draw the others
                logger.warning("montage: leaving out %s: %s", cid, err)
    if not any(rows.values()):
        return None
    return plot_montage(rows, out_png, list(regions), title=title)


def _boxplot(task: str, results: list[CaseResult], out_png: Path) -> Path | None:
    ok = [r for r in results if r.ok]
    names = list(dict.fromkeys(n for r in ok for n in r.metrics))
    values = {n: [r.metrics[n] for r in ok if n in r.metrics] for n in names}
    if task == "isic":
        panels = {"ISIC 2018 Task 1": values}
    else:
        panels = {"Dice": {n: v for n, v in values.items() if n.startswith("dice_")},
                  "HD95 (mm)": {n: v for n, v in values.items() if n.startswith("hd95_")}}
    try:
        return plot_boxplots(panels, out_png, title=f"{task}: {len(ok)} cases")
    except ValueError:
        return None  # nothing finite to draw


def evaluate(
    pred_dir: str | Path,
    truth_dir: str | Path,
    task: str,
    out_csv: str | Path,
    convention: str | None = None,
    classes: Sequence[int] | None = None,
    montage_cases: int = MONTAGE_CASES,
    progress: Callable[[int, int], None] | None = None,
    rules: str | None = None,
    challenge: str = "GLI",
) -> EvaluationResult:
    """Evaluate a folder of predictions against the truth and write the reports.

    Writes ``out_csv`` (one row per truth case), and beside it ``summary.json``,
    ``boxplot.png`` and ``montage.png`` (prefixed with the CSV's stem when it is not
    ``metrics``, see :func:`medseg.evaluation.report.sibling_path`); ``brats-lesionwise``
    writes ``lesions.csv`` and ``lesion_scatter.png`` instead of the montage
    (:func:`medseg.evaluation.lesionwise_runner.evaluate_lesionwise`).

    Args:
        pred_dir: the predictions (names: see :mod:`medseg.evaluation.pairing`).
        truth_dir: the truth dataset or folder of truth masks.
        task: ``brats`` (Dice, HD95 of WT/TC/ET, and RC for BraTS 2024+ labels),
            ``brats-lesionwise`` (the BraTS lesion-wise scores of ``rules``), ``isic``
            (Jaccard, thresholded Jaccard, Dice, precision, recall, specificity) or
            ``labels`` (per-class Dice, HD95).
        out_csv: the per-case CSV to write.
        convention: label convention name overriding the discovered one (a BraTS
            2023-named dataset whose truth holds the resection cavity, 4, and ET, 3, is
            ``brats2024``).
        classes: ``labels`` task: the label values to score; default: those of the
            dataset's ``dataset.json``, else every value found.
        montage_cases: how many worst and how many best cases the montage shows.
        progress: optional callback ``(done, total)``.
        rules: ``brats-lesionwise`` only: ``brats2023`` or ``brats2025``.
        challenge: ``brats-lesionwise`` only: ``GLI``, ``SSA``, ``PED``, ``MEN`` or ``MET``.

    Returns:
        The per-case results, the summary and the paths written. A case that failed
        (no prediction, unreadable file, shape or affine mismatch) is a row with its
        error; check :attr:`EvaluationResult.ok`.

    Raises:
        DataError: a missing folder, a truth folder of the wrong kind, no truth cases, or
            ``out_csv`` is a folder.
        ValueError: an unknown task or convention.
    """
    if task == LESIONWISE_TASK:
        if rules is None:
            raise InvalidValueError(f"task {LESIONWISE_TASK!r} needs the rules: --rules brats2023 or brats2025")
        return evaluate_lesionwise(pred_dir, truth_dir, out_csv, rules, challenge, convention, progress)
    if rules is not None:
        raise InvalidValueError(f"--rules {rules} applies to --task {LESIONWISE_TASK}, not {task!r}")
    out_csv = Path(out_csv)
    if out_csv.is_dir():
        raise DataError(out_csv, "not a file", "--out names the CSV to write, not a folder")
    pairing = pair_cases(pred_dir, truth_dir, task, convention)
    if task == "brats" and convention is None and pairing.layout == "brats2023":
        pairing.convention = truth_convention(pairing.convention, [p.truth for p in pairing.pairs])
    wanted = _classes(pairing, classes) if task == "labels" else None
    results = []
    for i, pair in enumerate(pairing.pairs):
        results.append(evaluate_case(pair, pairing, wanted))
        if progress:
            progress(i + 1, len(pairing.pairs))
    if task == "labels" and wanted is None:
        _fill_absent_classes(results)
    summary = summarize(results)
    files = {"csv": write_csv(results, out_csv)}
    boxplot = _boxplot(task, results, sibling_path(out_csv, "boxplot.png"))
    if boxplot:
        files["boxplot"] = boxplot
    montage = _montage(pairing, results, sibling_path(out_csv, "montage.png"), montage_cases) \
        if montage_cases > 0 else None
    if montage:
        files["montage"] = montage
    files["summary"] = sibling_path(out_csv, "summary.json")
    conv_name = pairing.convention.name if pairing.convention is not None else None
    write_summary(summary_record(task, conv_name, pred_dir, truth_dir, results, pairing.unmatched_predictions,
                                 summary, files), files["summary"])
    return EvaluationResult(task, conv_name, results, summary, files, pairing.unmatched_predictions)
