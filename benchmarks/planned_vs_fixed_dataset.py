"""``planned_vs_fixed.py`` on one dataset: data, plan, calibration, training, inference and scores of both arms."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from planned_vs_fixed_calibration import CALIBRATION_EPOCHS, epoch_rate, epochs_for, parse_log
from planned_vs_fixed_cli import medseg
from planned_vs_fixed_report import fmt
from planned_vs_fixed_scoring import score
from planned_vs_fixed_setup import narrow_filters, plan_summary, train_command, write_data


def bundle_settings(out: Path) -> dict[str, Any]:
    """What the output bundle recorded: resolved training values, the network and its parameter count."""
    from medseg.checkpoint import load_checkpoint

    config = json.loads((out / "configs" / "train.json").read_text())
    keep = ("roi_size", "batch_size", "pixdim", "normalization", "resampling", "crop_foreground", "learning_rate",
            "max_epochs", "seed", "val_interval", "amp", "num_workers", "cache_rate", "sw_batch_size",
            "warmup_epochs", "augmentation", "loss_spec")
    settings = {k: config.get(k) for k in keep}
    ckpt = load_checkpoint(out / "models" / "model.pt")
    settings["network"] = ckpt["network"]
    settings["parameters"] = int(sum(v.numel() for v in ckpt["model"].values()))
    settings["best_checkpoint_epoch"] = ckpt.get("epoch")
    settings["best_checkpoint_metric"] = ckpt.get("best_metric")
    settings["inference"] = ckpt.get("inference")
    plan_file = out / "configs" / "plan.json"
    settings["plan_fingerprint_sha256"] = (json.loads(plan_file.read_text()).get("fingerprint_sha256")
                                           if plan_file.is_file() else None)
    return settings


def run_dataset(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Data, plan, calibration, training, inference and scores of both arms on one dataset."""
    root = args.work / name
    for folder in ("runs", "predictions", "logs", "plan"):
        shutil.rmtree(root / folder, ignore_errors=True)
    data = write_data(args, name, root)
    train_dir, test_dir = root / "train", root / "test"
    labels = json.loads((test_dir / "dataset.json").read_text())["labels"]
    medseg(args, ["plan", str(train_dir), "--out", str(root / "plan"), "--gpu-memory", str(args.gpu_memory)],
           root / "logs" / "plan.log")
    plan = json.loads((root / "plan" / "plan.json").read_text())
    filters = narrow_filters(plan, args.width_divisor)
    arms = ("fixed", "planned")
    calibration: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        if args.smoke:
            continue
        out, log = root / "runs" / f"calibrate_{arm}", root / "logs" / f"calibrate_{arm}.log"
        wall = medseg(args, train_command(args, arm, train_dir, out, CALIBRATION_EPOCHS, filters), log)
        calibration[arm] = [epoch_rate(log, wall)]
        print(f"{name} {arm}: calibration {calibration[arm][0]}", flush=True)
    result = {"data": data, "plan": plan_summary(plan), "planned_network_filters": filters, "arms": {}}
    for arm in arms:
        out, log = root / "runs" / arm, root / "logs" / f"train_{arm}.log"
        rates = calibration.get(arm, [])
        sizing = epochs_for(args.budget, rates) if rates else {"max_epochs": 2, "note": "--smoke: no calibration"}
        attempts = []
        while True:
            epochs = sizing["max_epochs"]
            shutil.rmtree(out, ignore_errors=True)
            command = train_command(args, arm, train_dir, out, epochs, filters)
            wall = medseg(args, command, log)
            attempts.append({"sizing": sizing, "train_wall_s": wall})
            if args.smoke:
                break
            # This host's speed changes for minutes at a time (other work on it): a run whose
            # epochs, at the speed now measured over more epochs, would not fill the budget to
            # within a tenth is redone with the corrected count (twice at most).
            rates.append(epoch_rate(log, wall))
            attempts[-1]["measured"] = rates[-1]
            sizing = epochs_for(args.budget, rates)
            if abs(sizing["max_epochs"] - epochs) <= max(1, 0.1 * epochs) or len(attempts) == 3:
                break
            print(f"{name} {arm}: {epochs} epochs took {wall:.0f} s, at the measured speed "
                  f"{sizing['max_epochs']} fill {args.budget:.0f} s: trained again", flush=True)
            shutil.copyfile(log, log.with_name(f"{log.stem}_attempt{len(attempts)}.log"))
        parsed = parse_log(log)
        pred = root / "predictions" / arm
        infer_s = medseg(args, ["infer", str(out), "--input", str(test_dir), "--output", str(pred), "--device", "cpu",
                                "--no-progress"], root / "logs" / f"infer_{arm}.log")
        scores = score(pred, test_dir, labels)
        settings = bundle_settings(out)
        if arm == "planned" and settings["plan_fingerprint_sha256"] != plan.get("fingerprint_sha256"):
            raise RuntimeError(f"{name}: the plan of --plan auto ({settings['plan_fingerprint_sha256']}) is not "
                               f"the one medseg plan wrote ({plan.get('fingerprint_sha256')})")
        result["arms"][arm] = {
            "command": "medseg " + " ".join(command), "calibration": calibration.get(arm, [None])[0],
            "attempts": attempts, "epochs": parsed["epochs_run"],
            "train_wall_s": wall, "train_epoch_seconds_sum": parsed["train_seconds_sum"],
            "best_val_mean_dice": parsed["best_val_mean_dice"], "heldout": scores, "infer_s": infer_s,
            "settings": settings,
        }
        print(f"{name} {arm}: {parsed['epochs_run']} epochs, {wall:.0f} s, best val {parsed['best_val_mean_dice']}, "
              f"held-out {({k: fmt(v, 4) for k, v in scores['dice'].items()})} mean {fmt(scores['mean_dice'], 4)}, "
              f"infer {infer_s:.0f} s", flush=True)
    return result

