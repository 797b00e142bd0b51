"""How long the dataset fingerprint of ``medseg plan`` takes on BraTS-size cases, on 1 core and on all.

Writes ``--cases`` synthetic BraTS-like cases of 240x240x155 in the nnU-Net v2 layout
(``medseg.data.synth.writers.write_brats_dataset(fmt="nnunet")``: four int16 channels and a
uint8 label, ``.nii.gz``) in a process pool, then times
:func:`medseg.planning.fingerprint.extract_fingerprint` with one worker (in this process) and
with ``--workers`` processes, taking turns, best of ``--repeats``, and checks that every run
gives the same fingerprint. The first run of each also pays for cold imports. The JSON holds the
seconds per case, the speed-up, the bytes read (on disk and decoded), the peak memory of one
case in this process, and the wall time that 1,000 cases would take on this machine's cores.

``write_brats_dataset`` writes its cases one after the other, so each pool worker writes one
case (case 0 of seed ``i``) into a folder of its own, which is then moved into the dataset.
``--data DIR`` keeps the cases there and reuses those already written.

A benchmark, not a test: nothing here asserts a time. Run it on an otherwise idle machine::

    python benchmarks/planning_speed.py --cases 4 --out benchmarks/results/planning_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from math import prod
from pathlib import Path

import nibabel as nib
from common import environment, markdown_table, write_results

from medseg.data.synth.writers import write_brats_dataset
from medseg.planning.fingerprint import extract_fingerprint
from medseg.utils.atomic import atomic_write_text

CHANNELS = 4
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "planning_speed_cpu.json"


def case_files(root: Path, index: int) -> list[Path]:
    """The four channel files and the label of case ``index`` in the nnU-Net layout."""
    cid = f"case_{index:03d}"
    return [root / "imagesTr" / f"{cid}_{c:04d}.nii.gz" for c in range(CHANNELS)] + [root / "labelsTr" /
                                                                                      f"{cid}.nii.gz"]


def write_case(root: Path, index: int, shape: tuple[int, int, int]) -> Path:
    """Write case ``index`` (case 0 of seed ``index``) into ``root``; return its dataset.json, set aside."""
    scratch = root / f".writing_{index:03d}"
    shutil.rmtree(scratch, ignore_errors=True)
    write_brats_dataset(scratch, 1, shape, seed=index, fmt="nnunet")
    for source, target in zip(case_files(scratch, 0), case_files(root, index)):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    meta = scratch / "dataset.json"
    kept = root / f".dataset_{index:03d}.json"
    os.replace(meta, kept)
    shutil.rmtree(scratch)
    return kept


def prepare(root: Path, cases: int, shape: tuple[int, int, int], workers: int) -> float:
    """Write the cases missing under ``root`` in a process pool; return the seconds it took."""
    missing = [i for i in range(cases) if not all(p.is_file() for p in case_files(root, i))]
    start = time.perf_counter()
    if missing:
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(missing)))) as pool:
            metas = list(pool.map(write_case, [root] * len(missing), missing, [shape] * len(missing)))
        meta = json.loads(metas[0].read_text())
        for path in metas:
            path.unlink()
    else:
        meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = cases
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=2))
    return time.perf_counter() - start


def file_bytes(root: Path, cases: int) -> tuple[int, int]:
    """Bytes on disk and decoded bytes (voxels x item size, from the headers) of the files read."""
    on_disk = decoded = 0
    for i in range(cases):
        for path in case_files(root, i):
            header = nib.load(str(path)).header
            on_disk += path.stat().st_size
            decoded += prod(header.get_data_shape()) * header.get_data_dtype().itemsize
    return on_disk, decoded


def timed(root: Path, workers: int, runs: list[float]) -> dict:
    """Fingerprint ``root`` with ``workers``, appending the wall seconds to ``runs``."""
    start = time.perf_counter()
    fingerprint = extract_fingerprint(root, workers=workers)
    runs.append(time.perf_counter() - start)
    return fingerprint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="cases written and fingerprinted (default 4)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes of the parallel run (default: every core)")
    parser.add_argument("--data", type=Path, help="keep the cases in DIR (only these) and reuse those already "
                                                  "there (default: a temporary folder)")
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), help="case size (BraTS: 240 240 155)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each, taking turns; the best counts (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    args = parser.parse_args()
    if min(args.cases, args.workers, args.repeats) < 1:
        parser.error("--cases, --workers and --repeats must be at least 1")

    machine = environment()  # before the timings: its load average is the one they ran under
    with tempfile.TemporaryDirectory(prefix="medseg-planning-bench-") as tmp:
        root = args.data or Path(tmp) / "Dataset900_SyntheticGlioma"
        root.mkdir(parents=True, exist_ok=True)
        write_s = prepare(root, args.cases, tuple(args.shape), args.workers)
        on_disk, decoded = file_bytes(root, args.cases)
        serial_runs: list[float] = []
        parallel_runs: list[float] = []
        before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        serial = timed(root, 1, serial_runs)
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024
        parallel = timed(root, args.workers, parallel_runs)
        for _ in range(args.repeats - 1):
            again = timed(root, 1, serial_runs), timed(root, args.workers, parallel_runs)
            if again != (serial, parallel):
                raise SystemExit("a repeated run gave another fingerprint")
    serial_s, parallel_s = min(serial_runs), min(parallel_runs)

    used = min(args.workers, args.cases)
    per_case_serial, per_case_parallel = serial_s / args.cases, parallel_s / args.cases
    result = {
        "benchmark": "planning_speed", "cases": args.cases, "shape": list(args.shape), "channels": CHANNELS,
        "layout": "nnunet (generic): int16 channels, uint8 label, .nii.gz",
        "samples_per_case": serial["samples_per_case"],
        "write_s": round(write_s, 2),
        "bytes_on_disk": on_disk, "bytes_decoded": decoded,
        "repeats": args.repeats,
        "serial": {"workers": 1, "seconds": round(serial_s, 3), "per_case_s": round(per_case_serial, 3),
                   "runs_s": [round(t, 3) for t in serial_runs]},
        "parallel": {"workers": args.workers, "processes_used": used, "seconds": round(parallel_s, 3),
                     "per_case_s": round(per_case_parallel, 3), "runs_s": [round(t, 3) for t in parallel_runs]},
        "speedup": round(serial_s / parallel_s, 3),
        # How far the 1-worker run raised this process's peak resident memory: about what one worker needs.
        "peak_rss_growth_mb_serial": round(peak_mb, 1),
        "same_fingerprint": serial == parallel,
        "cpu_count": os.cpu_count(),
        # 1000 x the per-case wall time of each run. The parallel run used min(workers, cases)
        # processes: with fewer cases than cores it understates what 1,000 cases gain from the rest.
        "extrapolated_1000_cases_s": {"1 worker": round(1000 * per_case_serial, 1),
                                      f"{used} processes": round(1000 * per_case_parallel, 1)},
        "environment": machine,
    }
    table = markdown_table(
        ["run", "workers", "seconds", "per case (s)", "speed-up", "1,000 cases (min)"],
        [["1 worker", 1, f"{serial_s:.2f}", f"{per_case_serial:.2f}", "1.00x", f"{1000 * per_case_serial / 60:.1f}"],
         [f"{used} processes", args.workers, f"{parallel_s:.2f}", f"{per_case_parallel:.2f}",
          f"{serial_s / parallel_s:.2f}x", f"{1000 * per_case_parallel / 60:.1f}"]])
    table = (f"{args.cases} cases of {'x'.join(map(str, args.shape))}, {CHANNELS} channels + label, "
             f"{on_disk / 2**20:.0f} MiB on disk, {decoded / 2**20:.0f} MiB decoded; "
             f"{machine['cpu_model']}, {os.cpu_count()} cores\n\n{table}")
    write_results(args.out, result, table)
    return 0 if serial == parallel else 1


if __name__ == "__main__":
    sys.exit(main())
