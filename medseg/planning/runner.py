"""``medseg plan``'s library function: fingerprint a dataset, plan, write both files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.errors import MedsegError
from medseg.planning.apply import FINGERPRINT_FILE, PLAN_FILE
from medseg.planning.fingerprint import extract_fingerprint, write_fingerprint
from medseg.planning.plan import DEFAULT_GPU_MEMORY_GIB, make_plan, write_plan

__all__ = ["PlanResult", "plan_dataset"]


@dataclass
class PlanResult:
    """What :func:`plan_dataset` made and where it wrote it."""

    fingerprint: dict[str, Any]
    plan: dict[str, Any]
    fingerprint_path: Path | None
    plan_path: Path | None


def plan_dataset(data: str | Path, out: str | Path | None, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
                 workers: int | None = None, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 device: torch.device | str | None = "auto") -> PlanResult:
    """Fingerprint ``data``, plan from it, and write ``fingerprint.json`` and ``plan.json`` into ``out``.

    Args:
        data: the dataset folder (BraTS, MSD or nnU-Net layout, 3D NIfTI).
        out: the folder for the two files (created); ``None`` writes nothing.
        gpu_memory_gib: the GPU memory to plan the patch and batch for.
        workers: reader processes (default: every core).
        overwrite: replace the two files if they exist (otherwise existing files are refused
            before anything is read).
        progress: called with ``(cases done, cases)``.
        device: the CUDA device to measure the planned step on; ``"auto"``: ``cuda`` when there
            is one; ``None``: the estimate alone.

    Returns:
        The fingerprint, the plan, and the paths written.
    """
    paths = (Path(out) / FINGERPRINT_FILE, Path(out) / PLAN_FILE) if out is not None else (None, None)
    for path in paths:
        if path is not None and path.exists() and not overwrite:
            raise MedsegError(f"{path}: exists; choose another --out or pass --overwrite")
    if device == "auto":
        device = torch.device("cuda") if torch.cuda.is_available() else None
    elif isinstance(device, str):
        device = torch.device(device)
    fingerprint = extract_fingerprint(data, workers=workers, progress=progress)
    plan = make_plan(fingerprint, gpu_memory_gib, device)
    if out is None:
        return PlanResult(fingerprint, plan, None, None)
    Path(out).mkdir(parents=True, exist_ok=True)
    fingerprint_path = write_fingerprint(fingerprint, paths[0], overwrite=overwrite)
    plan_path = write_plan(plan, paths[1], overwrite=overwrite)
    return PlanResult(fingerprint, plan, fingerprint_path, plan_path)
