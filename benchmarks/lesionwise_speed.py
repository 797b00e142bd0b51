"""How long the BraTS lesion-wise evaluation takes on one full-size case with many lesions.

A 240 x 240 x 155 label map (BraTS 2023+ values, 1 mm) holds ``--lesions`` separate tumours,
each with oedema (2), a core (1) and an enhancing part (3), so WT, TC and ET each have that
many reference lesions. The prediction grows some tumours by a voxel, shrinks others, misses
a few and adds small false-positive islands. Three timings, each the best and the median of
``--repeats`` runs:

* ``brats2023_case``: medseg's 2023 rules on the arrays (the per-lesion loop and both HD95s);
* ``legacy_scores``: the part of it that is the three whole-region Dice and HD95 (the same
  work as ``--task brats``), so that the per-lesion loop is the difference;
* ``evaluate --rules brats2023``: the whole command on NIfTI files (reading, scoring, CSVs,
  JSON, box plot, scatter);
* ``evaluate --rules brats2025`` (with ``--official``): the official ``brats-evaluation``
  package on the same files, for comparison.

A benchmark, not a test: nothing here asserts a time. Run it on an idle core::

    OMP_NUM_THREADS=1 python benchmarks/lesionwise_speed.py --out benchmarks/results/lesionwise_speed_cpu.json --official
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from common import environment, markdown_table, write_results
from scipy import ndimage

from medseg.data.conventions import BRATS2023
from medseg.data.synth.writers import save_nifti
from medseg.evaluation import evaluate
from medseg.evaluation.lesionwise import LESIONWISE_REGIONS, brats2023_case, legacy_scores

SHAPE = (240, 240, 155)


def make_case(lesions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A truth label map with ``lesions`` separate tumours and a perturbed prediction of it."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, np.uint8)
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centres: list[np.ndarray] = []
    while len(centres) < lesions:
        centre = rng.uniform(15, np.array(SHAPE) - 15)
        if all(np.linalg.norm(centre - c) > 28 for c in centres):  # far enough apart not to merge
            centres.append(centre)
    for centre in centres:
        radius = rng.uniform(4.0, 10.0)
        distance = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, rng.uniform(0.8, 1.2, 3))))
        truth[distance < radius] = 2
        truth[distance < 0.6 * radius] = 3
        truth[distance < 0.35 * radius] = 1
    labels, n = ndimage.label(truth > 0)
    pred = truth.copy()
    for k in range(1, n + 1):
        what = rng.integers(4)
        if what == 0:    # grown by a voxel
            pred[ndimage.binary_dilation(labels == k) & (pred == 0)] = 2
        elif what == 1:  # the enhancing part called core
            pred[(labels == k) & (pred == 3)] = 1
        elif what == 2 and k % 5 == 0:  # missed
            pred[labels == k] = 0
    for _ in range(lesions // 3):  # false-positive islands
        x, y, z = (int(rng.integers(2, n - 4)) for n in SHAPE)
        if not truth[x - 2:x + 4, y - 2:y + 4, z - 2:z + 4].any():
            pred[x:x + 2, y:y + 2, z:z + 2] = 3
    return truth, pred


def timed(run: Callable[[], object], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": repeats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results JSON (a .md table goes beside it)")
    parser.add_argument("--lesions", type=int, default=30, help="separate tumours in the case (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official", action="store_true", help="also time --rules brats2025 (brats-evaluation)")
    args = parser.parse_args()

    machine = environment()  # before the timings: its load average is the one they ran under
    truth, pred = make_case(args.lesions, args.seed)
    spacing = (1.0, 1.0, 1.0)
    brats2023_case(pred[:40, :40, :40], truth[:40, :40, :40], BRATS2023, spacing)  # imports, area tables
    scores = brats2023_case(pred, truth, BRATS2023, spacing)
    counts = {region: {"reference_lesions": len(s.lesions), "tp": s.tp, "fn": s.fn, "fp": s.fp,
                       "lesionwise_dice": s.lesionwise_dice} for region, s in scores.items()}
    masks = [(np.isin(pred, BRATS2023.regions[r]), np.isin(truth, BRATS2023.regions[r])) for r in LESIONWISE_REGIONS]
    timings = {
        "brats2023_case (arrays)": timed(lambda: brats2023_case(pred, truth, BRATS2023, spacing), args.repeats),
        "of which legacy_scores (3 whole regions)": timed(lambda: [legacy_scores(p, t, spacing) for p, t in masks],
                                                          args.repeats),
    }
    with tempfile.TemporaryDirectory(prefix="medseg-lesionwise-bench-") as tmp:
        root = Path(tmp)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        save_nifti(truth, affine, root / "truth" / "BraTS-GLI-00000-000-seg.nii.gz")
        save_nifti(pred, affine, root / "pred" / "BraTS-GLI-00000-000.nii.gz")
        rules = ["brats2023", "brats2025"] if args.official else ["brats2023"]
        for name in rules:
            out = root / f"{name}.csv"
            timings[f"evaluate --rules {name} (files, reports)"] = timed(
                lambda name=name, out=out: evaluate(root / "pred", root / "truth", "brats-lesionwise", out,
                                                    rules=name, convention="brats2024"), args.repeats)
    versions = {name: _version(name) for name in ("scipy", "brats-evaluation", "panoptica", "connected-components-3d")}
    result = {"benchmark": "lesionwise_speed", "shape": list(SHAPE), "lesions": args.lesions, "seed": args.seed,
              "regions": counts, "timings": timings, "environment": {**machine, **versions}}
    table = markdown_table(["what", "best (s)", "median (s)", "runs"],
                           [[k, f"{v['best_s']:.2f}", f"{v['median_s']:.2f}", v["runs"]] for k, v in timings.items()])
    write_results(args.out, result, table)
    return 0


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
