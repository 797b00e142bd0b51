"""``planned_vs_fixed.py``'s set-up: the synthetic datasets, the plan's values, each arm's train command."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

from planned_vs_fixed_cli import REPO, medseg

BUNDLE = REPO / "bundles" / "generic_3d"

#: Spacings (mm) the cases cycle over: case i takes SPACINGS[i % len].
SPACINGS = {
    "brats": [(0.9, 0.9, 4.0), (0.9, 0.9, 4.0), (1.0, 1.0, 1.5), (0.8, 0.8, 3.0)],
    "ct": [(0.8, 0.8, 2.5), (1.0, 1.0, 1.0), (0.7, 0.7, 3.0)],
}
DESCRIPTION = {
    "brats": "BraTS-like MRI (medseg data synth brats --format nnunet): 4 channels, labels necrosis 1, "
             "edema 2, enhancing 3; drawn at 1 mm on --shape, resampled to the spacing of the case",
    "ct": "CT-like abdomen (medseg data synth ct): 1 channel in HU, labels organ 1, lesion 2; drawn at 1 mm "
          "on --shape, resampled to the spacing of the case",
}


def write_data(args: argparse.Namespace, name: str, root: Path) -> dict[str, Any]:
    """Write the training and held-out sets of dataset ``name`` under ``root``; return their description."""
    shape = tuple(args.brats_shape if name == "brats" else args.ct_shape)
    spacing_args = [s for spacing in SPACINGS[name] for s in ("--spacing", *map(str, spacing))]
    seconds = 0.0
    for split, cases, seed in (("train", args.train_cases, args.data_seed), ("test", args.test_cases, args.test_seed)):
        shutil.rmtree(root / split, ignore_errors=True)
        cli = ["data", "synth", name, "--cases", str(cases), "--shape", *map(str, shape), *spacing_args,
               "--out", str(root / split), "--seed", str(seed)]
        if name == "brats":
            cli[3:3] = ["--format", "nnunet"]
        seconds += medseg(args, cli, root / "logs" / f"synth_{split}.log")
    return {"description": DESCRIPTION[name], "shape_1mm": list(shape),
            "spacings_cycled": [list(s) for s in SPACINGS[name]], "train_cases": args.train_cases,
            "test_cases": args.test_cases, "data_seed": args.data_seed, "test_seed": args.test_seed,
            "train_dir": str(root / "train"), "test_dir": str(root / "test"), "seconds": seconds}


def narrow_filters(plan: dict[str, Any], divisor: int) -> list[int]:
    """The plan's filters divided by ``divisor`` (at least 1 each): the planned arm's CPU width."""
    return [max(1, int(f) // divisor) for f in plan["network"]["filters"]]


def plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's values this benchmark reports."""
    network = plan["network"]
    return {"target_spacing": plan["target_spacing"], "anisotropic_axis": plan.get("anisotropic_axis"),
            "median_shape": plan.get("median_shape"), "patch_size": plan["patch_size"],
            "patch_voxels": math.prod(plan["patch_size"]), "batch_size": plan["batch_size"],
            "normalization": plan["normalization"], "resampling": plan.get("resampling"),
            "crop_to_nonzero": plan.get("crop_to_nonzero"), "network": network["name"],
            "strides": network["strides"], "kernel_size": network["kernel_size"], "filters": network["filters"],
            "memory": plan.get("memory"), "fingerprint_sha256": plan.get("fingerprint_sha256")}


def train_command(args: argparse.Namespace, arm: str, train_dir: Path, out: Path, epochs: int,
                  filters: list[int]) -> list[str]:
    """The ``medseg train`` arguments of one arm."""
    shared = ["--set", f"max_epochs={epochs}", "--set", f"seed={args.seed}", "--set", f"val_interval={args.val_interval}",
              "--set", "cache_rate=1.0", "--no-tracking", "--output", str(out)]
    if arm == "fixed":
        return ["train", str(BUNDLE), "--data", str(train_dir), "--preset", "cpu-tryout", *shared]
    return ["train", str(BUNDLE), "--data", str(train_dir), "--plan", "auto", "--gpu-memory", str(args.gpu_memory),
            "--set", "num_workers=0", "--set", "amp=false", "--set", "sw_batch_size=2",
            "--set", "network_filters=" + json.dumps(filters, separators=(",", ":")), *shared]

