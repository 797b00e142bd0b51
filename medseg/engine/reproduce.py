"""``medseg reproduce RUN_ID``: check the data against the run's manifest, retrain, compare.

The original run's output bundle (logged as the ``bundle/`` artifact, with its resolved
``configs/train.json``) is downloaded and trained again with the same config, in a new
MLflow run tagged ``medseg.reproduction_of``. On the CPU with ``deterministic`` on, the
final metrics match bit for bit.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.engine.runner import TrainResult, run_training
from medseg.errors import MedsegError
from medseg.tracking import REPRODUCTION_OF_TAG, compare_manifest, fetch_run_for_reproduction, resolve_tracking_uri


@dataclass
class ReproductionReport:
    """The outcome of a reproduction.

    Attributes:
        original_run_id: the run reproduced.
        dataset_ok: whether the data on disk matched the manifest (nothing is trained if not).
        dataset_diff: the formatted list of differing files, when it did not match.
        original_metrics: the original run's final metrics.
        result: the new run, when it was trained.
    """

    original_run_id: str
    dataset_ok: bool
    dataset_diff: str = ""
    original_metrics: dict[str, float] = field(default_factory=dict)
    result: TrainResult | None = None


def _download_bundle(uri: str, run_id: str, into: Path) -> Path:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        local = MlflowClient(uri).download_artifacts(run_id, "bundle", str(into))
    except (MlflowException, OSError) as err:
        raise MedsegError(f"MLflow run {run_id} has no 'bundle' artifact to reproduce from: {err}") from err
    if not (Path(local) / "configs" / "train.json").is_file():
        raise MedsegError(f"MLflow run {run_id}: its bundle artifact has no configs/train.json")
    return Path(local)


def reproduce_run(run_id: str, tracking_uri: str | None = None, data: str | Path | None = None,
                  output: str | Path | None = None, tracking_fallback: str | None = None) -> ReproductionReport:
    """Reproduce MLflow run ``run_id``.

    Args:
        run_id: the original run.
        tracking_uri: where the run is (default: the local store).
        data: the dataset folder; default the run's ``dataset_dir``.
        output: the new output folder (default ``runs/<bundle>/<timestamp>``).
        tracking_fallback: passed to training.

    Returns:
        The report; ``dataset_ok`` is False (and nothing trained) if the data differ.
    """
    uri = resolve_tracking_uri(tracking_uri)
    config, manifest, _tags, metrics = fetch_run_for_reproduction(uri, run_id)
    dataset = Path(data) if data is not None else Path(str(config.get("dataset_dir", "")))
    if not dataset.is_dir():
        raise MedsegError(f"{dataset}: dataset folder of run {run_id} not found; pass --data")
    diff = compare_manifest(manifest, dataset)
    if not diff.ok:
        return ReproductionReport(run_id, dataset_ok=False, dataset_diff=diff.format(), original_metrics=metrics)
    staging = Path(tempfile.mkdtemp(prefix=f"medseg-reproduce-{run_id[:8]}-"))
    bundle = _download_bundle(uri, run_id, staging)
    result = run_training(
        bundle, data=dataset, output=output or staging / "output", tracking_uri=uri,
        tracking_fallback=tracking_fallback, trust_bundle=True, tracking=True,
        extra_ids={"reproduction_of": run_id, "run_name": f"reproduce-{run_id[:8]}", "resume_dir": None},
    )
    return ReproductionReport(run_id, dataset_ok=True, original_metrics=metrics, result=result)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))


def format_comparison(report: ReproductionReport, keys_prefix: tuple[str, ...] = ("val_", "train_loss")) -> str:
    """A side-by-side table of the original and reproduced final metrics."""
    if not report.dataset_ok:
        return (f"dataset differs from the manifest of run {report.original_run_id}; not reproduced:\n"
                f"{report.dataset_diff}")
    new = report.result.final_metrics if report.result else {}
    keys = sorted(k for k in set(report.original_metrics) | set(new) if k.startswith(keys_prefix))
    rows = [f"{'metric':<20} {'original':>22} {'reproduction':>22}  match"]
    for key in keys:
        a, b = report.original_metrics.get(key), new.get(key)
        rows.append(f"{key:<20} {a!r:>22} {b!r:>22}  {'yes' if _same(a, b) else 'NO'}")
    rows.append(f"original run {report.original_run_id}; reproduction run {report.result.run_id if report.result else '-'}"
                f" (tag {REPRODUCTION_OF_TAG})")
    return "\n".join(rows)
