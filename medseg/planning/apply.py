"""How a plan reaches a bundle: its values as bundle ids, and its files in the output bundle.

``bundles/generic_3d`` reads a plan through two ids::

    "plan_file": null,
    "plan": "$medseg.planning.load_plan(@plan_file)",
    "pixdim": "$medseg.planning.planned(@plan, 'target_spacing', None)",
    "roi_size": "$medseg.planning.planned(@plan, 'patch_size', [96, 96, 96])",

so each planned value is an id of its own, with the bundle's fixed value when there is no
plan, and ``--set roi_size=[...]`` (or ``--roi_size`` with ``python -m monai.bundle run``)
overrides the plan's.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from medseg.errors import MedsegError
from medseg.planning.plan import check_plan, fingerprint_digest, write_plan

__all__ = ["FINGERPRINT_FILE", "PLAN_FILE", "planned", "planned_network", "record_plan_files"]

PLAN_FILE = "plan.json"
FINGERPRINT_FILE = "fingerprint.json"


def planned(plan: dict[str, Any] | None, key: str, default: Any) -> Any:
    """The plan's value of ``key``, or ``default`` without a plan."""
    if plan is None:
        return default
    check_plan(plan, "the bundle's plan")  # given inline (--set plan=..., a reproduction): checked as a file is
    if key not in plan:
        raise MedsegError(f"the plan has no {key!r}; make it again with medseg plan")
    return copy.deepcopy(plan[key])


def planned_network(default: dict[str, Any], in_channels: int, out_channels: int,
                    kernel_size: list | None = None, strides: list | None = None,
                    filters: list | None = None) -> dict[str, Any]:
    """The network spec: the planned DynUNet when kernels, strides and filters are given, else ``default``.

    Args:
        default: the bundle's network spec without a plan (``default_network_spec``).
        in_channels: the dataset's channels.
        out_channels: the classes, background included.
        kernel_size: per level, the kernel size along each axis (the plan's ``network``).
        strides: per level, the stride along each axis.
        filters: channels per level.
    """
    given = [v is not None for v in (kernel_size, strides, filters)]
    if not any(given):
        return copy.deepcopy(default)
    if not all(given):
        raise MedsegError("network_kernel_size, network_strides and network_filters go together; "
                          f"got kernel_size={kernel_size}, strides={strides}, filters={filters}")
    return {"name": "dynunet", "kwargs": {
        "spatial_dims": 3, "in_channels": int(in_channels), "out_channels": int(out_channels),
        "kernel_size": copy.deepcopy(kernel_size), "strides": copy.deepcopy(strides),
        "upsample_kernel_size": copy.deepcopy(strides[1:]), "filters": list(filters),
        "norm_name": "instance", "res_block": False}}


def record_plan_files(output_dir: str | Path, plan: dict[str, Any], plan_file: str | Path | None = None) -> list[Path]:
    """Put the run's plan, and the fingerprint it was made from, into the output bundle's ``configs/``.

    The plan is written from the run's values (what trained, also when it was given inline, as
    ``medseg reproduce`` does). The fingerprint is copied from beside ``plan_file`` when it is
    the one the plan records (its sha256); a fingerprint of other data is left out.

    Returns:
        The files written.
    """
    configs = Path(output_dir) / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    written = [write_plan(plan, configs / PLAN_FILE, overwrite=True)]
    if plan_file is None:
        return written
    source = Path(plan_file).parent / FINGERPRINT_FILE
    target = configs / FINGERPRINT_FILE
    if source.is_file() and source.resolve() != target.resolve():
        try:
            fingerprint = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return written
        if fingerprint_digest(fingerprint) == plan.get("fingerprint_sha256"):
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
            written.append(target)
    elif target.is_file():
        written.append(target)
    return written


