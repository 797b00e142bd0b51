"""Equal accuracy of the new training precision, and time to a held-out WT Dice of 0.8 against the stock recipe.

Issue #19, item 3. On CUDA, ``bundles/brats_attention_unet3d`` now trains in fp32 (no autocast;
TF32 convolutions) instead of bf16 autocast (``medseg.engine.fastpath.CUDA_PRECISION``), because
its step is faster so. This benchmark shows what that does to accuracy, and how long medseg's
recipe takes to a usable model against the stock model-zoo recipe. Nothing is asserted: the
script measures and reports. In ``--work``:

**Data.** ``common.write_brats_cases``: ``--cases`` synthetic skull-stripped BraTS 2021 cases of
``--shape`` with seed 0 (training) and ``--heldout`` cases with seed 1 (held out; never seen in
training or model selection of either part).

**Part A: equal accuracy, old against new defaults, over ``--seeds``.** Each run is the real CLI
in a fresh process (this process's environment, ``OMP_NUM_THREADS`` included; ``--no-tracking``)::

    python -m medseg train bundles/brats_attention_unet3d --data TRAIN --output OUT --no-tracking \\
        --set seed=S --set precision=P --set max_epochs=E --set roi_size=[CROP] \\
        --set num_workers=W [--train-set ...]

with ``P = bf16`` (*old*: the bf16 autocast the bundle used on CUDA before) and ``P = auto``
(*new*: the default, fp32 on CUDA). Everything else is the bundle's default recipe (AdamW 3e-4,
warm-up and cosine schedule, nnU-Net augmentation, Dice+focal loss, validation every epoch on
the datalist's fold 0, the best model kept). The arms alternate within each seed, so a change of
the machine's speed hits both. Then ``medseg infer OUT --input HELDOUT`` (the same inference
settings for both arms: inference precision is not what is compared) and ``medseg evaluate
--task brats`` score the held-out masks: Dice of WT, TC and ET per case (1 when a region is in
neither mask nor truth), the mean over cases, and the mean of the three regions (the headline).
Per arm: mean, sample standard deviation and min-max over the seeds, per region and overall, and
each run's training wall time (the whole ``medseg train`` process). On the CPU both arms train
in fp32 (the CPU never autocasts), so a CPU run only checks the plumbing.

**Verdict rule** (in the JSON as ``verdict.rule``): the new defaults are *within the old arm's
seed spread* when ``new mean >= old mean - max(old std, (old max - old min) / 2)``, for the
held-out mean Dice over the three regions (and reported per region the same way); otherwise
*worse beyond the seed spread*.

**Part B: time to a held-out WT Dice of ``--threshold`` (0.8), medseg against the stock recipe.**
Both arms train the same network (the model zoo's SegResNet, ``common.SEGRESNET_KWARGS``) on all
``--cases`` training cases with the same patch size ``--crop``, batch 1 and seed (the first of
``--seeds``), in this process, in one loop that differs only in the pieces each recipe brings:

* *stock*: the model-zoo ``brats_mri_segmentation`` recipe as ``training_vs_stock.py`` renders it:
  ``training_vs_stock.stock_transforms`` (load, RAS, 1 mm, random crop, flips, non-zero z-score,
  intensity scale/shift) in a plain ``Dataset`` read again at every step, a MONAI ``DataLoader``
  with ``--workers`` workers (not persistent, shuffled), Adam (lr 1e-4, weight decay 1e-5),
  ``DiceLoss(sigmoid, squared_pred, smooth_nr=0, smooth_dr=1e-5)``, float16 autocast with a
  GradScaler on CUDA (the zoo's ``amp: true``; fp32 on the CPU), CosineAnnealingLR(T_max=300)
  stepped per epoch.
* *medseg*: the pieces of ``bundles/brats_segresnet/configs/train.json`` for this device, taken
  from MONAI's ``ConfigParser`` over that file (ids ``dataset_dir=TRAIN``, ``roi_size=CROP``,
  ``num_workers=--workers``, ``tracking_enabled=false``, and ``train#dataset#data`` = every
  labelled case instead of fold 0's training share): its ``network``, ``optimizer`` (Adam 1e-4,
  fused on CUDA), ``loss``, ``lr_scheduler`` (stepped per epoch), ``train#dataloader``
  (``CacheDataset`` of ``medseg.transforms.train_transforms`` and, on CUDA,
  ``fastpath.training_loader``'s thread loader with the augmentation on the GPU), and the
  trainer's ``amp``, ``amp_kwargs`` and ``to_kwargs`` (bf16 autocast on a bf16 GPU; MONAI's
  ``SupervisedTrainer`` then also scales the loss with a GradScaler, kept here). The bundle's
  handlers (checkpoints, its own validation, logging) are not run.

The step is MONAI ``SupervisedTrainer``'s (zero grad, forward and loss under autocast when on,
scaled backward, optimizer and scaler step), and both read the loss back at every step (the zoo's
``StatsHandler``; medseg's ``NaNGuardHandler``). Every ``--val-every`` steps, and when the time
cap is hit, one shared routine scores the current network on the held-out cases: each held-out
case preprocessed once for both arms (load, RAS, non-zero channel-wise z-score, on the device),
MONAI's ``SlidingWindowInferer`` (window ``--crop``, overlap 0.5, gaussian, 4 windows a batch,
fp32, eval mode), sigmoid > 0.5 of each recipe's WT output channel (``output_names`` of the
bundle; TC, WT, ET for the zoo) against the label's WT (labels 1, 2, 4), Dice per case, then the
mean. The clock runs from the first step of training, includes the data set-up (medseg's cache
build; the stock ``Dataset`` is free to build), data waits and epoch changes (worker start-up),
and stops during validation; the result is the clock at the first validation at or above the
threshold (resolution: ``--val-every`` steps), or *not reached* within ``--max-seconds``.
While validation runs, the stock loader's workers keep preparing batches (up to 2 per worker)
and medseg's thread loader up to 2: a small advantage for stock that is not corrected. One
seed only: read the times as a ratio of order of magnitude, not a precise figure.

The JSON holds the environment, the settings, every run's command, wall time, held-out Dice per
region and per case (part A), the per-arm statistics and verdict, and part B's validation curve
(steps, clock, WT Dice) per arm; the markdown tables are written beside it. The JSON is written
after part A and again after part B, so a run stopped in part B keeps part A.

GPU (an estimate, never run yet: about 20-25 minutes on one H200 with the defaults: 6 training runs
of 650 steps, about a minute each plus start-up, inference and evaluation in fresh processes, about
10-12 minutes in all; then part B, at most 2 x 240 s on the clock plus the validations, less when
both arms reach the threshold; ``--skip-a``/``--skip-b`` split it across two sessions)::

    python benchmarks/precision_accuracy.py --work /tmp/precision_accuracy \\
        --out benchmarks/results/precision_accuracy_gpu.json

CPU smoke (plumbing only, figures mean nothing; a few minutes on 2 cores; both part A arms train
fp32 on the CPU and part B's threshold is not reached)::

    OMP_NUM_THREADS=1 python benchmarks/precision_accuracy.py --smoke --work /tmp/pa \\
        --out /tmp/pa/precision_accuracy_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    SEGRESNET_KWARGS,
    Timer,
    environment,
    markdown_table,
    read_brats_evaluation,
    run_medseg,
    write_brats_cases,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
BUNDLE_A = REPO / "bundles" / "brats_attention_unet3d"
BUNDLE_B = REPO / "bundles" / "brats_segresnet"
REGIONS = ("WT", "TC", "ET")
#: Part A's arms: name -> the bundle's ``precision`` id.
ARMS = {"old (precision=bf16)": "bf16", "new (precision=auto)": "auto"}
VERDICT_RULE = "new mean >= old mean - max(old std, (old max - old min) / 2)"
MODALITIES = ("t1", "t1ce", "t2", "flair")


# --------------------------------------------------------------------------------------------- arguments


def parse_args() -> argparse.Namespace:
    """Command-line arguments; ``--smoke`` replaces the sizes by tiny ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="scratch folder (its data is kept between runs; its a, b and logs folders are replaced)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (the .md is written beside it; default WORK/precision_accuracy.json)")
    parser.add_argument("--cases", type=int, default=16, help="training cases (seed 0)")
    parser.add_argument("--heldout", type=int, default=6, help="held-out cases (seed 1)")
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 96), help="synthetic case size X Y Z")
    parser.add_argument("--crop", type=int, nargs=3, default=(112, 112, 80),
                        help="training patch (roi_size) and validation window of both parts; multiples of 16 "
                        "(default: the zoo's 224x224x144 on 240x240x155, scaled to the default shape)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of part A")
    parser.add_argument("--epochs", type=int, default=50, help="max_epochs of every part A run")
    parser.add_argument("--train-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra --set values of every part A run")
    parser.add_argument("--workers", type=int, default=4,
                        help="loader workers (part A: the bundle's num_workers; part B: both arms)")
    parser.add_argument("--threshold", type=float, default=0.8, help="part B: held-out WT Dice to reach")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="part B: training clock cap per arm")
    parser.add_argument("--val-every", type=int, default=32, help="part B: training steps between validations")
    parser.add_argument("--skip-a", action="store_true", help="run part B only")
    parser.add_argument("--skip-b", action="store_true", help="run part A only")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny data and runs (a few minutes on a CPU): checks the plumbing, the figures mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.cases, args.heldout, args.shape, args.crop = 3, 2, (48, 48, 32), (32, 32, 32)
        args.epochs, args.workers, args.max_seconds, args.val_every = 2, 0, 20.0, 3
    if any(c % 16 for c in args.crop):
        parser.error(f"--crop {args.crop}: every size must be a multiple of 16 (four poolings)")
    args.work = args.work.resolve()
    if args.out is None:
        args.out = args.work / ("precision_accuracy_smoke.json" if args.smoke else "precision_accuracy.json")
    return args


# --------------------------------------------------------------------------------------------- part A


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


# --------------------------------------------------------------------------------------------- part B


@dataclass
class Recipe:
    """What one part B arm brings to the shared training loop."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loader: Iterable[dict[str, Any]]
    autocast: torch.dtype | None  # None: fp32
    scaler: bool  # a GradScaler scales the loss
    scheduler: Any  # stepped once per epoch
    wt_index: int  # the WT channel of the network's output
    setup_s: float  # data set-up (cache build), counted on the clock
    to_kwargs: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)


def case_items(folder: Path) -> list[dict[str, Any]]:
    """Image (4 modalities, BraTS order) and label files of the BraTS 2021 case folders in ``folder``."""
    return [{"image": [str(c / f"{c.name}_{m}.nii.gz") for m in MODALITIES], "label": str(c / f"{c.name}_seg.nii.gz")}
            for c in sorted(p for p in folder.iterdir() if p.is_dir())]


def heldout_volumes(heldout: Path, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out cases as both arms' validation sees them: ``(image [1,4,X,Y,Z], WT mask [X,Y,Z])`` on ``device``.

    Load, channel first, RAS, non-zero channel-wise z-score: the normalisation both recipes
    train with; no resampling (the cases are 1 mm, as BraTS).
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd
    from monai.utils import convert_to_tensor

    transform = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                         Orientationd(keys=["image", "label"], axcodes="RAS"),
                         NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    out = []
    for item in case_items(heldout):
        data = transform(item)
        image = convert_to_tensor(data["image"], dtype=torch.float32, track_meta=False).unsqueeze(0).to(device)
        out.append((image, (convert_to_tensor(data["label"], track_meta=False)[0] > 0).to(device)))
    return out


def validate(recipe: Recipe, cases: list[tuple[torch.Tensor, torch.Tensor]], crop: tuple[int, ...]) -> float:
    """Mean held-out WT Dice of the recipe's network now (sliding window, fp32, sigmoid > 0.5)."""
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=crop, sw_batch_size=4, overlap=0.5, mode="gaussian")
    recipe.network.eval()
    dices = []
    with torch.no_grad():
        for image, truth in cases:
            logits = inferer(image, recipe.network)
            pred = logits[0, recipe.wt_index] > 0  # sigmoid(x) > 0.5
            total = int(pred.sum()) + int(truth.sum())
            dices.append(1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total)
    recipe.network.train()
    return float(np.mean(dices))


def stock_recipe(args: argparse.Namespace, train: Path, device: torch.device) -> Recipe:
    """The model-zoo brats_mri_segmentation recipe (see the module docstring)."""
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceLoss
    from monai.networks.nets import SegResNet
    from training_vs_stock import stock_transforms

    network = SegResNet(**SEGRESNET_KWARGS).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, weight_decay=1e-5)
    cuda = device.type == "cuda"
    with Timer() as t:
        loader = DataLoader(Dataset(case_items(train), stock_transforms(tuple(args.crop))), batch_size=1,
                            shuffle=True, num_workers=args.workers)
    return Recipe(
        network=network, optimizer=optimizer,
        loss=DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True),
        loader=loader, autocast=torch.float16 if cuda else None, scaler=cuda,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=300), wt_index=1, setup_s=t.seconds,
        description={"network": "monai SegResNet (common.SEGRESNET_KWARGS)", "optimizer": "Adam lr 1e-4 wd 1e-5",
                     "loss": "DiceLoss(sigmoid, squared_pred)", "autocast": "float16" if cuda else "none (fp32)",
                     "grad_scaler": cuda, "loader": f"Dataset + DataLoader({args.workers} workers)",
                     "scheduler": "CosineAnnealingLR(T_max=300) per epoch", "output_order": ["TC", "WT", "ET"]},
    )


def medseg_recipe(args: argparse.Namespace, train: Path, device: torch.device) -> Recipe:
    """The pieces of ``bundles/brats_segresnet/configs/train.json`` on this device (see the module docstring)."""
    from monai.bundle import ConfigParser

    out = args.work / "b" / "medseg_config_output"  # prepare_datalist writes datalist.json here
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_B / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE_B), "dataset_dir": str(train), "output_dir": str(out),
                   "tracking_enabled": False, "roi_size": list(args.crop), "num_workers": args.workers,
                   "seed": args.seeds[0], "train#dataset#data": "$@datalist['training']"})
    parser.parse()
    if torch.device(parser.get_parsed_content("device")).type != device.type:
        raise RuntimeError(f"the bundle trains on {parser.get_parsed_content('device')}, this benchmark on {device}")
    network = parser.get_parsed_content("network")
    with Timer() as t:
        loader = parser.get_parsed_content("train#dataloader")  # builds the CacheDataset
    amp = bool(parser.get_parsed_content("train#trainer#amp"))
    dtype = parser.get_parsed_content("train#trainer#amp_kwargs")["dtype"] if amp else None
    names = list(parser.get_parsed_content("output_names"))
    return Recipe(
        network=network.train(), optimizer=parser.get_parsed_content("optimizer"), loss=parser.get_parsed_content("loss"),
        loader=loader, autocast=dtype, scaler=amp, scheduler=parser.get_parsed_content("lr_scheduler"),
        wt_index=names.index("WT"), setup_s=t.seconds, to_kwargs=parser.get_parsed_content("train#trainer#to_kwargs"),
        description={"config": str((BUNDLE_B / "configs" / "train.json").relative_to(REPO)),
                     "network": parser.get_parsed_content("network_spec"),
                     "optimizer": type(parser.get_parsed_content("optimizer")).__name__,
                     "loss": parser.get_parsed_content("loss_spec"),
                     "autocast": str(dtype).removeprefix("torch.") if dtype is not None else "none (fp32)",
                     "grad_scaler": amp, "loader": type(loader).__name__,
                     "device_augment": bool(parser.get_parsed_content("device_augment")),
                     "cache_build_s": t.seconds, "output_order": names},
    )


def step(recipe: Recipe, batch: dict[str, Any], device: torch.device, scaler: torch.amp.GradScaler) -> float:
    """One training step as MONAI's ``SupervisedTrainer`` takes it; the loss is read back (a host sync)."""
    import contextlib

    image = batch["image"].to(device, **recipe.to_kwargs)
    label = batch["label"].to(device, **recipe.to_kwargs)
    recipe.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device.type, dtype=recipe.autocast) if recipe.autocast is not None
                else contextlib.nullcontext())
    with autocast:
        loss = recipe.loss(recipe.network(image), label).mean()
    scaler.scale(loss).backward()
    scaler.step(recipe.optimizer)
    scaler.update()
    return float(loss.detach())


def time_to_threshold(args: argparse.Namespace, recipe: Recipe, cases: list[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device) -> dict[str, Any]:
    """Train until the held-out WT Dice reaches ``--threshold`` or the clock reaches ``--max-seconds``."""
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.scaler)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    curve: list[dict[str, float]] = []
    steps, epochs, paused, reached, loss = 0, 0, 0.0, None, float("nan")
    start = time.perf_counter()

    def clock() -> float:
        return recipe.setup_s + time.perf_counter() - start - paused

    done = False
    while not done:
        for batch in recipe.loader:
            loss = step(recipe, batch, device, scaler)
            steps += 1
            if steps % args.val_every and clock() < args.max_seconds:
                continue
            sync()
            at, began = clock(), time.perf_counter()
            dice = validate(recipe, cases, tuple(args.crop))
            paused += time.perf_counter() - began
            curve.append({"step": steps, "epoch": epochs, "clock_s": at, "wt_dice": dice, "loss": loss,
                          "validation_s": time.perf_counter() - began})
            print(f"  step {steps} (epoch {epochs}) clock {at:.1f} s: held-out WT Dice {dice:.4f}, loss {loss:.4f}",
                  flush=True)
            if dice >= args.threshold:
                reached = at
            if reached is not None or at >= args.max_seconds:
                done = True
                break
        else:
            epochs += 1
            recipe.scheduler.step()
    return {"reached": reached is not None, "seconds_to_threshold": reached, "steps": steps,
            "epochs_completed": epochs, "clock_at_end_s": curve[-1]["clock_s"] if curve else clock(),
            "best_wt_dice": max((c["wt_dice"] for c in curve), default=None),
            "final_wt_dice": curve[-1]["wt_dice"] if curve else None, "setup_s": recipe.setup_s,
            "validation_s_total": paused, "curve": curve, "recipe": recipe.description}


def warm_up(device: torch.device, crop: tuple[int, ...]) -> None:
    """One untimed forward and backward of a throwaway SegResNet, so neither arm pays the first kernels' loading."""
    from monai.networks.nets import SegResNet

    network = SegResNet(**SEGRESNET_KWARGS).to(device)
    network(torch.randn(1, 4, *crop, device=device)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def part_b(args: argparse.Namespace, train: Path, heldout: Path) -> dict[str, Any]:
    """Both recipes, medseg first, each from the same seed; time to the held-out WT Dice threshold."""
    from medseg.engine.determinism import seed_everything

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = heldout_volumes(heldout, device)
    warm_up(device, tuple(args.crop))
    arms: dict[str, Any] = {}
    for name, build in (("medseg", medseg_recipe), ("stock", stock_recipe)):
        seed_everything(args.seeds[0], deterministic=False)  # the bundles' default: fast kernels allowed
        print(f"part B: {name}", flush=True)
        recipe = build(args, train, device)
        arms[name] = time_to_threshold(args, recipe, cases, device)
        del recipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratio = None
    if arms["medseg"]["reached"] and arms["stock"]["reached"]:
        ratio = arms["stock"]["seconds_to_threshold"] / arms["medseg"]["seconds_to_threshold"]
    return {"device": str(device), "threshold": args.threshold, "max_seconds": args.max_seconds,
            "val_every": args.val_every, "seed": args.seeds[0], "arms": arms, "stock_over_medseg": ratio}


# --------------------------------------------------------------------------------------------- tables


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _spread_cell(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def tables(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The markdown: part A's summary and runs, part B's arms."""
    env, s = result["environment"], result["settings"]
    parts = [(f"{'SMOKE (plumbing only, figures mean nothing): ' if args.smoke else ''}issue #19 item 3 on "
              f"{env['device']} ({env['cpu_model']}), commit {env['git_commit']}, torch {env['torch']}, MONAI "
              f"{env['monai']}; {s['cases']} training and {s['heldout']} held-out synthetic BraTS cases of "
              f"{'x'.join(map(str, s['shape']))}, patch {'x'.join(map(str, s['crop']))}; wall "
              f"{result['wall_seconds'] / 60:.1f} min.")]
    a = result.get("part_a")
    if a:
        parts.append(f"**Part A** ({a['bundle']}, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}): "
                     "held-out Dice, mean ± sample std (min-max) over the seeds; verdict rule: "
                     f"{VERDICT_RULE} -> **{a['verdict']['overall']}**.")
        rows = [[arm, ", ".join(sorted({r["trains_in"] for r in a["runs"] if r["arm"] == arm})),
                 *(_spread_cell(st[k]) for k in ("mean", *REGIONS)), f"{st['train_s']['mean']:.0f}"]
                for arm, st in a["stats"].items()]
        parts.append(markdown_table(["arm", "trains in", "mean Dice", "WT", "TC", "ET", "train s (mean)"], rows))
        v = a["verdict"]
        parts.append(markdown_table(["", "new - old", "allowed drop", "within spread"],
                                    [[k, f"{v[k]['new_minus_old']:+.3f}", f"{v[k]['allowed_drop']:.3f}",
                                      "yes" if v[k]["within"] else "no"] for k in ("mean", *REGIONS)]))
        parts.append(markdown_table(["arm", "seed", "mean Dice", "WT", "TC", "ET", "best val (fold 0)", "train s",
                                     "infer s"],
                                    [[r["arm"], r["seed"], _f(r["mean_dice"]), *(_f(r["dice"][k]) for k in REGIONS),
                                      _f(r["best_val_metric"]), f"{r['train_s']:.0f}", f"{r['infer_s']:.0f}"]
                                     for r in a["runs"]]))
    b = result.get("part_b")
    if b:
        ratio = b["stock_over_medseg"]
        parts.append(f"**Part B**: training clock (data set-up included, validation excluded) to a held-out WT Dice "
                     f">= {b['threshold']} (SegResNet in both, seed {b['seed']}, validation every {b['val_every']} "
                     f"steps, cap {b['max_seconds']:.0f} s); stock / medseg: "
                     f"{'n/a (not reached by both)' if ratio is None else f'{ratio:.2f}x'}.")
        rows = [[name, m["recipe"]["autocast"], m["recipe"]["loader"],
                 f"{m['seconds_to_threshold']:.1f}" if m["reached"] else f"not reached in {m['clock_at_end_s']:.0f} s",
                 m["steps"], m["epochs_completed"], _f(m["best_wt_dice"]), f"{m['setup_s']:.1f}"]
                for name, m in b["arms"].items()]
        parts.append(markdown_table(["recipe", "autocast", "loader", "s to threshold", "steps", "epochs",
                                     "best WT Dice", "data set-up s"], rows))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    """Data, part A, part B; the JSON and tables after each part."""
    args = parse_args()
    for folder in ("a", "b", "logs"):
        shutil.rmtree(args.work / folder, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    env = environment()
    begin = time.perf_counter()
    train, heldout = args.work / "data" / "train", args.work / "data" / "heldout"
    with Timer() as t:
        write_brats_cases(train, args.cases, args.shape, seed=0)
        write_brats_cases(heldout, args.heldout, args.shape, seed=1)
    settings = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in vars(args).items()}
    result: dict[str, Any] = {"benchmark": "precision_accuracy", "issue": "#19 item 3", "settings": settings,
                              "environment": env, "data_s": t.seconds}

    def save() -> None:
        result["wall_seconds"] = time.perf_counter() - begin
        write_results(args.out, result, tables(args, result))

    if not args.skip_a:
        result["part_a"] = part_a(args, train, heldout)
        save()
    if not args.skip_b:
        result["part_b"] = part_b(args, train, heldout)
    save()


if __name__ == "__main__":
    main()
