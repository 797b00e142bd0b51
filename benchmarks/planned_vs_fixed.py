"""Does the planned generic_3d beat today's fixed one in the same CPU training time? Held-out Dice.

Two synthetic datasets are written by the CLI (``medseg data synth``, nnU-Net v2 layout) into
``--work``, each as a training set and a held-out set drawn with another seed at the same
spacing mix:

* ``brats``: BraTS-like MRI (4 channels; necrosis 1, edema 2, enhancing 3) drawn on a 1 mm grid
  of ``--brats-shape`` and resampled to spacings that cycle over the cases, mostly thick-slice:
  0.9x0.9x4, 0.9x0.9x4, 1x1x1.5, 0.8x0.8x3 mm;
* ``ct``: CT-like abdomen (1 channel in HU; organ 1, lesion 2) at 0.8x0.8x2.5, 1x1x1, 0.7x0.7x3 mm.

On each, ``bundles/generic_3d`` is trained twice through the real CLI (``python -m medseg
train`` in a subprocess, ``--no-tracking``, a fresh ``--output``, ``OMP_NUM_THREADS`` set):

* ``fixed``: today's recipe, ``--preset cpu-tryout``: SegResNet with ``init_filters`` 8, the native
  spacing of each case (no resampling), 64^3 patches, batch 1, per-image non-zero z-score;
* ``planned``: ``--plan auto --gpu-memory G``: the plan's target spacing (separate-axis spline
  resampling), patch and batch size, per-channel normalisation and DynUNet topology. Two things
  are sized for the CPU: ``G`` (default 1.5 GiB) is chosen low enough that the plan's own patch
  is CPU-sized (no larger than the fixed arm's 64^3 voxels), and the width is the plan's filters
  divided by ``--width-divisor`` (4: 32 -> 8, the fixed arm's first width; the 320 cap -> 80),
  set as ``--set network_filters=[...]`` after reading the plan's depth from a ``medseg plan``
  run. The plan itself is not edited.

Both arms share the training seed, ``val_interval``, the bundle's learning rate, schedule, loss
and augmentation, ``amp=false``, ``num_workers=0`` and ``cache_rate=1.0``: the deterministic
preprocessing is cached in both (cpu-tryout's ``cache_rate=0`` re-reads every case every epoch:
on this CPU a fixed epoch took 4x as long in a trial). They also get the same
wall-clock budget ``--budget`` seconds, spent as ``max_epochs``: a 3-epoch calibration run of
each arm gives its seconds per epoch (the time from one epoch's end to the next: an epoch of
training plus its validation on the bundle's fold-0 split) and its fixed cost (start-up, caching,
the first epoch's warm-up, the final writing), and the arm then trains
``max_epochs = floor((budget - fixed cost) / seconds per epoch)``. This machine's speed changes
for minutes at a time (other work on the host: a calibration epoch once took 3x as long as the
same epoch in the training run after it), and such spells only slow epochs down, so the speed
is taken from the fastest periods (the 25th percentile over 4 or more) and the smallest fixed
cost seen; when a training run, measured that way over its own epochs, shows that its epoch
count would not fill the budget to within a tenth, it is trained again with the corrected count
(twice at most). Every attempt is in the JSON, with the CPU shares during every CLI call (busy;
niced: other processes; steal) and the number of slow epochs.

The reported number is the held-out Dice: each arm's output bundle (its best model,
``models/model.pt``) segments the held-out cases with ``python -m medseg infer`` (masks in each
case's own geometry), and the masks are scored here per class against the held-out labels per
case, then averaged over the cases, nnU-Net's way (a case where a class is in neither the truth
nor the mask is left out of that class's mean); the mean over the foreground classes is the
headline. The BraTS way (such a case scores 1), the pooled Dice (voxels of all held-out cases
together) and the means per spacing are reported too.

A benchmark, not a test: nothing here asserts which arm wins. One training seed on a few
synthetic cases; on a 2-core CPU the whole run takes about 35 minutes::

    python benchmarks/planned_vs_fixed.py --work /tmp/planned_vs_fixed \\
        --out benchmarks/results/planned_vs_fixed_cpu.json

``--smoke`` checks the plumbing in about 2 minutes (tiny data, 2 epochs per arm, no calibration;
the figures mean nothing; the default ``--out`` is then under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from common import Timer, dice, environment, markdown_table, write_results

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "generic_3d"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "planned_vs_fixed_cpu.json"
CALIBRATION_EPOCHS = 3

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
EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - medseg\.train - INFO - epoch (\d+)/(\d+) .*?"
                        r"([\d.]+) s\s*$")
VALIDATION_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - medseg\.train - INFO - validation (\d+)\s+"
                             r"val_mean_dice ([-\d.naN]+)")


def parse_args() -> argparse.Namespace:
    """Command-line arguments; ``--smoke`` replaces the sizes by tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for data, runs and predictions "
                        "(its dataset and run folders are replaced)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT}; with "
                        "--smoke WORK/planned_vs_fixed_smoke.json)")
    parser.add_argument("--datasets", nargs="+", choices=tuple(SPACINGS), default=list(SPACINGS))
    parser.add_argument("--budget", type=float, default=420.0, help="training wall-clock seconds of each arm on "
                        "each dataset (start-up, caching and validation included)")
    parser.add_argument("--gpu-memory", type=float, default=1.5, help="GiB the planned arm's patch and batch "
                        "size are planned for (low, so that the patch is CPU-sized)")
    parser.add_argument("--width-divisor", type=int, default=4, help="the planned arm's filters are the "
                        "plan's divided by this")
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--brats-shape", type=int, nargs=3, default=(96, 96, 64), help="1 mm generation grid")
    parser.add_argument("--ct-shape", type=int, nargs=3, default=(96, 96, 48), help="1 mm generation grid")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the training cases")
    parser.add_argument("--test-seed", type=int, default=1, help="seed of the held-out cases")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both arms")
    parser.add_argument("--val-interval", type=int, default=1, help="validation interval of both arms")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every subprocess")
    parser.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs per arm, no calibration "
                        "(about 2 minutes): checks the plumbing, the figures mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.train_cases, args.test_cases = 5, 2
        args.brats_shape, args.ct_shape = (48, 48, 32), (48, 48, 24)
    args.work = args.work.resolve()
    if args.out is None:
        args.out = args.work / "planned_vs_fixed_smoke.json" if args.smoke else DEFAULT_OUT
    return args


def subprocess_env(threads: int) -> dict[str, str]:
    """The environment of every CLI call: this one with the thread counts pinned."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def cpu_times() -> list[int]:
    """The machine's CPU jiffies from ``/proc/stat`` (user nice system idle iowait irq softirq steal), or []."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return []


#: Per CLI call: its log name, wall seconds and the machine's CPU shares meanwhile (niced: other processes
#: at a positive nice level, as this benchmark runs at 0; steal: taken by the hypervisor).
CALLS: list[dict[str, Any]] = []


def medseg(args: argparse.Namespace, cli: list[str], log: Path) -> float:
    """Run ``python -m medseg CLI...`` (stdout and stderr to ``log``); return its wall seconds; raise on failure."""
    command = [sys.executable, "-m", "medseg", *cli]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(command[1:]), flush=True)
    before = cpu_times()
    with log.open("w") as stream, Timer() as t:
        stream.write("$ " + " ".join(command) + "\n")
        stream.flush()
        rc = subprocess.run(command, check=False, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO,
                            env=subprocess_env(args.threads)).returncode
    after = cpu_times()
    call: dict[str, Any] = {"log": str(log.relative_to(args.work)), "wall_s": round(t.seconds, 2),
                            "loadavg_1min_end": os.getloadavg()[0]}
    if before and after and sum(after) > sum(before):
        delta = [b - a for a, b in zip(before, after)]
        call.update(busy_share=round(1 - (delta[3] + delta[4]) / sum(delta), 3),
                    niced_share=round(delta[1] / sum(delta), 3), steal_share=round(delta[7] / sum(delta), 4))
    CALLS.append(call)
    if rc:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"exit status {rc}: {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    return t.seconds


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


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_log(log: Path) -> dict[str, Any]:
    """Epoch and validation lines of a ``medseg train`` log: seconds, timestamps, val_mean_dice."""
    epochs, validations = {}, {}
    for line in log.read_text().splitlines():
        if m := EPOCH_LINE.match(line):
            epochs[int(m[2])] = {"at": _time(m[1]), "train_s": float(m[4])}
        elif m := VALIDATION_LINE.match(line):
            validations[int(m[2])] = {"at": _time(m[1]), "val_mean_dice": float(m[3])}
    if not epochs:
        raise RuntimeError(f"{log}: no epoch lines (the log format of medseg train changed?)")
    dices = [v["val_mean_dice"] for v in validations.values()]
    return {"epochs": epochs, "validations": validations, "epochs_run": max(epochs),
            "train_seconds_sum": sum(e["train_s"] for e in epochs.values()),
            "best_val_mean_dice": max(dices) if dices else None}


def epoch_rate(log: Path, wall: float) -> dict[str, Any]:
    """Seconds per epoch and fixed cost of one ``medseg train`` run, as on an undisturbed machine.

    The periods are the times between consecutive epoch-end lines (one epoch of training, its
    validation and the handlers). Other work on the host only slows epochs down, so the seconds
    per epoch are the fastest period (2 or 3 periods) or the 25th percentile (4 or more), and the
    fixed cost (start-up, caching, the first epoch's warm-up, the final writing) is the wall time
    less the periods measured and one undisturbed period.
    """
    parsed = parse_log(log)
    ends = [parsed["epochs"][i]["at"] for i in sorted(parsed["epochs"])]
    if len(ends) < 3:
        raise RuntimeError(f"{log}: measuring the speed needs 3 epochs or more")
    periods = np.diff(ends)
    period = float(np.quantile(periods, 0.25) if len(periods) >= 4 else periods.min())
    return {"log": log.name, "wall_s": wall, "epochs": len(ends), "seconds_per_epoch": period,
            "median_period_s": float(np.median(periods)), "slow_epochs": int((periods > 1.25 * period).sum()),
            "fixed_cost_s": max(0.0, wall - float(periods.sum()) - period)}


def epochs_for(budget: float, rates: list[dict[str, Any]]) -> dict[str, Any]:
    """The epochs that fill ``budget`` at the measured speed: the rate of the longest run, the smallest fixed cost."""
    longest = max(enumerate(rates), key=lambda item: (item[1]["epochs"], item[0]))[1]
    fixed = min(r["fixed_cost_s"] for r in rates)
    epochs = max(3, math.floor((budget - fixed) / longest["seconds_per_epoch"]))
    return {"max_epochs": epochs, "seconds_per_epoch": longest["seconds_per_epoch"], "fixed_cost_s": fixed,
            "expected_wall_s": fixed + epochs * longest["seconds_per_epoch"]}


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def score(pred_dir: Path, test_dir: Path, labels: dict[str, str]) -> dict[str, Any]:
    """Dice of each foreground class, masks of ``pred_dir`` against ``test_dir/labelsTr``, in each case's geometry.

    ``dice``: per case, then averaged over the cases, nnU-Net's way: a case where the class is
    absent from both truth and mask has no Dice (it is left out; a mask that has the class where
    the truth has none scores 0). ``dice_empty_as_1``: the BraTS way, such a case scores 1.
    ``pooled_dice``: the voxels of all held-out cases together. ``mean_dice``: the mean of ``dice``
    over the foreground classes (the headline).
    """
    classes = {int(v): name for name, v in labels.items() if int(v) != 0}
    names = list(classes.values())
    per_case, pooled = {}, defaultdict(lambda: [0, 0])
    for truth_path in sorted((test_dir / "labelsTr").glob("*.nii.gz")):
        case = truth_path.name[: -len(".nii.gz")]
        truth_img, pred_img = nib.load(truth_path), nib.load(pred_dir / truth_path.name)
        if truth_img.shape != pred_img.shape or not np.allclose(truth_img.affine, pred_img.affine, atol=1e-4):
            raise RuntimeError(f"{case}: the mask's geometry {pred_img.shape} differs from the label's "
                               f"{truth_img.shape} (or their affines differ)")
        truth, pred = np.asanyarray(truth_img.dataobj), np.asanyarray(pred_img.dataobj)
        row: dict[str, Any] = {"spacing": [round(float(z), 3) for z in truth_img.header.get_zooms()[:3]],
                               "shape": list(truth.shape)}
        for value, name in classes.items():
            t, p = truth == value, pred == value
            row[name] = dice(p, t) if (t.any() or p.any()) else None
            row[f"{name}_truth_voxels"] = int(t.sum())
            row[f"{name}_mask_voxels"] = int(p.sum())
            pooled[name][0] += 2 * int((t & p).sum())
            pooled[name][1] += int(t.sum()) + int(p.sum())
        row["mean"] = _mean([row[name] for name in names])
        per_case[case] = row
    if not per_case:
        raise RuntimeError(f"{test_dir}/labelsTr: no labels")
    rows = list(per_case.values())
    mean = {name: _mean([r[name] for r in rows]) for name in names}
    by_spacing = defaultdict(list)
    for r in rows:
        by_spacing["x".join(f"{z:g}" for z in r["spacing"])].append(r["mean"])
    return {"dice": mean, "mean_dice": _mean(list(mean.values())),
            "cases_scored": {name: sum(r[name] is not None for r in rows) for name in names},
            "dice_empty_as_1": {name: float(np.mean([1.0 if r[name] is None else r[name] for r in rows]))
                                for name in names},
            "pooled_dice": {n: (pooled[n][0] / pooled[n][1] if pooled[n][1] else None) for n in names},
            "mean_dice_by_spacing": {k: {"cases": len(v), "mean_dice": _mean(v)} for k, v in by_spacing.items()},
            "per_case": per_case}


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
              f"held-out {({k: _fmt(v, 4) for k, v in scores['dice'].items()})} mean {_fmt(scores['mean_dice'], 4)}, "
              f"infer {infer_s:.0f} s", flush=True)
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def arm_row(name: str, arm: str, r: dict[str, Any], plan: dict[str, Any]) -> list[Any]:
    """One markdown row."""
    s = r["settings"]
    if arm == "fixed":
        recipe = (f"native spacing, {'x'.join(map(str, s['roi_size']))} patch, batch {s['batch_size']}, "
                  f"SegResNet init {s['network']['kwargs']['init_filters']}, non-zero z-score")
    else:
        strides = " ".join("".join(map(str, st)) for st in plan["strides"])
        recipe = (f"{'x'.join(f'{z:g}' for z in s['pixdim'])} mm, {'x'.join(map(str, s['roi_size']))} patch, "
                  f"batch {s['batch_size']}, DynUNet {s['network']['kwargs']['filters']} strides {strides}, "
                  f"{'/'.join(sorted(set(plan['normalization'])))}")
    h = r["heldout"]
    per_class = ", ".join(f"{k} {_fmt(v)}" for k, v in h["dice"].items())
    return [name, arm, recipe, f"{s['parameters'] / 1e6:.2f}M", r["epochs"], f"{r['train_wall_s']:.0f}",
            _fmt(r["best_val_mean_dice"]), per_class, f"**{_fmt(h['mean_dice'])}**",
            ", ".join(f"{k} {_fmt(v)}" for k, v in h["pooled_dice"].items()), f"{r['infer_s']:.0f}"]


def main() -> None:
    """Run every dataset, write the JSON and the table."""
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    start = time.perf_counter()
    datasets = {name: run_dataset(args, name) for name in args.datasets}
    result = {
        "benchmark": "planned_vs_fixed", "smoke": args.smoke, "environment": env,
        "settings": {"budget_s": args.budget, "gpu_memory_gib": args.gpu_memory, "width_divisor": args.width_divisor,
                     "seed": args.seed, "val_interval": args.val_interval, "omp_num_threads": args.threads,
                     "cache_rate": 1.0, "amp": False, "num_workers": 0, "bundle": str(BUNDLE.relative_to(REPO)),
                     "heldout_dice": "per case and class, averaged over the cases where the class is in the "
                                     "truth or the mask (nnU-Net's way); mean_dice: over the foreground classes; "
                                     "dice_empty_as_1: BraTS's way; pooled_dice: all held-out voxels together"},
        "datasets": datasets,
        "calls": CALLS,
        "git_commit_at_end": environment()["git_commit"],  # others commit to this tree: did it change meanwhile?
        "wall_seconds": time.perf_counter() - start,
    }
    header = ["dataset", "arm", "recipe", "params", "epochs", "train s", "best val Dice", "held-out Dice",
              "held-out mean", "pooled Dice", "infer s"]
    rows = [arm_row(name, arm, r, d["plan"]) for name, d in datasets.items() for arm, r in d["arms"].items()]
    spacing_rows = [[name, arm, k, v["cases"], _fmt(v["mean_dice"])] for name, d in datasets.items()
                    for arm, r in d["arms"].items() for k, v in r["heldout"]["mean_dice_by_spacing"].items()]
    title = (f"{'SMOKE (plumbing only, figures mean nothing): ' if args.smoke else ''}training budget "
             f"{args.budget:.0f} s per arm and dataset, {args.train_cases} training / {args.test_cases} held-out "
             f"cases, seed {args.seed}, --gpu-memory {args.gpu_memory}, width / {args.width_divisor}, "
             f"{env['device']} ({env['cpu_model']}, OMP_NUM_THREADS={args.threads}), commit {env['git_commit']}, "
             f"wall {result['wall_seconds'] / 60:.0f} min")
    table = (title + "\n\n" + markdown_table(header, rows) + "\n\nHeld-out mean Dice by the spacing of the case:\n\n"
             + markdown_table(["dataset", "arm", "spacing (mm)", "cases", "mean Dice"], spacing_rows))
    write_results(args.out, result, table)


if __name__ == "__main__":
    main()
