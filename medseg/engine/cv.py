"""``medseg cv``: train every fold of a cross-validation, as child runs of one MLflow parent run.

``CV_DIR`` holds ``cv.json`` (the options, the parent run, the finished folds), one output
bundle per fold (``fold_0``, ``fold_1``, ...; each validates on its fold of the datalist's
deterministic folds and holds its out-of-fold masks in ``oof/``), the merged ``oof/`` folder
(every labelled case exactly once) and the summary: ``cv_metrics.csv`` (a row per case),
``cv_summary.json`` (each metric over all out-of-fold cases and per fold) and the box plot.

The parent run holds the summary (metrics ``cv_<metric>_mean``/``_median``/``_std``, the JSON,
the CSV, the box plot) and the dataset manifest once; each fold's run is its child
(``mlflow.parentRunId``), with its own params, curves and model. A killed ``medseg cv`` run
again on the same ``CV_DIR`` keeps the finished folds, resumes the interrupted one exactly
(``medseg train --resume``) and reopens the same parent run.

The folds train one after another in this process, or, with ``devices`` (``medseg cv --devices 0 1``),
side by side, each as its own ``medseg train`` subprocess on one device
(:mod:`medseg.engine.cv_parallel`), with the same values, tracking and parent run; each fold's
output goes to ``logs/fold_K.log``. Either way a fold is recorded in ``cv.json`` as it finishes,
so either kind of run resumes the other's. While it runs, ``medseg cv`` holds the folder's lock
(:func:`medseg.engine.outputs.claim_output_dir`): a second ``medseg cv`` on it is refused rather
than restarting a fold the first is training.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.engine.cv_parallel import FoldJob, check_devices, parse_devices, run_fold_jobs
from medseg.engine.oof import OOF_DIR, fold_case_ids
from medseg.engine.outputs import LOCK_FILE, check_output_location, claim_output_dir, release_output_dir
from medseg.engine.runner import TrainResult, read_result, run_training
from medseg.errors import MedsegError
from medseg.utils.atomic import atomic_write_text

__all__ = ["CV_FILE", "CvResult", "run_cv"]

CV_FILE = "cv.json"
CV_FORMAT = "medseg-cv/1"
MAX_FOLDS = 20
LOG_DIR = "logs"
logger = logging.getLogger("medseg.train")


@dataclass
class CvResult:
    """What :func:`run_cv` made.

    Attributes:
        cv_dir: the cross-validation folder.
        parent_run_id: the MLflow parent run (``None`` untracked).
        folds: each fold's training result, fold ``k`` at index ``k``.
        summary: the ``cv_summary.json`` contents.
    """

    cv_dir: Path
    parent_run_id: str | None
    folds: list[TrainResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _state(cv_dir: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The folder's ``cv.json`` (resuming: it must record the same options), or a new state."""
    path = cv_dir / CV_FILE
    if path.is_file():
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != CV_FORMAT:
            raise MedsegError(f"{path}: not a medseg cross-validation record")
        differ = [k for k, v in options.items() if state.get("options", {}).get(k) != v]
        if differ:
            raise MedsegError(f"{cv_dir} holds a cross-validation begun with other {', '.join(differ)}: "
                              f"{ {k: state['options'].get(k) for k in differ} }; resume it with those, or choose "
                              "another --output")
        logger.info("resuming the cross-validation in %s: folds %s are done", cv_dir, state.get("done") or "none")
        return state
    if cv_dir.exists() and any(p.name != LOCK_FILE for p in cv_dir.iterdir()):
        raise MedsegError(f"{cv_dir}: not empty and not a medseg cross-validation folder; choose a new --output")
    return {"format": CV_FORMAT, "options": options, "parent_run_id": None, "done": []}


def _save(cv_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(cv_dir / CV_FILE, json.dumps(state, indent=2) + "\n")


def _open_parent(state: dict[str, Any], bundle: Path, data: Path, folds: int, tracking_uri: str | None,
                 tracking_fallback: str | None, experiment: str) -> Any:
    """Start (or reopen) the parent run; its provenance and dataset manifest are logged once, at its start."""
    import medseg
    from medseg.tracking import open_tracking

    session = open_tracking(tracking_uri, experiment, fallback=tracking_fallback)
    resumed = state.get("parent_run_id")
    run_id = session.start_run(f"cv-{bundle.name}-{folds}folds", tags={"medseg.cv_folds": folds,
                                                                         "medseg.bundle": bundle.name},
                               resume_run_id=resumed)
    if not resumed:
        session.log_provenance(Path(medseg.__file__).parent, None, "cpu", data)
    state["parent_run_id"] = run_id
    logger.info("MLflow parent run %s of the %d-fold cross-validation", run_id, folds)
    return session


def _resumes(fold_dir: Path) -> bool:
    """Whether a fold continues its interrupted training; a fold folder with nothing to resume is removed."""
    if (fold_dir / "models" / "last.pt").is_file():
        return True
    if fold_dir.exists():  # killed before its first checkpoint: nothing to resume; this command made it
        shutil.rmtree(fold_dir)
    return False


def _fold_ids(k: int, bundle: Path, parent: str | None) -> dict[str, Any]:
    """The ids that make fold ``k``'s MLflow run a child of the parent run."""
    return {"parent_run_id": parent, "run_name": f"{bundle.name}-fold{k}"} if parent else {}


def _train_fold(k: int, cv_dir: Path, bundle: Path, data: Path, folds: int, overrides: dict[str, Any],
                common: dict[str, Any], parent: str | None, save_prob: bool) -> TrainResult:
    fold_dir = cv_dir / f"fold_{k}"
    if _resumes(fold_dir):
        logger.info("fold %d: resuming its interrupted training", k)
        common = {key: v for key, v in common.items() if key != "preset"}  # a resumed run keeps its values
        return run_training(bundle, resume=fold_dir, fold=k, save_prob=save_prob, **common)
    return run_training(bundle, data=data, overrides={**overrides, "num_folds": folds}, output=fold_dir, fold=k,
                        save_prob=save_prob, extra_ids=_fold_ids(k, bundle, parent), **common)


def _fold_job(k: int, cv_dir: Path, bundle: Path, data: Path, folds: int, overrides: dict[str, Any],
              common: dict[str, Any], parent: str | None, save_prob: bool) -> FoldJob:
    """Fold ``k`` as the ``medseg train`` command that does what :func:`_train_fold` does in this process.

    The parent run's ids go in as ``--set parent_run_id=... --set run_name=...``: the command line
    has no other way to give config ids.
    """
    fold_dir = cv_dir / f"fold_{k}"
    resumed = _resumes(fold_dir)
    if resumed:  # a resumed run keeps the values (and the MLflow run, with its parent tag) it began with
        args = ["train", str(bundle), "--resume", str(fold_dir), "--fold", str(k)]
    else:
        values = {**overrides, "num_folds": folds, **_fold_ids(k, bundle, parent)}
        if "tracking_enabled" in values:  # run_training's tracking= wins over --set, as in this process
            values["tracking_enabled"] = bool(common["tracking"])
        args = ["train", str(bundle), "--data", str(data), "--output", str(fold_dir), "--fold", str(k)]
        args += ["--preset", common["preset"]] if common.get("preset") else []
        for key, value in values.items():
            args += ["--set", f"{key}={json.dumps(value)}"]  # medseg train parses each value back as JSON
    args += ["--save-prob"] if save_prob else []
    args += ["--trust-bundle"] if common["trust_bundle"] else []
    if not common["tracking"]:
        args.append("--no-tracking")
    if common["tracking_uri"] is not None:
        args += ["--tracking-uri", common["tracking_uri"]]
    if common["tracking_fallback"] is not None:
        args += ["--tracking-fallback", common["tracking_fallback"]]
    return FoldJob(fold=k, args=args, log=cv_dir / LOG_DIR / f"fold_{k}.log", resumed=resumed)


def run_cv(bundle: str | Path, data: str | Path, folds: int = 5, output: str | Path | None = None,
           overrides: dict[str, Any] | None = None, tracking_uri: str | None = None,
           tracking_fallback: str | None = None, tracking: bool = True, trust_bundle: bool = False,
           preset: str | None = None, save_prob: bool = False, devices: Sequence[str] | None = None) -> CvResult:
    """Train ``folds`` folds of ``bundle`` on ``data`` into ``output`` and summarise their out-of-fold predictions.

    Args:
        bundle: the bundle folder.
        data: the dataset folder.
        folds: the number of folds (the ``num_folds`` id), 2 to 20.
        output: the cross-validation folder (default ``runs/cv/<bundle>/<unique name>``);
            a folder with a ``cv.json`` is resumed.
        overrides: ``--set`` values for every fold.
        tracking_uri: the MLflow store of the parent and child runs.
        tracking_fallback: ``"local"``: use the local store when the server is unreachable.
        tracking: ``False`` for untracked folds and no parent run.
        trust_bundle: allow a bundle outside the trusted folders.
        preset: a named preset for every fold (``cpu-tryout``).
        save_prob: also write the out-of-fold probability maps.
        devices: train the folds side by side, each as a ``medseg train`` subprocess that sees
            one of these devices alone (``["0", "1"]``, ``["cuda:0,cuda:1"]``, ``["cpu", "cpu"]``;
            :mod:`medseg.engine.cv_parallel`); ``None``: one after another in this process. Recorded
            in ``cv.json``, not compared on resume.

    Returns:
        The :class:`CvResult`.

    Raises:
        MedsegError: bad arguments or devices (before anything is made), a folder in use or begun
            with other options, or a failed fold.
    """
    from medseg.engine.data import default_output_dir

    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= MAX_FOLDS:
        raise MedsegError(f"--folds must be an integer from 2 to {MAX_FOLDS}, got {folds!r}")
    slots = parse_devices([devices] if isinstance(devices, str) else devices) if devices is not None else None
    if slots is not None:
        check_devices(slots)
    bundle, data = Path(bundle).resolve(), Path(data).resolve()
    if not data.is_dir():
        raise MedsegError(f"{data}: dataset folder does not exist")
    overrides = dict(overrides or {})
    for key in ("fold", "num_folds"):
        if key in overrides:
            raise MedsegError(f"--set {key}: medseg cv sets each fold's {key} itself (--folds)")
    cv_dir = Path(output) if output is not None else Path(default_output_dir(bundle, "runs/cv"))
    check_output_location(cv_dir, dataset_dir=data, source_bundle=bundle)  # before anything is made
    options = {"bundle": str(bundle), "data": str(data), "folds": folds, "overrides": overrides, "preset": preset,
               "save_prob": save_prob}
    claim_output_dir(cv_dir, resume=True)  # a second medseg cv on this folder is refused
    try:
        state = _state(cv_dir, options)
        state["devices"] = slots
        _save(cv_dir, state)
        return _run_folds(state, cv_dir, bundle, data, folds, overrides, preset, save_prob, slots,
                          tracking_uri=tracking_uri, tracking_fallback=tracking_fallback, tracking=tracking,
                          trust_bundle=trust_bundle)
    finally:
        release_output_dir(cv_dir)


def _run_folds(state: dict[str, Any], cv_dir: Path, bundle: Path, data: Path, folds: int, overrides: dict[str, Any],
               preset: str | None, save_prob: bool, slots: list[str] | None, tracking_uri: str | None,
               tracking_fallback: str | None, tracking: bool, trust_bundle: bool) -> CvResult:
    """Train the folds not done yet (in this process, or on ``slots``), then gather and summarise them."""
    from medseg.checkpoint import read_model_spec
    from medseg.evaluation.cross_validation import (
        CV_SUMMARY,
        choose_cv_postprocessing,
        evaluation_task,
        gather_oof,
        summarize_cv,
    )

    session = None
    if tracking:
        session = _open_parent(state, bundle, data, folds, tracking_uri, tracking_fallback,
                               str(overrides.get("experiment_name", "medseg")))
        _save(cv_dir, state)
    common = {"tracking_uri": session.uri if session is not None else None, "tracking_fallback": tracking_fallback,
              "tracking": tracking, "trust_bundle": trust_bundle}
    result = CvResult(cv_dir=cv_dir, parent_run_id=state["parent_run_id"])

    def finished(k: int, device: str) -> None:
        state["done"] = sorted({*state["done"], k})
        state.setdefault("trained_on", {})[str(k)] = device
        _save(cv_dir, state)

    try:
        if slots is None:
            for k in range(folds):
                if k in state["done"]:
                    result.folds.append(read_result(cv_dir / f"fold_{k}"))
                    continue
                result.folds.append(_train_fold(k, cv_dir, bundle, data, folds, overrides,
                                                {**common, "preset": preset}, state["parent_run_id"], save_prob))
                finished(k, "in-process")
        else:
            jobs = [_fold_job(k, cv_dir, bundle, data, folds, overrides, {**common, "preset": preset},
                              state["parent_run_id"], save_prob) for k in range(folds) if k not in state["done"]]
            run_fold_jobs(jobs, slots, finished)
            result.folds = [read_result(cv_dir / f"fold_{k}") for k in range(folds)]
        fold_dirs = [cv_dir / f"fold_{k}" for k in range(folds)]
        datalist = json.loads((fold_dirs[0] / "datalist.json").read_text())
        owner = gather_oof(fold_dirs, {k: fold_case_ids(datalist, k) for k in range(folds)}, cv_dir / OOF_DIR)
        spec, _ = read_model_spec(fold_dirs[0] / "models" / "model.pt")
        task = evaluation_task(spec.task)
        evaluation, result.summary = summarize_cv(cv_dir / OOF_DIR, data, task, owner, cv_dir)
        result.summary["postprocessing"] = choose_cv_postprocessing(cv_dir / OOF_DIR, data, task, fold_dirs, cv_dir)
        atomic_write_text(cv_dir / CV_SUMMARY, json.dumps(result.summary, indent=2) + "\n")
        if session is not None:
            _log_summary(session, cv_dir, evaluation, result.summary)
    except KeyboardInterrupt as err:
        err.cv_dir = cv_dir  # type: ignore[attr-defined]
        if session is not None:
            session.end_run("KILLED", reason="interrupted; run medseg cv again with the same --output to resume")
        raise
    except BaseException as err:
        if session is not None:
            session.end_run("FAILED", reason=f"{type(err).__name__}: {str(err)[:300]}")
        raise
    if session is not None:
        session.end_run("FINISHED")
    return result


def _log_summary(session: Any, cv_dir: Path, evaluation: Any, summary: dict[str, Any]) -> None:
    """The summary's statistics as the parent run's metrics; the JSON, CSV and figures as its artifacts."""
    metrics = {}
    for name, stats in summary["overall"].items():
        for stat in ("mean", "median", "std"):
            if stats.get(stat) is not None and math.isfinite(stats[stat]):
                metrics[f"cv_{name}_{stat}"] = stats[stat]
    for rule in summary.get("postprocessing", {}).get("report", []):
        metrics[f"cv_postprocessing_{rule['rule']}_{rule['target']}_dice_after"] = rule["dice_after"]
    session.log_metrics(metrics, step=0)
    session.log_artifact(cv_dir / "cv_summary.json", "cv")
    if (cv_dir / "postprocessing.json").is_file():
        session.log_artifact(cv_dir / "postprocessing.json", "cv")
    for path in evaluation.files.values():
        if Path(path).is_file():
            session.log_artifact(path, "cv")
