"""Folder inference end to end, ``.nii.gz`` in to segmentation ``.nii.gz`` out: medseg vs stock MONAI.

In one run, on the same machine, cases and weights:

* **I/O floor**: only read every input with nibabel (as MONAI's ``LoadImaged`` does) and
  write a uint8 mask of the same shape with nibabel, no network, no transforms;
* **medseg**: ``medseg infer BUNDLE --input DATA --output OUT`` (a subprocess: start-up
  included);
* **stock MONAI**: ``python -m monai.bundle run`` of
  ``benchmarks/stock/brats_mri_segmentation_inference.json`` (the model-zoo
  brats_mri_segmentation inference config: SegResNet, window 240x240x160, sw batch 1,
  overlap 0.5) with the same weights as a plain ``state_dict``.

The two pipelines run in turn (``--order`` alternates which goes first on each repeat), so
machine load affects both alike; the load average is recorded before and after. Then the
Dice of each BraTS region (TC, WT, ET) is computed between medseg's and the stock masks, and
of each against the truth. ``--cases 1`` is the single-case benchmark.

Run from the repository root (weights from ``benchmarks/reference_weights.py``)::

    python benchmarks/inference_vs_stock.py --data DATA --weights WEIGHTS --cases 4 \\
        --out benchmarks/results/inference_folder_cpu.json
    python benchmarks/inference_vs_stock.py --data DATA --weights WEIGHTS --cases 1 \\
        --out benchmarks/results/inference_single_cpu.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from common import (
    Timer,
    case_arguments,
    environment,
    markdown_table,
    medseg_command,
    region_dice,
    write_brats_cases,
    write_results,
)

from medseg.utils.fastgzip import use_zlib_gzip

ROOT = Path(__file__).resolve().parents[1]
STOCK_CONFIG = ROOT / "benchmarks" / "stock" / "brats_mri_segmentation_inference.json"
MODALITIES = ("t1", "t1ce", "t2", "flair")


def io_floor(cases: list[Path], out: Path) -> float:
    """Seconds to read every case's modalities and write one uint8 mask per case, with nibabel only."""
    out.mkdir(parents=True, exist_ok=True)
    use_zlib_gzip()  # nibabel as it comes, in a process where medseg may have installed its fast decoder
    with Timer() as timer:
        for case in cases:
            arrays = [
                np.asanyarray(nib.load(str(case / f"{case.name}_{m}.nii.gz")).dataobj) for m in MODALITIES
            ]
            ref = nib.load(str(case / f"{case.name}_t1.nii.gz"))
            mask = (arrays[3] > np.percentile(arrays[3], 99)).astype(np.uint8)  # data of a mask's entropy
            nib.save(nib.Nifti1Image(mask, ref.affine), str(out / f"{case.name}.nii.gz"))
    return timer.seconds


def run_timed(command: list[str], log: Path) -> float:
    """Run ``command`` (stdout and stderr to ``log``); return its wall-clock seconds; raise if it fails."""
    with Timer() as timer, log.open("w") as handle:
        done = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ), check=False
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{log.read_text()[-2000:]}"
        )
    return timer.seconds


def stock_command(data: Path, out: Path, weights: Path, roi: tuple[int, ...] | None = None) -> list[str]:
    """The ``python -m monai.bundle run`` command line of the stock config (``roi``: override its window)."""
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(STOCK_CONFIG),
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--ckpt_path",
        str(weights),
    ]
    return command + (["--inferer#roi_size", str(list(roi))] if roi else [])


def compare_case(case: Path, medseg_out: Path, stock_out: Path) -> dict:
    """One case: region Dice medseg vs stock, and each vs the truth."""
    mine = np.asanyarray(nib.load(str(medseg_out / f"{case.name}.nii.gz")).dataobj)
    stock = np.asanyarray(nib.load(str(stock_out / f"{case.name}_t1_seg.nii.gz")).dataobj)
    truth = np.asanyarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj)
    if mine.shape != truth.shape or stock.shape != truth.shape:
        raise RuntimeError(f"{case.name}: shapes medseg {mine.shape}, stock {stock.shape}, truth {truth.shape}")
    return {
        "case": case.name,
        "voxels_differing": int((mine != stock).sum()),
        "dice_medseg_vs_stock": region_dice(mine, stock),
        "dice_medseg_vs_truth": region_dice(mine, truth),
        "dice_stock_vs_truth": region_dice(stock, truth),
    }


def compare(cases: list[Path], medseg_out: Path, stock_out: Path, workers: int = 1) -> list[dict]:
    """Per case, in case order: :func:`compare_case`; ``workers`` > 1 runs them in threads (decoding and
    numpy release the GIL; threads, unlike a forked pool, are safe in a process that started CUDA)."""
    workers = min(len(cases), workers)
    if workers <= 1:
        return [compare_case(case, medseg_out, stock_out) for case in cases]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compare_case, cases, [medseg_out] * len(cases), [stock_out] * len(cases)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument(
        "--cases", type=int, default=20, help="cases to segment (default 20; fewer on the CPU)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each pipeline")
    parser.add_argument("--roi", type=int, nargs=3, help="window for both pipelines (default: 240 240 160)")
    parser.add_argument(
        "--device", default="auto", help="medseg's --device (the stock config picks CUDA if any)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="results JSON (a .md table is written beside it)"
    )
    parser.add_argument("--note", default="", help="recorded in the JSON, e.g. why fewer cases")
    args = parser.parse_args()
    env = environment()
    folders = write_brats_cases(args.data, max(args.cases, 1), args.shape)[: args.cases]
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"  # exactly --cases cases, labels included (both pipelines skip them)
        data.mkdir()
        for folder in folders:
            (data / folder.name).symlink_to(folder.resolve())
        cases = sorted(data.iterdir())
        bundle, weights = args.weights / "bundle", args.weights / "segresnet_state_dict.pt"
        timings: dict[str, list[float]] = {"io_floor": [], "medseg": [], "stock": []}
        for repeat in range(args.repeats):
            timings["io_floor"].append(io_floor(cases, work / f"floor{repeat}"))
            order = ("medseg", "stock") if repeat % 2 == 0 else ("stock", "medseg")
            for name in order:
                out = work / f"{name}{repeat}"
                if name == "medseg":
                    command = medseg_command(bundle, data, out, args.device, args.roi)
                else:
                    command = stock_command(data, out, weights, args.roi)
                seconds = run_timed(command, work / f"{name}{repeat}.log")
                timings[name].append(seconds)
                print(f"{name} repeat {repeat}: {seconds:.1f} s", flush=True)
        rows = compare(cases, work / "medseg0", work / "stock0", workers=os.cpu_count() or 1)
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(v) for k, v in timings.items()}
    worst_dice_gap = max(
        abs(r["dice_medseg_vs_truth"][k] - r["dice_stock_vs_truth"][k])
        for r in rows
        for k in ("TC", "WT", "ET")
    )
    min_agreement = min(r["dice_medseg_vs_stock"][k] for r in rows for k in ("TC", "WT", "ET"))
    result = {
        "benchmark": "inference_vs_stock",
        "cases": args.cases,
        "shape": list(args.shape),
        "repeats": args.repeats,
        "roi": list(args.roi) if args.roi else [240, 240, 160],
        "note": args.note,
        "environment": env,
        "commands": {
            "medseg": " ".join(
                medseg_command(Path("WEIGHTS/bundle"), Path("DATA"), Path("OUT"), args.device, args.roi)
            ),
            "stock": " ".join(
                stock_command(Path("DATA"), Path("OUT"), Path("WEIGHTS/segresnet_state_dict.pt"), args.roi)
            ),
        },
        "seconds": timings,
        "best_seconds": best,
        "speedup_vs_stock": best["stock"] / best["medseg"],
        "medseg_over_io_floor": best["medseg"] / best["io_floor"],
        "cases_per_second": {k: args.cases / v for k, v in best.items()},
        "dice": rows,
        "max_abs_dice_gap_vs_truth": worst_dice_gap,
        "min_dice_medseg_vs_stock": min_agreement,
        "loadavg_at_end": list(os.getloadavg()),
        "time_utc_end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    table = markdown_table(
        ["pipeline", f"seconds ({args.cases} case(s), best of {args.repeats})", "cases/s", "vs stock"],
        [
            [
                "I/O floor (read inputs, write masks)",
                f"{best['io_floor']:.1f}",
                f"{args.cases / best['io_floor']:.3f}",
                "-",
            ],
            [
                "stock MONAI (`monai.bundle run`)",
                f"{best['stock']:.1f}",
                f"{args.cases / best['stock']:.3f}",
                "1.00x",
            ],
            [
                "medseg (`medseg infer`)",
                f"{best['medseg']:.1f}",
                f"{args.cases / best['medseg']:.3f}",
                f"{best['stock'] / best['medseg']:.2f}x",
            ],
        ],
    )
    dice_table = markdown_table(
        ["case", "TC / WT / ET Dice medseg vs stock", "medseg vs truth", "stock vs truth"],
        [
            [
                r["case"],
                *(
                    " / ".join(f"{r[key][k]:.4f}" for k in ("TC", "WT", "ET"))
                    for key in ("dice_medseg_vs_stock", "dice_medseg_vs_truth", "dice_stock_vs_truth")
                ),
            ]
            for r in rows
        ],
    )
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores, torch threads "
        f"{env['torch_threads']}); load average {env['loadavg_at_start'][0]:.1f} at start, "
        f"{result['loadavg_at_end'][0]:.1f} at end."
    )
    write_results(args.out, result, header + "\n\n" + table + "\n\n" + dice_table)


if __name__ == "__main__":
    main()
