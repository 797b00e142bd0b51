"""Decoding BraTS-size ``.nii.gz`` cases: Python's gzip (zlib) against ISA-L's igzip (``medseg.utils.fastgzip``).

Reads the four modalities of each case with nibabel (``np.asarray(img.dataobj)``), as MONAI's
``LoadImage`` and medseg's readers do, first with zlib, then with the fast decoder, taking
turns over ``--repeats`` rounds, serially and with ``--threads`` cases at once. Writes the
JSON and a markdown table::

    python benchmarks/gzip_decoding.py --data /tmp/bench_brats --cases 4 --out benchmarks/results/gzip_decoding_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from common import case_arguments, environment, markdown_table, write_brats_cases, write_results

from medseg.utils import fastgzip

MODALITIES = ("t1", "t1ce", "t2", "flair")


def _read_case(folder: Path) -> int:
    total = 0
    for m in MODALITIES:
        total += int(np.asarray(nib.load(folder / f"{folder.name}_{m}.nii.gz").dataobj).nbytes)
    return total


def _time(folders: list[Path], threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for f in folders:
            _read_case(f)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(_read_case, folders))
    return time.perf_counter() - start


def _set_zlib(on: bool) -> None:
    """Switch nibabel between its own opener and the fast one (this benchmark only)."""
    from nibabel import openers

    for cls in {openers.Opener, openers.ImageOpener}:
        func, names = cls.compress_ext_map[".gz"]
        original = getattr(func, "medseg_original", func)
        if on:
            cls.compress_ext_map[".gz"] = (original, names)
        else:
            fast = fastgzip._opener(original)
            fast.medseg_original = original
            cls.compress_ext_map[".gz"] = (fast, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser, weights=False)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="cases decoded at once in the second timing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if fastgzip.fast_gzip_backend() is None:
        raise SystemExit("isal is not installed")
    env = environment()
    folders = write_brats_cases(args.data, args.cases, args.shape)
    compressed = sum((f / f"{f.name}_{m}.nii.gz").stat().st_size for f in folders for m in MODALITIES)
    raw = sum(_read_case(f) for f in folders)
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for decoder in ("zlib", "isal"):
            _set_zlib(decoder == "zlib")
            for threads in (1, args.threads):
                times.setdefault((decoder, threads), []).append(_time(folders, threads))
    _set_zlib(True)
    rows, results = [], []
    for (decoder, threads), values in times.items():
        best = min(values)
        base = min(times[("zlib", threads)])
        results.append({"decoder": decoder, "threads": threads, "seconds_best": best,
                        "seconds_median": statistics.median(values), "per_case_s": best / args.cases,
                        "speedup_vs_zlib": base / best})
        rows.append([decoder, threads, f"{best:.2f}", f"{best / args.cases:.3f}", f"{base / best:.2f}x"])
    result = {"benchmark": "gzip_decoding", "environment": env, "cases": args.cases, "shape": list(args.shape),
              "modalities": list(MODALITIES), "decoded_bytes": raw,
              "compressed_bytes": compressed, "repeats": args.repeats, "results": results}
    header = (f"Device: {env['cpu_model']}, {env['cpu_count']} cores; {args.cases} cases of "
              f"{'x'.join(map(str, args.shape))}, 4 int16 modalities each ({raw / 2**20:.0f} MiB decoded); "
              f"best of {args.repeats}.\n\n")
    table = header + markdown_table(["decoder", "cases at once", "seconds", "per case s", "vs zlib"], rows)
    write_results(args.out, result, table)


if __name__ == "__main__":
    main()
