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

This file holds the arguments and the run; part A is ``precision_accuracy_seeds.py``, part B
``precision_accuracy_recipes.py`` (the two recipes) and ``precision_accuracy_time_to_dice.py``
(the shared loop and validation), the markdown tables ``precision_accuracy_report.py``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from common import Timer, environment, write_brats_cases, write_results
from precision_accuracy_report import tables
from precision_accuracy_seeds import part_a
from precision_accuracy_time_to_dice import part_b


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
