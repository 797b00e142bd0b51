"""Dataset plumbing called from bundle configs: discover, write the datalist, split a fold."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from medseg.data.checks import check_dataset
from medseg.data.datalist import build_datalist, split_fold
from medseg.data.discovery import discover
from medseg.engine.outputs import check_output_location, claim_output_dir, unique_run_name
from medseg.errors import DataError, InvalidValueError
from medseg.utils.atomic import atomic_write_text
from medseg.utils.fastgzip import use_fast_gzip

DATALIST_NAME = "datalist.json"
logger = logging.getLogger("medseg.train")


# What a bundle's config may read from its datalist before any data exists (MONAI's tools build the
# workflow first and point it at data later): the label convention and channels it expects.
_EXPECTED_CHANNELS = {"brats2021": ["t1", "t1ce", "t2", "flair"], "brats2023": ["t1n", "t1c", "t2w", "t2f"],
                      "brats2024": ["t1n", "t1c", "t2w", "t2f"], "isic": ["R", "G", "B"]}


def placeholder_datalist(dataset_dir: str | Path, expected: str = "generic", folds: int = 5, seed: int = 0
                         ) -> dict[str, Any]:
    """The datalist of a dataset that is not there yet: no cases, the bundle's expected labels and channels.

    ``python -m monai.bundle``'s ``ConfigWorkflow(...).initialize()`` and ``check_properties()``
    (MONAI Label, MONAI FL, the model-zoo checks) instantiate the workflow before any data is
    given; running it with this datalist stops at :func:`require_dataset`.

    Args:
        dataset_dir: the missing dataset folder (kept, for the error at run time).
        expected: a label convention name (``"brats2021"``, ``"isic"``, ...), or ``"generic"``
            for one channel and background/foreground.
    """
    from medseg.data.conventions import get_convention, multiclass_convention

    if expected == "generic":
        convention = multiclass_convention("generic", {0: "background", 1: "foreground"})
    else:
        convention = get_convention(expected)
    return {"missing_dataset": str(dataset_dir), "label_convention": convention.name,
            "labels": {str(k): v for k, v in convention.labels.items()},
            "regions": {k: list(v) for k, v in convention.regions.items()},
            "channel_names": list(_EXPECTED_CHANNELS.get(expected, ["image"])),
            "num_folds": max(1, folds), "seed": seed, "numTraining": 0, "numTest": 0, "training": [], "testing": []}


def require_dataset(datalist: dict[str, Any] | list[Any], dataset_dir: str | Path | None = None,
                    loader: Any = None) -> None:
    """Stop a workflow that is about to run without its dataset, or that would train nothing.

    Args:
        datalist: the workflow's datalist (a :func:`placeholder_datalist` when the folder is missing).
        dataset_dir: the dataset folder, checked when the datalist cannot say.
        loader: the training data loader: one that yields no batch (fewer training cases than
            ``batch_size`` with ``drop_last``) is refused here, before MONAI would skip the run
            with a warning and leave no model.

    Raises:
        DataError: naming the folder, the rule and what to change.
    """
    missing = datalist.get("missing_dataset") if isinstance(datalist, dict) else None
    if missing is None and dataset_dir is not None and not Path(dataset_dir).is_dir():
        missing = str(dataset_dir)
    if missing is not None:
        raise DataError(missing, "dataset folder not found",
                        "set dataset_dir: medseg train BUNDLE --data DIR, or python -m monai.bundle run ... "
                        "--dataset_dir DIR")
    if loader is not None and len(loader) == 0:
        cases = len(getattr(loader, "dataset", []) or [])
        size = getattr(loader, "batch_size", None)
        dropped = " and drop_last drops the incomplete one" if getattr(loader, "drop_last", False) else ""
        where = datalist.get("root", dataset_dir) if isinstance(datalist, dict) else dataset_dir
        raise DataError(where or "dataset", "nothing to train",
                        f"{cases} training case(s) make no batch of batch_size={size}{dropped}; lower batch_size "
                        "(--set batch_size=N), use fewer folds (--set num_folds=N) or add cases")


def prepare_datalist(dataset_dir: str | Path, output_dir: str | Path, folds: int = 5, seed: int = 0,
                     check_contents: bool = True, resume_dir: str | Path | None = None,
                     expected: str = "generic", labels: str | None = None,
                     resampled: bool = False) -> dict[str, Any]:
    """Discover and check ``dataset_dir``, write ``output_dir/datalist.json``, return it with absolute paths.

    The fold count is reduced to the number of labelled cases for tiny datasets. Every
    file is read once and checked with the rules of ``medseg data check`` (unreadable,
    truncated or non-NIfTI files, 4D where 3D is expected, shape or affine mismatches,
    NaN/Inf voxels, label values outside the convention) before anything is written: a
    bad file stops the run here with one line naming it, instead of a loader traceback
    (or a NaN loss) later.

    Args:
        dataset_dir: the dataset folder in any layout :func:`medseg.data.discovery.discover` reads.
        output_dir: the run's output folder.
        folds: cross-validation folds.
        seed: seed of the fold assignment.
        check_contents: ``False`` checks only the structure (files present), not what they hold.
        resume_dir: the interrupted run being resumed (its folder may hold files); otherwise
            ``output_dir`` must be new or empty. The folder is locked for this process either way
            (:func:`medseg.engine.outputs.claim_output_dir`), so this holds for
            ``python -m monai.bundle run`` as for ``medseg train``.
        expected: the label convention the bundle expects, for the placeholder returned while
            ``dataset_dir`` does not exist (:func:`placeholder_datalist`): nothing is read or
            written then, and running the workflow stops at :func:`require_dataset`.
        labels: the label convention, when the files do not say it (``"brats2024"`` for a
            BraTS 2024+ set whose cases have no ET; ``medseg data check --labels``). ``None``:
            found from the layout and, for BraTS 2023 names, the label values (a 4 beside a 3
            is the 2024+ resection cavity, trained as its own region RC).
        resampled: the bundle resamples every case to one spacing (``pixdim`` set), so cases
            of mixed spacings are not warned about.

    Returns:
        The datalist dictionary; ``training`` and ``testing`` entries hold absolute paths.

    Raises:
        DataError: naming the first bad file and its rule, and how many problems there are.
        MedsegError: the output folder is refused (inside or around the dataset, in use, not empty).
    """
    if not Path(dataset_dir).is_dir():
        return placeholder_datalist(dataset_dir, expected, folds, seed)
    check_output_location(output_dir, dataset_dir=dataset_dir)
    use_fast_gzip()  # the check and the cache read every file
    if check_contents:
        report = check_dataset(dataset_dir, labels=labels, resampled=resampled)
        dataset, problems = report.dataset, report.problems
        for warning in report.warnings:
            logger.warning("%s: %s", dataset_dir, warning)
    else:
        dataset = discover(dataset_dir, labels)
        problems = dataset.problems
    if problems:
        first = problems[0]
        detail = f"{first.detail}; " if first.detail else ""
        raise DataError(first.path, first.rule, f"{detail}run 'medseg data check {dataset_dir}' "
                                                f"to list all {len(problems)} problem(s)")
    labelled = sum(c.has_label for c in dataset.cases)
    if labelled < 2:
        raise DataError(dataset_dir, "too few labelled cases", f"training needs at least 2, found {labelled}")
    out = Path(output_dir) / DATALIST_NAME
    datalist = build_datalist(dataset, out.parent, folds=min(folds, labelled), seed=seed)
    # Under torchrun only rank 0 claims the folder and writes; the others read its file once it is there.
    if _rank() == 0:
        claim_output_dir(output_dir,
                         resume=resume_dir is not None and Path(resume_dir).resolve() == Path(output_dir).resolve())
        atomic_write_text(out, json.dumps(datalist, indent=2) + "\n")
    _wait_for_rank_zero(out)
    resolved = dict(datalist)
    for key in ("training", "testing"):
        resolved[key] = load_decathlon_datalist(out, data_list_key=key) if datalist[key] else []
    return resolved


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def _wait_for_rank_zero(path: Path, timeout_s: float = 600.0) -> None:
    """Return once rank 0 has written ``path`` (at once outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        return
    deadline = time.monotonic() + timeout_s
    while _rank() != 0 and not path.is_file():
        if time.monotonic() > deadline:
            raise DataError(path, "not written by rank 0", f"waited {timeout_s:.0f} s; did rank 0 fail?")
        time.sleep(0.2)


def split(datalist: dict[str, Any], which: str, fold: int = 0) -> list[dict[str, Any]]:
    """The ``"train"`` or ``"val"`` cases of ``fold`` (the others of the labelled cases train)."""
    train, val = split_fold(datalist, fold)
    if which not in ("train", "val"):
        raise InvalidValueError(f"which must be 'train' or 'val', got {which!r}")
    return train if which == "train" else val


def default_output_dir(bundle_root: str | Path, runs_dir: str | Path = "runs") -> str:
    """``runs/<bundle name>/<time to the microsecond>-<random>``, the default output folder of a training run.

    Unique, so that two runs started in the same second never share a folder
    (:func:`medseg.engine.outputs.unique_run_name`).
    """
    name = Path(bundle_root).resolve().name
    return str(Path(runs_dir) / name / unique_run_name())


def locate_bundle(name: str) -> str:
    """Find the source bundle folder ``<name>``, for configs run without ``--bundle_root``.

    Looks at the current folder itself (run from inside the bundle), ``./<name>`` (run
    from ``bundles/``), ``./bundles/<name>`` (run from the repository) and the
    ``bundles/`` beside the medseg package (a source checkout). Run from elsewhere, pass
    ``--bundle_root``.

    Raises:
        FileNotFoundError: if none of them is the bundle.
    """
    import medseg

    cwd = Path.cwd()
    candidates = [cwd, cwd / name, cwd / "bundles" / name, Path(medseg.__file__).resolve().parents[1] / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / "configs" / "train.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(f"bundle {name!r} not found in ./bundles or beside the medseg package; pass --bundle_root")


def inference_datalist(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Every case of ``dataset_dir`` (labelled or not) as ``{"image": ..., "case_id": ...}`` for inference.

    A folder that does not exist (yet) gives no cases; the inference config's ``run`` stops at
    :func:`require_dataset` then.
    """
    if not Path(dataset_dir).is_dir():
        return []
    dataset = discover(dataset_dir)
    items = []
    for case in dataset.cases:
        item: dict[str, Any] = {"case_id": case.case_id,
                                "image": [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])}
        if "channel_permutation" in case.extra:
            item["channel_permutation"] = case.extra["channel_permutation"]
        items.append(item)
    return items


def inference_convention(dataset_dir: str | Path, checkpoint: str | Path | None = None,
                         fallback: str = "brats2021") -> str:
    """The label convention a region bundle's ``inference.json`` writes: the input's own, else the model's.

    The MONAI-runner twin of ``medseg infer``'s choice (:mod:`medseg.inference.postprocess`): a
    dataset whose layout has a region convention (BraTS 2021 or 2023 folders, MSD Task01, as
    :func:`medseg.data.discovery.discover` reads them for ``medseg evaluate``) gets its own
    values; any other input gets those of the model, from the checkpoint's
    ``label_convention`` (read with ``weights_only=True``). ``python -m monai.bundle run ...
    --label_convention X`` overrides the id that calls this.

    Args:
        dataset_dir: the dataset to segment.
        checkpoint: the model's checkpoint (``models/model.pt``).
        fallback: used when neither names a region convention, e.g. when MONAI's tools instantiate
            the workflow before any data or model is given (running it then stops at
            :func:`require_dataset`, writing nothing).

    Returns:
        A registered region convention name.
    """
    from medseg.checkpoint import read_model_spec
    from medseg.data.conventions import get_convention
    from medseg.errors import MedsegError

    model = None
    if checkpoint is not None and Path(checkpoint).is_file():
        try:
            model = get_convention(str(read_model_spec(checkpoint)[0].label_convention))
        except (MedsegError, OSError, ValueError):
            model = None  # a class model's own name, or a file CheckpointLoader reports
        if model is not None and not model.is_region_based:
            model = None
    if Path(dataset_dir).is_dir():
        try:
            convention = discover(dataset_dir).convention
        except DataError:
            convention = None  # inference_datalist reports the folder
        # The input's values, when the model's outputs are its regions (a BraTS 2024+ model, with
        # its RC channel, writes its own labels into a 2023-named input).
        if convention is not None and convention.is_region_based and (
                model is None or tuple(convention.region_names) == tuple(model.region_names)):
            return convention.name
    return model.name if model is not None else fallback



def case_files(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Name each case of an evaluation batch for MONAI's ``MetricsSaver`` (``evaluate.json``).

    A 3D item's image is a MONAI ``MetaTensor`` that knows its file (``meta["filename_or_obj"]``);
    a 2D item carries the ``image_path`` it was read from. One function for both lets every
    bundle share one ``evaluate.json``.
    """
    names = []
    for item in batch:
        if "image_path" in item:
            names.append({"filename_or_obj": item["image_path"]})
        else:
            meta = getattr(item.get("image"), "meta", None) or item.get("image_meta_dict") or {}
            names.append({"filename_or_obj": meta.get("filename_or_obj", "")})
    return names
