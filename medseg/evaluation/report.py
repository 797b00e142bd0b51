"""Per-case results, their summary statistics, and the CSV, JSON and text reports.

``metrics.csv`` has one row per truth case: ``case_id, status, <metrics...>, error``,
where ``status`` is ``ok`` or ``failed`` and a failed row leaves the metric cells empty
and says why in ``error``. ``summary.json`` holds, per metric, the mean, median,
population standard deviation, quartiles, minimum, maximum and the number of cases
evaluated (failed cases are counted and listed, not scored). Lesion-wise evaluations also
write ``lesions.csv``, one row per reference lesion (:class:`LesionRecord`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.utils.atomic import atomic_write_text

STATISTICS: tuple[str, ...] = ("mean", "median", "std", "q1", "q3", "min", "max", "n")
#: Columns of ``lesions.csv`` after ``case_id``: the fields of :class:`LesionRecord`.
LESION_COLUMNS: tuple[str, ...] = ("region", "lesion", "volume_mm3", "dice", "hd95", "matched", "counted")


@dataclass(frozen=True)
class LesionRecord:
    """One reference lesion of a lesion-wise evaluation.

    Attributes:
        region: ``WT``, ``TC``, ``ET`` ...
        lesion: its number within the case's region.
        volume_mm3: its volume.
        dice: its Dice with its matched prediction (0 when unmatched).
        hd95: its HD95 (the rules' value when unmatched).
        matched: how many predicted components (2023 rules) or lesions (panoptica) it matched.
        counted: whether it enters the lesion-wise scores (the volume threshold).
    """

    region: str
    lesion: int
    volume_mm3: float
    dice: float
    hd95: float
    matched: int
    counted: bool


@dataclass
class CaseResult:
    """The metrics of one case, or why it could not be evaluated.

    Attributes:
        case_id: the case identifier.
        metrics: metric name -> value; empty for a failed case.
        error: the failure (a missing prediction, a shape mismatch ...), ``None`` if evaluated.
        pred: the prediction file, if one was found.
        truth: the truth file.
        lesions: lesion-wise evaluations: the case's reference lesions.
    """

    case_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    pred: Path | None = None
    truth: Path | None = None
    lesions: list[LesionRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the case was evaluated."""
        return self.error is None


@dataclass
class EvaluationResult:
    """What :func:`medseg.evaluation.evaluate` computed and wrote.

    Attributes:
        task: ``brats``, ``brats-lesionwise``, ``isic`` or ``labels``.
        convention: the label convention name used, if any.
        cases: one result per truth case, sorted by case id.
        summary: metric -> statistics (see :func:`describe`).
        files: ``csv``, ``summary``, and the figures (and ``lesions``) when there was something to write.
        unmatched_predictions: prediction files that no truth case claimed.
        description: what the table's title says after the task (default: the convention).
    """

    task: str
    convention: str | None
    cases: list[CaseResult]
    summary: dict[str, dict[str, float | int | None]]
    files: dict[str, Path] = field(default_factory=dict)
    unmatched_predictions: list[Path] = field(default_factory=list)
    description: str | None = None

    @property
    def failed(self) -> list[CaseResult]:
        """The cases that could not be evaluated."""
        return [c for c in self.cases if not c.ok]

    @property
    def ok(self) -> bool:
        """True when every truth case was evaluated."""
        return not self.failed

    def format_table(self) -> str:
        """A short text table of the summary and the failed cases."""
        shown = self.description or self.convention
        title = self.task + (f" ({shown})" if shown else "")
        return format_table(self.summary, self.cases, title)


def sibling_path(out_csv: Path, name: str) -> Path:
    """Where an output that goes with ``out_csv`` is written.

    ``results/metrics.csv`` -> ``results/summary.json``; any other CSV name is used as a
    prefix, so several evaluations can share a folder: ``results/run1.csv`` ->
    ``results/run1_summary.json``.
    """
    return out_csv.parent / (name if out_csv.stem == "metrics" else f"{out_csv.stem}_{name}")


def metric_names(results: Sequence[CaseResult]) -> list[str]:
    """Metric columns in first-seen order across cases."""
    names: dict[str, None] = {}
    for result in results:
        names.update(dict.fromkeys(result.metrics))
    return list(names)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """Summary statistics of one metric over cases.

    Args:
        values: the metric of every evaluated case (may contain ``inf``).

    Returns:
        ``mean, median, std`` (population), ``q1, q3`` (linear interpolation, as numpy),
        ``min, max`` and ``n``; every statistic is ``None`` when there are no values.
    """
    array = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return {name: (0 if name == "n" else None) for name in STATISTICS}
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "mean": float(array.mean()),
        "median": float(median),
        "std": float(array.std()),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, float | int | None]]:
    """:func:`describe` for every metric over the evaluated cases."""
    ok = [r for r in results if r.ok]
    return {name: describe([r.metrics[name] for r in ok if name in r.metrics])
            for name in metric_names(results)}


def _cell(value: float) -> str:
    return format(float(value), ".8g")


def write_csv(results: Sequence[CaseResult], out_csv: Path) -> Path:
    """Write one row per case to ``out_csv`` atomically.

    Returns:
        The path written.
    """
    names = metric_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "status", *names, "error"])
    for r in results:
        cells = [_cell(r.metrics[n]) if n in r.metrics else "" for n in names]
        writer.writerow([r.case_id, "ok" if r.ok else "failed", *cells, r.error or ""])
    return atomic_write_text(out_csv, buffer.getvalue())


def write_lesions_csv(results: Sequence[CaseResult], out_csv: Path) -> Path:
    """Write one row per reference lesion of every evaluated case (``case_id`` + :data:`LESION_COLUMNS`), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *LESION_COLUMNS])
    for r in results:
        for lesion in r.lesions:
            writer.writerow([r.case_id, lesion.region, lesion.lesion, _cell(lesion.volume_mm3), _cell(lesion.dice),
                             _cell(lesion.hd95), lesion.matched, int(lesion.counted)])
    return atomic_write_text(out_csv, buffer.getvalue())


def _json_safe(value: object) -> object:
    # JSON has no inf/NaN; a string keeps them readable instead of breaking strict parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def summary_record(task: str, convention: str | None, pred_dir: Path, truth_dir: Path, results: Sequence[CaseResult],
                   unmatched: Sequence[Path], metrics: Mapping[str, object], files: Mapping[str, Path],
                   **extra: object) -> dict[str, object]:
    """The ``summary.json`` of an evaluation: what was compared, the counts, failures and metrics.

    ``extra`` entries (a lesion-wise evaluation's rules) follow the convention.
    """
    return {
        "task": task,
        "convention": convention,
        **extra,
        "pred_dir": str(pred_dir),
        "truth_dir": str(truth_dir),
        "n_cases": len(results),
        "n_evaluated": sum(r.ok for r in results),
        "n_failed": sum(not r.ok for r in results),
        "failed": [{"case_id": r.case_id, "error": r.error} for r in results if not r.ok],
        "unmatched_predictions": [str(p) for p in unmatched],
        "metrics": metrics,
        "files": {k: str(v) for k, v in files.items()},
    }


def write_summary(summary: Mapping[str, object], out_json: Path) -> Path:
    """Write the summary dictionary as indented JSON, atomically."""
    return atomic_write_text(out_json, json.dumps(_json_safe(summary), indent=2) + "\n")


def format_table(
    summary: Mapping[str, Mapping[str, float | int | None]],
    results: Sequence[CaseResult],
    title: str,
) -> str:
    """A short fixed-width table of the summary, then one line per failed case.

    Args:
        summary: output of :func:`summarize`.
        results: every case (failed ones are listed under the table).
        title: first line, e.g. ``"brats (brats2021): 4 cases"``.
    """
    failed = [r for r in results if not r.ok]
    lines = [f"{title}: {len(results)} cases, {len(results) - len(failed)} evaluated, {len(failed)} failed"]
    if summary:
        width = max(len("metric"), *(len(name) for name in summary))
        heads = "  ".join(f"{h:>9}" for h in ("mean", "median", "std", "q1", "q3"))
        lines.append(f"{'metric':<{width}}  {heads}  {'n':>4}")
        for name, stats in summary.items():
            cells = [f"{stats[s]:9.4f}" if stats[s] is not None else f"{'-':>9}"
                     for s in ("mean", "median", "std", "q1", "q3")]
            lines.append(f"{name:<{width}}  {'  '.join(cells)}  {stats['n']:>4}")
    for r in failed:
        lines.append(f"FAILED {r.case_id}: {r.error}")
    return "\n".join(lines)
