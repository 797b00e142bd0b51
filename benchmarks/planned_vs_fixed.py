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

This file holds the arguments and the results JSON; beside it, ``planned_vs_fixed_dataset.py``
runs both arms on one dataset from ``planned_vs_fixed_setup.py`` (data, plan, train commands),
``planned_vs_fixed_calibration.py`` (epochs for the budget), ``planned_vs_fixed_scoring.py``
(held-out Dice) and ``planned_vs_fixed_cli.py`` (the CLI calls and their CPU shares);
``planned_vs_fixed_report.py`` writes the markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import environment, write_results
from planned_vs_fixed_cli import CALLS, REPO
from planned_vs_fixed_dataset import run_dataset
from planned_vs_fixed_report import tables
from planned_vs_fixed_setup import BUNDLE, SPACINGS

DEFAULT_OUT = REPO / "benchmarks" / "results" / "planned_vs_fixed_cpu.json"


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
    write_results(args.out, result, tables(args, result))


if __name__ == "__main__":
    main()
