"""``plan.json``: what a dataset's fingerprint decides for training, written, read back and checked.

:func:`make_plan` applies the rules of :mod:`medseg.planning.rules` and
:mod:`medseg.planning.topology` to a fingerprint. Scripts read the plan, so these key names
stay: ``target_spacing`` (three numbers, mm, RAS axis order), ``patch_size``, ``batch_size``
and ``normalization`` (one of ``"ct"``, ``"zscore"``, ``"zscore_nonzero"`` per channel).

A plan is data from outside when it is handed to ``medseg train --plan FILE`` or found in an
output bundle: :func:`check_plan` bounds every value before anything uses it (a patch of
10^5 voxels per axis, or a 0.001 mm spacing, is refused with the key that broke the rule).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import DataError, InvalidValueError, MedsegError
from medseg.planning import rules
from medseg.planning.topology import fit_patch_and_batch
from medseg.utils.atomic import atomic_write_text
from medseg.utils.limits import max_voxels

__all__ = ["PLAN_FORMAT", "check_plan", "format_plan", "load_plan", "make_plan", "write_plan"]

PLAN_FORMAT = "medseg-plan/1"
DEFAULT_GPU_MEMORY_GIB = 8.0  # nnU-Net's default target
_MAX_PLAN_BYTES = 1 << 20
_SPACING_RANGE = (0.01, 100.0)  # mm
_PATCH_RANGE = (4, 1024)
_MAX_BATCH = 1024


def make_plan(fingerprint: dict[str, Any], gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
              device: torch.device | None = None) -> dict[str, Any]:
    """The plan for a fingerprint.

    Args:
        fingerprint: a fingerprint from :func:`medseg.planning.fingerprint.extract_fingerprint`.
        gpu_memory_gib: the GPU memory to plan the patch and batch for, in GiB.
        device: a CUDA device to check the patch and batch on with one measured training step;
            ``None`` plans from the estimate alone.

    Returns:
        The plan (JSON-serialisable).
    """
    if not 0.5 < gpu_memory_gib <= 4096:
        raise InvalidValueError(f"--gpu-memory must be in (0.5, 4096] GiB, got {gpu_memory_gib}")
    cases = fingerprint["cases"]
    spacings = [c["spacing"] for c in cases]
    shapes = [c["shape"] for c in cases]
    fractions = [c["nonzero_fraction"] for c in cases]
    channels = [c["name"] for c in fingerprint["channels"]]
    labels = fingerprint["labels"]
    crop = rules.crop_to_nonzero(fractions)
    target, aniso = rules.target_spacing(spacings)
    sizes = [c["cropped_shape"] for c in cases] if crop else shapes
    resampled = rules.resampled_shapes(sizes, spacings, target)
    median_shape = [int(s) for s in np.median(resampled, axis=0)]
    dataset_voxels = int(np.prod(resampled, axis=1).sum())
    patch, batch, topology, memory = fit_patch_and_batch(
        target, median_shape, dataset_voxels, len(channels), len(labels), int(gpu_memory_gib * 2**30), device)
    normalization = rules.normalization(channels, fractions)
    properties = [{k: float(stats[k]) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}
                  for stats in fingerprint["intensity"]]
    return {
        "format": PLAN_FORMAT,
        "dataset": {"name": fingerprint["dataset"]["name"], "num_cases": len(cases)},
        "fingerprint_sha256": fingerprint_digest(fingerprint),
        "channels": channels,
        "labels": labels,
        "target_spacing": target,
        "anisotropic_axis": aniso,
        "median_shape": median_shape,
        "crop_to_nonzero": crop,
        "patch_size": patch,
        "batch_size": batch,
        "normalization": normalization,
        "intensity_properties": properties,
        "resampling": rules.interpolation(np.median(np.asarray(spacings, dtype=np.float64), axis=0), target),
        "network": {"name": "dynunet", "kernel_size": topology.kernel_size, "strides": topology.strides,
                    "filters": topology.filters},
        "memory": {**memory, "checked_on": str(device) if device is not None else "estimate"},
    }


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """sha256 of the fingerprint's canonical JSON, which the plan records to say what it was made from."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode("utf-8")).hexdigest()


def _refuse(source: object, key: str, rule: str, value: Any) -> DataError:
    return DataError(source, f"bad plan value {key}", f"{rule}, got {json.dumps(value)[:200]}")


def _numbers(value: Any, count: int | None, low: float, high: float, integer: bool) -> bool:
    kind = (int,) if integer else (int, float)
    return (isinstance(value, list) and (count is None or len(value) == count) and len(value) > 0
            and all(type(v) in kind and math.isfinite(v) and low <= v <= high for v in value))


def check_plan(plan: Any, source: object = "plan") -> dict[str, Any]:
    """Check a plan's values (types and bounds) and return it.

    Raises:
        DataError: naming ``source`` and the key whose value breaks its rule.
    """
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise DataError(source, "not a medseg plan", f"expected a JSON object with format {PLAN_FORMAT!r}")
    if not _numbers(plan.get("target_spacing"), 3, *_SPACING_RANGE, integer=False):
        raise _refuse(source, "target_spacing", f"three spacings in [{_SPACING_RANGE[0]}, {_SPACING_RANGE[1]}] mm",
                      plan.get("target_spacing"))
    patch = plan.get("patch_size")
    if not _numbers(patch, 3, *_PATCH_RANGE, integer=True) or math.prod(patch) > max_voxels():
        raise _refuse(source, "patch_size", f"three integers in {list(_PATCH_RANGE)} within {max_voxels():,} voxels",
                      patch)
    if type(plan.get("batch_size")) is not int or not 1 <= plan["batch_size"] <= _MAX_BATCH:
        raise _refuse(source, "batch_size", f"an integer in [1, {_MAX_BATCH}]", plan.get("batch_size"))
    norm = plan.get("normalization")
    if not isinstance(norm, list) or not norm or any(n not in rules.NORMALIZATIONS for n in norm):
        raise _refuse(source, "normalization", f"one of {list(rules.NORMALIZATIONS)} per channel", norm)
    props = plan.get("intensity_properties")
    keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if not isinstance(props, list) or len(props) != len(norm) or not all(
            isinstance(p, dict) and all(type(p.get(k)) in (int, float) and math.isfinite(p[k]) for k in keys)
            for p in props):
        raise _refuse(source, "intensity_properties", f"one object with finite {list(keys)} per channel", props)
    resampling = plan.get("resampling")
    if not (isinstance(resampling, dict) and all(type(resampling.get(k)) is int and 0 <= resampling[k] <= 5
                                                 for k in ("image_order", "label_order", "separate_axis_order"))
            and resampling.get("separate_axis") in (None, 0, 1, 2)):
        raise _refuse(source, "resampling", "spline orders 0-5 and a separate_axis of null, 0, 1 or 2", resampling)
    if type(plan.get("crop_to_nonzero")) is not bool:
        raise _refuse(source, "crop_to_nonzero", "true or false", plan.get("crop_to_nonzero"))
    network = plan.get("network")
    levels = len(network.get("filters") or []) if isinstance(network, dict) else 0
    if not (isinstance(network, dict) and network.get("name") == "dynunet" and 3 <= levels <= 10
            and _numbers(network.get("filters"), levels, 1, 2048, integer=True)
            and isinstance(network.get("kernel_size"), list) and len(network["kernel_size"]) == levels
            and all(_numbers(k, 3, 1, 7, integer=True) for k in network["kernel_size"])
            and isinstance(network.get("strides"), list) and len(network["strides"]) == levels
            and all(_numbers(s, 3, 1, 2, integer=True) for s in network["strides"])):
        raise _refuse(source, "network", "a dynunet with 3-10 levels: filters, and 3 kernel sizes (1-7) and "
                                         "strides (1-2) per level", network)
    return plan


def load_plan(path: str | Path | None) -> dict[str, Any] | None:
    """Read and check ``plan.json`` (``None``: no plan, the bundle's fixed defaults apply).

    Raises:
        DataError: the file is missing, too large, not JSON, or a value breaks its rule.
    """
    if path is None:
        return None
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        if size > _MAX_PLAN_BYTES:
            raise DataError(path, "too large", f"{size:,} bytes; a plan is a few KB")
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(path, "not found", "no plan file here; make one with medseg plan DATA --out DIR") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, "unreadable plan", str(err)) from err
    return check_plan(plan, path)


def write_plan(plan: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Write ``plan`` atomically; refuse to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise MedsegError(f"{path}: exists; choose another --out or pass --overwrite")
    return atomic_write_text(path, json.dumps(check_plan(plan, path), indent=2) + "\n")


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a short table for the terminal."""
    net = plan["network"]
    axis = plan.get("anisotropic_axis")
    resampling = plan["resampling"]
    rows = [
        ("dataset", f"{plan['dataset']['name']} ({plan['dataset']['num_cases']} cases)"),
        ("target spacing (mm)", " x ".join(f"{s:g}" for s in plan["target_spacing"])
         + (f"  (axis {axis} anisotropic: its 10th percentile)" if axis is not None else "  (median)")),
        ("median shape", " x ".join(map(str, plan["median_shape"]))),
        ("crop to non-zero", "yes" if plan["crop_to_nonzero"] else "no"),
        ("patch size", " x ".join(map(str, plan["patch_size"]))),
        ("batch size", str(plan["batch_size"])),
        ("normalisation", ", ".join(f"{c}: {n}" for c, n in zip(plan["channels"], plan["normalization"]))),
        ("resampling", f"images spline {resampling['image_order']}, labels order {resampling['label_order']}"
         + (f", axis {resampling['separate_axis']} separately (order {resampling['separate_axis_order']})"
            if resampling["separate_axis"] is not None else "")),
        ("network", f"DynUNet, {len(net['filters'])} levels, filters {net['filters']}"),
        ("strides", " ".join("".join(map(str, s)) for s in net["strides"])),
        ("kernels", " ".join("".join(map(str, k)) for k in net["kernel_size"])),
        ("GPU memory (GiB)", _memory_text(plan.get("memory") or {})),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _memory_text(memory: dict[str, Any]) -> str:
    text = f"budget {memory.get('budget_gib')}, estimated {memory.get('estimated_gib')}"
    if memory.get("measured_gib") is not None:
        text += f", measured {memory['measured_gib']} on {memory.get('checked_on')}"
    return text
