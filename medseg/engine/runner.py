"""Run a bundle's training workflow: ``medseg train`` and ``medseg reproduce`` call these functions.

Training is MONAI's ``ConfigWorkflow`` over the bundle's ``configs/train.json``, exactly
what ``python -m monai.bundle run`` does, with the command-line values passed as config
overrides. The runner only adds what must happen outside the config: trust and
tracking checks before anything heavy starts, and collecting the result.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.engine.data import default_output_dir, require_dataset
from medseg.engine.outputs import check_output_location, claim_output_dir, release_output_dir
from medseg.engine.trust import check_bundle_trust
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.train")

TRAIN_CONFIG = "configs/train.json"


@dataclass
class TrainResult:
    """What a finished training run produced.

    Attributes:
        output_dir: the output bundle folder.
        run_id: the MLflow run id (``None`` when untracked).
        final_metrics: the last value of each metric.
        best_metric: the best validation key metric.
    """

    output_dir: Path
    run_id: str | None
    final_metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None


def parse_set(values: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs; values are JSON when they parse as JSON, else strings.

    ``max_epochs=2`` -> 2, ``roi_size=[64,64,64]`` -> list, ``amp=false`` -> False,
    ``network_spec#kwargs#dropout=0.1`` sets a nested id.

    Raises:
        MedsegError: for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MedsegError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def check_override_ids(overrides: dict[str, Any], config_file: str | Path) -> dict[str, Any]:
    """Refuse an override whose top-level id the config does not have (a typo would otherwise be ignored).

    ``--set max_epoch=1`` would add an id nothing reads and train the default 300 epochs. Nested
    ids (``network_spec#kwargs#dropout``) may add keys below an existing id; only the first part
    is checked. A new id is added on purpose with a leading ``+`` (``--set +my_id=3``, as Hydra
    spells it), which is dropped.

    Returns:
        The overrides, with the ``+`` of new ids removed.

    Raises:
        MedsegError: naming the id, the config file and the nearest ids it has.
    """
    import difflib

    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(str(config_file))
    known = set(config)
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        key = str(key)
        if key.startswith("network_spec#") and "default_network_spec" in known and isinstance(
                config.get("network_spec"), str):
            # generic_3d computes network_spec (from its plan, else default_network_spec); a nested
            # --set network_spec#kwargs#... of runs made before plans existed sets the default network.
            logger.info("--set %s: the bundle's fixed network is default_network_spec; setting %s", key,
                        "default_" + key)
            key = "default_" + key
        if key.startswith("+"):
            checked[key[1:]] = value
            continue
        top = key.split("#", 1)[0]
        if top not in known:
            near = difflib.get_close_matches(top, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; see the ids in that file"
            raise MedsegError(f"--set {key}: {config_file} has no id {top!r}{hint} (a new id on purpose: "
                              f"--set +{key}=...)")
        checked[key] = value
    return checked


def settable_ids(bundle: str | Path) -> dict[str, Any]:
    """The top-level ids of a bundle's ``train.json`` that hold plain settings, with their defaults.

    These are what ``--set id=value`` (and MONAI's ``--id value``) is for: ids whose value is
    an expression, a reference or a component are the bundle's wiring and are left out.

    Raises:
        MedsegError: ``bundle`` has no ``configs/train.json``.
    """
    from monai.bundle import ConfigParser

    config_file = Path(bundle) / TRAIN_CONFIG
    if not config_file.is_file():
        raise MedsegError(f"{bundle}: not a bundle (no {TRAIN_CONFIG})")
    from medseg.tracking.params import config_settings

    return config_settings(ConfigParser.load_config_file(str(config_file)), nested_expressions=True)


#: ``--preset NAME`` -> the file in the bundle's ``configs/`` merged over ``train.json``.
PRESETS = {"cpu-tryout": "cpu_tryout.json"}


def preset_file(bundle: str | Path, preset: str) -> Path:
    """The config file of ``preset`` in ``bundle``.

    Raises:
        MedsegError: an unknown preset, or a bundle without that file.
    """
    if preset not in PRESETS:
        raise MedsegError(f"--preset {preset}: unknown preset (known: {', '.join(PRESETS)})")
    path = Path(bundle) / "configs" / PRESETS[preset]
    if not path.is_file():
        raise MedsegError(f"--preset {preset}: {bundle} has no configs/{PRESETS[preset]}")
    return path


def _suggest_tryout(workflow: Any, bundle: Path) -> None:
    """Warn when a 3D bundle's GPU-sized patches are about to train on a CPU, and name the try-out preset."""
    import torch

    if torch.cuda.is_available():
        return
    roi = workflow.parser.get("roi_size")
    if isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) for r in roi) and \
            roi[0] * roi[1] * roi[2] > 96**3 and (bundle / "configs" / PRESETS["cpu-tryout"]).is_file():
        logger.warning("no GPU: training %s with its GPU settings (roi_size %s) on the CPU takes hours per epoch; "
                       "for a first try add --preset cpu-tryout (small patches, a narrow network, 2 epochs)",
                       bundle.name, roi)


def _was_tracked(output_dir: Path) -> bool:
    """Whether the newest checkpoint of an interrupted run belongs to an MLflow run (True if unknown)."""
    from medseg.checkpoint import TrainingState
    from medseg.engine.handlers.run_state import newest_valid_checkpoint

    try:
        path, ckpt = newest_valid_checkpoint(output_dir / "models")
        extra = TrainingState.from_checkpoint(ckpt, path).extra
    except MedsegError:
        return True  # nothing to resume from: the workflow reports that
    return bool(extra.get("mlflow_run_id"))


def preflight_tracking(enabled: bool, uri: str | None, fallback: str | None, runs_dir: str | Path = "runs") -> None:
    """Fail in seconds, before caching or training, when the tracking server cannot be used.

    With ``fallback="local"`` an unreachable server only logs a warning (the run then
    uses the local store).
    """
    if not enabled or not uri:
        return
    from medseg.tracking import check_tracking_server, resolve_tracking_uri

    try:
        check_tracking_server(resolve_tracking_uri(uri, runs_dir))
    except MedsegError as err:
        if fallback != "local":
            raise
        logger.warning("%s; the run will use the local MLflow store", err)


def run_training(
    bundle: str | Path,
    data: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    tracking_uri: str | None = None,
    tracking_fallback: str | None = None,
    register: str | None = None,
    tracking: bool | None = None,
    trust_bundle: bool = False,
    extra_ids: dict[str, Any] | None = None,
    overwrite: bool = False,
    check_ids: bool = True,
    preset: str | None = None,
    plan: str | Path | None = None,
    gpu_memory_gib: float = 8.0,
    fold: int | None = None,
    save_prob: bool = False,
) -> TrainResult:
    """Train a bundle and return where its output bundle and MLflow run are.

    Args:
        bundle: the bundle folder (``bundles/brats_attention_unet3d``).
        data: the dataset folder (the config's ``dataset_dir``); ``None`` keeps the config's.
        overrides: ``--set`` values, by config id.
        output: the output folder; default ``runs/<bundle>/<timestamp>``.
        resume: an interrupted run's output folder; training continues there, with its
            own resolved config, in the same MLflow run.
        tracking_uri: MLflow tracking URI; ``None``: the config's, else the local store.
        tracking_fallback: ``"local"`` to fall back to the local store.
        register: register the best checkpoint under this name.
        tracking: ``False`` for an untracked run, ``True`` for a tracked one; ``None`` keeps the
            config's ``tracking_enabled`` (a resumed run stays tracked or untracked as it began).
        trust_bundle: allow a bundle outside the trusted folders.
        extra_ids: further config ids set by callers (e.g. ``reproduction_of``), not
            recorded as user overrides.
        overwrite: replace an earlier medseg output bundle in ``output`` (otherwise the
            folder must be new or empty; see :mod:`medseg.engine.outputs`).
        check_ids: refuse overrides of ids the config lacks (:func:`check_override_ids`);
            ``medseg reproduce`` turns it off, since a recorded extra config file may have
            added ids of its own.
        preset: a named set of values merged over ``train.json`` (MONAI's list of config
            files): ``"cpu-tryout"`` merges the bundle's ``configs/cpu_tryout.json`` (small
            patches, a narrow network, no workers or caching: a first run on a laptop).
        plan: ``"auto"`` to plan from the dataset first (:func:`medseg.planning.plan_dataset`;
            ``fingerprint.json`` and ``plan.json`` go into the output bundle's ``configs/``), or
            a ``plan.json`` made by ``medseg plan``; the bundle needs a ``plan_file`` id
            (``bundles/generic_3d``). ``overrides`` still win over planned values.
        gpu_memory_gib: the GPU memory ``plan="auto"`` plans for.
        fold: validate on this fold of the datalist's folds (the ``fold`` id) and, once trained,
            write the fold's out-of-fold predictions into ``OUT/oof/``
            (:func:`medseg.engine.oof.write_oof_predictions`). A resumed fold run writes them too.
        save_prob: with ``fold``: also write the out-of-fold probability maps.

    Returns:
        The :class:`TrainResult`.
    """
    from monai.bundle import ConfigWorkflow

    bundle = Path(resume if resume else bundle)
    config_file = bundle / TRAIN_CONFIG
    if not config_file.is_file():
        raise MedsegError(f"{bundle}: not a bundle (no {TRAIN_CONFIG})")
    if resume and output is not None and Path(output).resolve() != Path(resume).resolve():
        raise MedsegError(f"--output {output} differs from --resume {resume}; a resumed run writes where it began")
    check_bundle_trust(bundle, trust_bundle)
    config_files = [str(config_file)]
    if preset is not None:
        if resume:
            raise MedsegError(f"--preset {preset} with --resume: a resumed run keeps the values it began with")
        config_files.append(str(preset_file(bundle, preset)))
    user = dict(overrides or {})
    if fold is not None and not resume:
        if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
            raise MedsegError(f"--fold must be a fold number (0, 1, ...), got {fold!r}")
        user["fold"] = fold
    if check_ids:
        user = check_override_ids(user, config_file)
    from medseg.engine.handlers.output_bundle import LOCAL_IDS

    # What was trained, as given; where and how this machine ran it (a cv's parent run, run names) is not recorded.
    recorded = {k: v for k, v in user.items() if k not in LOCAL_IDS}
    ids: dict[str, Any] = {**user, "bundle_root": str(bundle.resolve()), "overrides": recorded}
    if data is not None:
        if not Path(data).is_dir():
            raise MedsegError(f"{data}: dataset folder does not exist")
        ids["dataset_dir"] = str(Path(data).resolve())
    if resume:
        ids["output_dir"] = str(Path(resume).resolve())
        ids["resume_dir"] = str(Path(resume).resolve())
    else:
        ids["output_dir"] = str(Path(output).resolve() if output else Path(default_output_dir(bundle)).resolve())
        check_output_location(ids["output_dir"], source_bundle=bundle)
    if tracking_uri is not None:
        ids["tracking_uri"] = tracking_uri
    if tracking_fallback is not None:
        ids["tracking_fallback"] = tracking_fallback
    if register is not None:
        ids["register_name"] = register
    planning = _plan_ids(plan, config_file, resume, ids) if plan is not None else None
    if tracking is not None:
        ids["tracking_enabled"] = bool(tracking)
    elif resume and tracking_uri is None and not _was_tracked(Path(resume)):
        ids["tracking_enabled"] = False  # an untracked run stays untracked when resumed
    ids.update(extra_ids or {})
    meta = bundle / "configs" / "metadata.json"
    workflow = ConfigWorkflow(config_file=config_files if preset else str(config_file),
                              meta_file=str(meta) if meta.is_file() else None, workflow_type="train", **ids)
    if preset is None and not resume:
        _suggest_tryout(workflow, bundle)
    preflight_tracking(bool(workflow.parser.get_parsed_content("tracking_enabled")),
                       workflow.parser.get_parsed_content("tracking_uri"),
                       workflow.parser.get_parsed_content("tracking_fallback"))
    dataset_dir = workflow.parser.get_parsed_content("dataset_dir")
    require_dataset({}, dataset_dir)  # before any folder is made
    check_output_location(ids["output_dir"], dataset_dir=dataset_dir)
    made = _auto_plan(dataset_dir, gpu_memory_gib) if planning == "auto" else None
    out = claim_output_dir(ids["output_dir"], resume=bool(resume), overwrite=overwrite)
    if made is not None:
        _write_auto_plan(made, Path(ids["plan_file"]).parent)
    logger.info("%s %s -> output bundle %s", "resuming" if resume else "training", bundle.name, out)
    try:
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (RunInterrupted): say where to go on from
        err.output_dir = out  # type: ignore[attr-defined]
        raise
    finally:
        release_output_dir(out)
    if fold is not None:
        from medseg.engine.oof import write_oof_predictions

        write_oof_predictions(out, save_prob=save_prob, overwrite=True)
    return read_result(out)


def _plan_ids(plan: str | Path, config_file: Path, resume: str | Path | None, ids: dict[str, Any]) -> str:
    """Set ``plan_file`` for ``--plan``; ``"auto"`` points it at the output bundle, where the plan will be written."""
    from monai.bundle import ConfigParser

    from medseg.planning import load_plan

    if resume:
        raise MedsegError(f"--plan {plan} with --resume: a resumed run keeps the plan it began with")
    if "plan_file" not in ConfigParser.load_config_file(str(config_file)):
        raise MedsegError(f"{config_file}: this bundle does not train from a plan (it has no plan_file id); "
                          "bundles/generic_3d does")
    if str(plan) == "auto":
        ids["plan_file"] = str(Path(ids["output_dir"]) / "configs" / "plan.json")
        return "auto"
    load_plan(plan)  # refuse a bad plan before anything is made
    ids["plan_file"] = str(Path(plan).expanduser().resolve())
    return "file"


def _auto_plan(dataset_dir: str | Path, gpu_memory_gib: float) -> Any:
    """Fingerprint and plan the dataset (``--plan auto``), printing the plan as a table."""
    from medseg.cli.progress import progress_printer
    from medseg.planning import format_plan, plan_dataset

    logger.info("planning from %s (--plan auto): reading every training case once", dataset_dir)
    result = plan_dataset(dataset_dir, None, gpu_memory_gib=gpu_memory_gib, progress=progress_printer("fingerprint"))
    logger.info("plan:\n%s", format_plan(result.plan))
    return result


def _write_auto_plan(result: Any, configs: Path) -> None:
    """Write an automatic plan and its fingerprint into the output bundle's ``configs/``."""
    from medseg.planning.apply import FINGERPRINT_FILE, PLAN_FILE
    from medseg.planning.fingerprint import write_fingerprint
    from medseg.planning.plan import write_plan

    configs.mkdir(parents=True, exist_ok=True)
    write_fingerprint(result.fingerprint, configs / FINGERPRINT_FILE)
    write_plan(result.plan, configs / PLAN_FILE)


def read_result(output_dir: str | Path) -> TrainResult:
    """Read a finished run's metrics and MLflow run id from its output bundle's metadata."""
    meta_path = Path(output_dir) / "configs" / "metadata.json"
    info = json.loads(meta_path.read_text()).get("medseg_training", {}) if meta_path.is_file() else {}
    return TrainResult(output_dir=Path(output_dir), run_id=info.get("mlflow_run_id"),
                       final_metrics=info.get("final_metrics", {}), best_metric=info.get("best_metric"))
