"""Part A of ``precision_accuracy.py``: old against new training precision over seeds, and the verdict.

Each run trains, infers and scores through the real CLI in a fresh process; the held-out Dice of
the two arms is summarised over the seeds and judged by :data:`VERDICT_RULE`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import read_brats_evaluation, run_medseg

REPO = Path(__file__).resolve().parent.parent
BUNDLE_A = REPO / "bundles" / "brats_attention_unet3d"
REGIONS = ("WT", "TC", "ET")
#: Part A's arms: name -> the bundle's ``precision`` id.
ARMS = {"old (precision=bf16)": "bf16", "new (precision=auto)": "auto"}
VERDICT_RULE = "new mean >= old mean - max(old std, (old max - old min) / 2)"


def medseg_cli(args: argparse.Namespace, cli: list[str], log: Path) -> float:
    """Run ``python -m medseg CLI...`` from the repository root (output to ``log``); return its wall seconds.

    The environment is this process's (``OMP_NUM_THREADS`` included), with the tree on ``PYTHONPATH``.

    Raises:
        RuntimeError: on a non-zero exit status, with the log's tail.
    """
    return run_medseg(cli, log, env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)))


def score(args: argparse.Namespace, name: str, pred: Path, heldout: Path) -> dict[str, Any]:
    """``medseg evaluate --task brats`` of one run's held-out masks: Dice per region (mean over cases, and per case)."""
    csv_path = args.work / "a" / "evaluation" / name / "metrics.csv"
    cli = ["evaluate", "--pred", str(pred), "--truth", str(heldout), "--task", "brats", "--out", str(csv_path),
           "--montage-cases", "0"]
    seconds = medseg_cli(args, cli, args.work / "logs" / f"evaluate_{name}.log")
    scores = read_brats_evaluation(csv_path, args.heldout, name)
    return {"dice": scores["dice"], "mean_dice": scores["mean_dice"], "per_case": scores["per_case"],
            "evaluate_s": seconds}


def trained_precision(choice: str) -> str:
    """The type ``precision=choice`` trains attention_unet3d in on this machine's training device."""
    from medseg.engine import fastpath

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return fastpath.training_precision(device, "attention_unet3d", choice)


def run_a(args: argparse.Namespace, arm: str, choice: str, seed: int, train: Path, heldout: Path) -> dict[str, Any]:
    """Train, infer and score one part A run; return its record."""
    name = f"{choice}_seed{seed}"
    out, pred = args.work / "a" / "runs" / name, args.work / "a" / "predictions" / name
    sets = [f"seed={seed}", f"precision={choice}", f"max_epochs={args.epochs}",
            f"roi_size={json.dumps(list(args.crop), separators=(',', ':'))}", f"num_workers={args.workers}",
            *args.train_set]
    train_cli = ["train", str(BUNDLE_A), "--data", str(train), "--output", str(out), "--no-tracking",
                 *(x for kv in sets for x in ("--set", kv))]
    train_s = medseg_cli(args, train_cli, args.work / "logs" / f"train_{name}.log")
    infer_cli = ["infer", str(out), "--input", str(heldout), "--output", str(pred), "--no-progress"]
    infer_s = medseg_cli(args, infer_cli, args.work / "logs" / f"infer_{name}.log")
    meta = json.loads((out / "configs" / "metadata.json").read_text()).get("medseg_training", {})
    record = {"arm": arm, "precision_id": choice, "trains_in": trained_precision(choice), "seed": seed,
              "train_command": "medseg " + " ".join(train_cli), "infer_command": "medseg " + " ".join(infer_cli),
              "train_s": train_s, "infer_s": infer_s, "best_val_metric": meta.get("best_metric"),
              "final_metrics": meta.get("final_metrics", {}), **score(args, name, pred, heldout)}
    print(f"{arm} seed {seed}: held-out {({r: round(v, 4) for r, v in record['dice'].items()})} mean "
          f"{record['mean_dice']:.4f}; train {train_s:.0f} s (trains in {record['trains_in']})", flush=True)
    return record


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def arm_stats(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm: the spread over seeds of the held-out mean Dice, of each region and of the training seconds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if mine:
            out[arm] = {"mean": spread([r["mean_dice"] for r in mine]),
                        **{k: spread([r["dice"][k] for r in mine]) for k in REGIONS},
                        "train_s": spread([r["train_s"] for r in mine])}
    return out


def verdict(stats: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Apply :data:`VERDICT_RULE` to the overall mean and to each region."""
    old, new = (stats.get(a) for a in ARMS)
    if old is None or new is None:
        return {"rule": VERDICT_RULE, "overall": None}
    out: dict[str, Any] = {"rule": VERDICT_RULE}
    for key in ("mean", *REGIONS):
        o, n = old[key], new[key]
        margin = max(o["std"], (o["max"] - o["min"]) / 2)
        ok = n["mean"] >= o["mean"] - margin
        out[key] = {"new_minus_old": n["mean"] - o["mean"], "allowed_drop": margin, "within": bool(ok)}
    out["overall"] = ("new within the old arm's seed spread" if out["mean"]["within"]
                      else "new worse beyond the old arm's seed spread")
    return out


def part_a(args: argparse.Namespace, train: Path, heldout: Path) -> dict[str, Any]:
    """Every (seed, arm) run, the arms alternating within each seed; the statistics and the verdict."""
    runs = [run_a(args, arm, choice, seed, train, heldout) for seed in args.seeds for arm, choice in ARMS.items()]
    stats = arm_stats(runs)
    return {"bundle": str(BUNDLE_A.relative_to(REPO)), "runs": runs, "stats": stats, "verdict": verdict(stats)}
