"""``medseg reproduce RUN_ID``: check the data against the run's manifest, retrain, compare.

The tracking server is untrusted (stock MLflow has no authentication): no config from it is
executed. The run's ``config/resolved.json`` (checked against the sha256 recorded at training
time) names the bundle and holds the run's effective values; medseg retrains the *installed*
bundle of that name (:func:`medseg.engine.trust.installed_bundle`) with those values as
overrides, refusing any value that would run code (``$``, ``%``, ``_target_``) unless
``--trust-bundle``. The new run is tagged ``medseg.reproduction_of``. On the CPU with
``deterministic`` on, the final metrics match bit for bit.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.engine.data import default_output_dir
from medseg.engine.runner import TrainResult, run_training
from medseg.errors import MedsegError
from medseg.tracking import (
    REPRODUCTION_OF_TAG,
    compare_manifest,
    fetch_run_for_reproduction,
    resolve_tracking_uri,
)

logger = logging.getLogger("medseg.train")


@dataclass
class ReproductionReport:
    """The outcome of a reproduction.

    Attributes:
        original_run_id: the run reproduced.
        dataset_ok: whether the data on disk matched the manifest (nothing is trained if not).
        dataset_diff: the formatted list of differing files, when it did not match.
        original_metrics: the original run's final metrics.
        result: the new run, when it was trained.
        code_differences: how the installed code differs from the run's (commit, uncommitted
            changes, package versions); empty when it is the same.
    """

    original_run_id: str
    dataset_ok: bool
    dataset_diff: str = ""
    original_metrics: dict[str, float] = field(default_factory=dict)
    result: TrainResult | None = None
    code_differences: list[str] = field(default_factory=list)


# Ids that describe where and how this machine runs, not what was trained: never taken from the run.
_LOCAL_IDS = frozenset({"dataset_dir", "output_dir", "bundle_root", "resume_dir", "tracking_enabled", "tracking_uri",
                        "tracking_fallback", "register_name", "run_name", "reproduction_of", "parent_run_id",
                        "overrides", "experiment_name", "plan_file"})


# What a run trained with when it predates an id its bundle has now: the behaviour before the id existed.
LEGACY_VALUES: dict[str, Any] = {"augmentation": "light"}


def reproduction_values(config: dict[str, Any], bundle: Path, run_id: str, trust: bool = False) -> dict[str, Any]:
    """The overrides that retrain the installed ``bundle`` as run ``run_id`` was trained.

    The run's effective value of every top-level id the bundle lists under ``hyperparameters``,
    plus the overrides the user gave (recorded under ``overrides``), minus the ids that belong
    to the machine (:data:`_LOCAL_IDS`). A run made before the bundle had an id of
    :data:`LEGACY_VALUES` (it records every id of its ``hyperparameters``, so a missing one is
    newer than the run) gets the value that reproduces what it trained with.

    Raises:
        MedsegError: a value would run code and ``trust`` is off, or ``overrides`` is malformed.
    """
    from monai.bundle import ConfigParser

    from medseg.engine.trust import refuse_code_values

    raw = ConfigParser.load_config_file(str(bundle / "configs" / "train.json"))
    names = raw.get("hyperparameters") if isinstance(raw.get("hyperparameters"), dict) else {}
    values = {k: config[k] for k in names if k in config and k not in _LOCAL_IDS}
    values.update({k: v for k, v in LEGACY_VALUES.items() if k in names and k not in config})
    recorded = config.get("overrides") or {}
    if not isinstance(recorded, dict):
        raise MedsegError(f"run {run_id}: its recorded 'overrides' is not a mapping of config ids to values")
    values.update({str(k): v for k, v in recorded.items() if str(k) not in _LOCAL_IDS})
    refuse_code_values(values, f"config of MLflow run {run_id}", trust)
    return values


def code_differences(run_id: str, tags: dict[str, str], uri: str) -> list[str]:
    """How the installed code differs from what run ``run_id`` recorded: commit, dirty diff, package versions.

    The run's diff (``provenance/git_diff.patch``, logged when its checkout was dirty) is compared
    with the installed checkout's by sha256.
    """
    import medseg
    from medseg.tracking.provenance import UNKNOWN, git_diff, git_info, package_versions

    here = Path(medseg.__file__).parent
    git = git_info(here)
    found = []
    recorded = tags.get("medseg.git_commit", UNKNOWN)
    if recorded != git["commit"]:
        found.append(f"git commit: run {recorded[:12]}, installed {git['commit'][:12]}")
    run_dirty, now_dirty = tags.get("medseg.git_dirty", "unknown"), git["dirty"]
    if run_dirty == "true" or now_dirty:
        theirs = _recorded_diff(run_id, uri) if run_dirty == "true" else ""
        ours = git_diff(here) if now_dirty else ""
        if theirs is None:
            found.append("uncommitted changes: the run's diff was not recorded")
        elif theirs != ours:
            found.append(f"uncommitted changes: run {'dirty' if run_dirty == 'true' else 'clean'}, installed "
                         f"{'dirty' if now_dirty else 'clean'}{' with another diff' if theirs and ours else ''}")
    versions = package_versions()
    for key in sorted(tags):
        if key.startswith("medseg.version."):
            name = key[len("medseg.version."):]
            if versions.get(name, "not installed") != tags[key]:
                found.append(f"{name}: run {tags[key]}, installed {versions.get(name, 'not installed')}")
    return found


def _recorded_diff(run_id: str, uri: str) -> str | None:
    import tempfile

    from medseg.tracking.connect import make_client

    try:
        with tempfile.TemporaryDirectory(prefix="medseg-reproduce-") as tmp:
            local = make_client(uri).download_artifacts(run_id, "provenance/git_diff.patch", tmp)
            return Path(local).read_text(encoding="utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - any store error means: not available
        return None


def reproduce_run(run_id: str, tracking_uri: str | None = None, data: str | Path | None = None,
                  output: str | Path | None = None, tracking_fallback: str | None = None,
                  trust_bundle: bool = False, strict: bool = False) -> ReproductionReport:
    """Reproduce MLflow run ``run_id``.

    Args:
        run_id: the original run.
        tracking_uri: where the run is (default: the local store).
        data: the dataset folder; default the run's ``dataset_dir``.
        output: the new output folder (default ``runs/<bundle>/<unique name>``).
        tracking_fallback: passed to training.
        trust_bundle: trust the server: accept values that run code and artifacts whose
            sha256 was not recorded.
        strict: refuse when the installed code differs from the run's (commit, uncommitted
            changes, package versions); otherwise the differences are reported.

    Returns:
        The report; ``dataset_ok`` is False (and nothing trained) if the data differ.
    """
    from medseg.engine.trust import installed_bundle

    uri = resolve_tracking_uri(tracking_uri)
    config, manifest, tags, metrics = fetch_run_for_reproduction(uri, run_id, verify=not trust_bundle)
    differences = code_differences(run_id, tags, uri)
    if differences and strict:
        raise MedsegError(f"run {run_id} was trained with other code; --strict refuses: " + "; ".join(differences))
    name = config.get("bundle_name")
    if not isinstance(name, str):
        raise MedsegError(f"MLflow run {run_id}: its config names no bundle ('bundle_name')")
    bundle = installed_bundle(name)
    values = reproduction_values(config, bundle, run_id, trust=trust_bundle)
    dataset = Path(data) if data is not None else Path(str(config.get("dataset_dir", "")))
    if not dataset.is_dir():
        raise MedsegError(f"{dataset}: dataset folder of run {run_id} not found; pass --data")
    diff = compare_manifest(manifest, dataset)
    if not diff.ok:
        return ReproductionReport(run_id, dataset_ok=False, dataset_diff=diff.format(), original_metrics=metrics,
                                  code_differences=differences)
    out = Path(output) if output is not None else Path(default_output_dir(bundle))
    existed = out.exists()
    logger.info("reproducing MLflow run %s: retraining bundle %s on %s into %s", run_id, bundle.name, dataset, out)
    try:
        result = run_training(
            bundle, data=dataset, overrides=values, output=out, tracking_uri=uri,
            tracking_fallback=tracking_fallback, tracking=True, check_ids=False,
            extra_ids={"reproduction_of": run_id, "run_name": f"reproduce-{run_id[:8]}"},
        )
    except BaseException:
        # Nothing trained yet: leave no folder behind. Once a checkpoint exists it stays for --resume.
        if not existed and out.is_dir() and not (out / "models" / "last.pt").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    return ReproductionReport(run_id, dataset_ok=True, original_metrics=metrics, result=result,
                              code_differences=differences)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, float) and isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))


def format_comparison(report: ReproductionReport, keys_prefix: tuple[str, ...] = ("val_", "train_loss")) -> str:
    """A side-by-side table of the original and reproduced final metrics."""
    code = ("code: differs from the run's: " + "; ".join(report.code_differences)) if report.code_differences \
        else "code: the same commit, uncommitted changes and package versions as the run"
    if not report.dataset_ok:
        return (f"{code}\ndataset differs from the manifest of run {report.original_run_id}; not reproduced:\n"
                f"{report.dataset_diff}")
    new = report.result.final_metrics if report.result else {}
    keys = sorted(k for k in set(report.original_metrics) | set(new) if k.startswith(keys_prefix))
    rows = [code, f"{'metric':<20} {'original':>22} {'reproduction':>22}  match"]
    for key in keys:
        a, b = report.original_metrics.get(key), new.get(key)
        rows.append(f"{key:<20} {a!r:>22} {b!r:>22}  {'yes' if _same(a, b) else 'NO'}")
    rows.append(f"original run {report.original_run_id}; reproduction run {report.result.run_id if report.result else '-'}"
                f" (tag {REPRODUCTION_OF_TAG})")
    if report.result is not None:
        rows.append(f"retrained bundle: {report.result.output_dir}")
    return "\n".join(rows)
