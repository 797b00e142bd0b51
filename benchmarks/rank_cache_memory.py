"""Host memory of the training cache per ``torchrun`` rank: each rank's share (now) against every case (before).

Issue #19's target: "Host memory per rank with N ranks <= 1/N of the one-rank cache, plus a
constant." Since 7ceee35, ``multi_gpu_train.json`` gives each rank's ``CacheDataset`` only its
share of the training cases (``medseg.engine.distributed.rank_share``, MONAI's
``partition_dataset``); before, every rank cached every case and a ``DistributedSampler`` drew
its share from them.

For 1, 2 and 4 ranks (gloo on the CPU, ``python -m torch.distributed.run``) and for both
variants, each rank builds the ``brats_segresnet`` DDP config exactly as ``python -m monai.bundle
run`` does (a ``ConfigParser`` over ``train.json`` then ``multi_gpu_train.json``), evaluates
``initialize``, then ``datalist`` (which reads and checks every file), then ``train#dataset``
(``CacheDataset``, ``cache_rate`` set to 1.0 explicitly; it is also the bundle's default), and
records:

* its resident set size (``/proc/self/status``: ``VmRSS``, ``RssAnon`` and the peak ``VmHWM``)
  after ``initialize``, after ``datalist`` and after ``train#dataset``; the RSS growth in the
  table is the ``train#dataset`` step alone (after ``datalist`` to after the cache), because the
  datalist check reads every case on every rank in both variants;
* the exact bytes the cache holds: every tensor and array in ``dataset._cache`` (the MetaTensors'
  metadata included), each storage counted once; and the number of cases cached.

*new* is the bundle as it is; *old* overrides ``train#dataset#data`` back to
``$medseg.engine.data.split(@datalist, 'train', @fold)``, every rank caching every case. With one
rank the two are the same config (``rank_share`` returns every case), run twice as a noise check.

The data are synthetic BraTS cases from the CLI's generator
(``medseg.data.synth.writers.write_brats_dataset``), 24 cases of 96x96x64 by default: 19 training
cases in fold 0 of 5, about 17 MB each once cached (4 float32 image channels and 3 float32 region
channels of the foreground box, plus the background voxel indices), about 320 MB on one rank.
The bundle's ``roi_size`` (224x224x144) is set to 64x64x64: ``SpatialPadd`` pads each cached
volume to the patch size, which for such small cases would cache mostly padding (about 200 MB a
case). Four ranks share a training set of 19 cases as 5 each, one case cached twice (MONAI's
``even_divisible`` padding): the target's constant is one case, the largest of the one-rank
cache.

Target: new per-rank cache bytes (max over ranks) <= one-rank cache / N + one case's bytes.

Run from the repository root (about 2 minutes on 2 CPU cores)::

    OMP_NUM_THREADS=1 python benchmarks/rank_cache_memory.py --out benchmarks/results/rank_cache_memory_cpu.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Timer, environment, markdown_table, write_results

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [REPO / "bundles" / "brats_segresnet" / "configs" / name for name in ("train.json", "multi_gpu_train.json")]
#: What ``train#dataset#data`` was before 7ceee35 (``train.json``'s own value): every training case.
OLD_DATA = "$medseg.engine.data.split(@datalist, 'train', @fold)"
VARIANTS = ("new", "old")
MIB = 2**20


# ---------------------------------------------------------------------------------------------- rank side


def memory_status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` of this process, in bytes."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    status: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            status[key] = int(value.split()[0]) * 1024  # reported in kB
    return status


def held_bytes(obj: Any, seen: set[int]) -> int:
    """Bytes of every tensor and array reachable from ``obj`` (dicts, sequences, MetaTensor metadata).

    Each storage is counted once (``seen`` holds the data pointers already counted), whole:
    a view keeps its whole storage alive.
    """
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        total = 0
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        meta = getattr(obj, "meta", None)  # a MetaTensor's affine and other metadata
        if meta:
            total += held_bytes(meta, seen)
        return total
    if isinstance(obj, np.ndarray):
        root = obj
        while isinstance(root.base, np.ndarray):
            root = root.base
        pointer = root.__array_interface__["data"][0]
        if pointer in seen:
            return 0
        seen.add(pointer)
        return int(root.nbytes)
    if isinstance(obj, dict):
        return sum(held_bytes(value, seen) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(value, seen) for value in obj)
    return 0


def malloc_trim() -> bool:
    """Hand the C heap's free memory back to the system (glibc ``malloc_trim(0)``); False where unavailable.

    Called after the measurements: what it releases is memory that the cache does not hold but
    the process kept (freed temporaries of the transforms and the file decoding).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def build_parser(spec: dict[str, Any]) -> Any:
    """The bundle's DDP config as ``monai.bundle run`` reads it, with this run's values."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(path) for path in CONFIGS])
    values: dict[str, Any] = {"dataset_dir": spec["dataset"], "output_dir": spec["output"], "num_workers": 0,
                              "tracking_enabled": False, "cache_rate": 1.0, "roi_size": spec["roi"]}
    if spec["variant"] == "old":
        values["train#dataset#data"] = OLD_DATA
    for key, value in values.items():
        parser[key] = value
    return parser


def rank_main(spec: dict[str, Any]) -> None:
    """One rank: memory after ``initialize``, after ``datalist`` and after ``train#dataset``; the cache's bytes."""
    parser = build_parser(spec)
    parser.get_parsed_content("initialize")
    gc.collect()
    initialized = memory_status()
    parser.get_parsed_content("datalist")
    gc.collect()
    before = memory_status()
    with Timer() as build:
        dataset = parser.get_parsed_content("train#dataset")
    gc.collect()
    after = memory_status()
    seen: set[int] = set()
    per_case = [held_bytes(item, seen) for item in dataset._cache]
    trimmed = memory_status() if malloc_trim() else None
    rank = int(os.environ["RANK"])
    report = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "variant": spec["variant"],
        "cases": len(dataset.data),
        "cached_cases": sum(item is not None for item in dataset._cache),
        "case_ids": [case["case_id"] for case in dataset.data],
        "cache_bytes": sum(per_case),
        "case_bytes": per_case,
        "memory_initialized": initialized,
        "memory_before_dataset": before,
        "memory_after_dataset": after,
        "memory_after_malloc_trim": trimmed,
        "dataset_seconds": build.seconds,
    }
    (Path(spec["output"]).parent / f"rank{rank}.json").write_text(json.dumps(report, indent=1) + "\n")
    parser.get_parsed_content("finalize")


# -------------------------------------------------------------------------------------------- driver side


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(world: int, variant: str, dataset: Path, folder: Path, roi: Sequence[int]) -> tuple[list[dict], float]:
    """Run ``world`` ranks under ``torch.distributed.run``; their reports (by rank) and the wall time."""
    folder.mkdir(parents=True)
    spec = {"variant": variant, "dataset": str(dataset), "output": str(folder / "run"), "roi": list(roi)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={world}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__).resolve()),
               "--rank-worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with Timer() as wall:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{world} rank(s), {variant}: exit {result.returncode}\n{result.stderr[-4000:]}")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)], wall.seconds


def growth(report: dict[str, Any], key: str = "VmRSS", since: str = "memory_before_dataset") -> int:
    """How much ``key`` grew from ``since`` to after the dataset, in bytes."""
    return report["memory_after_dataset"][key] - report[since][key]


def trimmed_growth(report: dict[str, Any]) -> int | None:
    """RSS growth from before the dataset to after ``malloc_trim``, in bytes (``None`` without it)."""
    trimmed = report["memory_after_malloc_trim"]
    return None if trimmed is None else trimmed["VmRSS"] - report["memory_before_dataset"]["VmRSS"]


def summarize(world: int, variant: str, ranks: list[dict], wall: float, one_rank: int, one_case: int,
              one_rank_rss: int) -> dict:
    """Per-rank maxima, node sums and the target check of one run.

    ``one_rank_rss``: the one-rank run's RSS growth; the same bound applied to RSS growth is
    reported too (informational: RSS also holds what the allocator kept).
    """
    cache = [r["cache_bytes"] for r in ranks]
    bound = one_rank / world + one_case
    rss_bound = one_rank_rss / world + one_case
    return {
        "world_size": world,
        "variant": variant,
        "cases_per_rank": sorted({r["cases"] for r in ranks}),
        "cached_cases_per_rank": [r["cached_cases"] for r in ranks],
        "node_cases": sum(r["cases"] for r in ranks),
        "node_distinct_cases": len({c for r in ranks for c in r["case_ids"]}),
        "cache_bytes_per_rank": cache,
        "cache_bytes_max": max(cache),
        "cache_bytes_node": sum(cache),
        "rss_growth_per_rank": [growth(r) for r in ranks],
        "rss_growth_max": max(growth(r) for r in ranks),
        "rss_growth_node": sum(growth(r) for r in ranks),
        "anon_growth_max": max(growth(r, "RssAnon") for r in ranks),
        "rss_growth_after_malloc_trim_max": max((g for g in map(trimmed_growth, ranks) if g is not None), default=None),
        "rss_growth_since_initialize_max": max(growth(r, since="memory_initialized") for r in ranks),
        "rss_after_max": max(r["memory_after_dataset"]["VmRSS"] for r in ranks),
        "peak_rss_max": max(r["memory_after_dataset"]["VmHWM"] for r in ranks),
        "peak_rss_growth_max": max(growth(r, "VmHWM", "memory_initialized") for r in ranks),
        "ratio_rank_to_one_rank_cache": max(cache) / one_rank,
        "ratio_node_to_one_rank_cache": sum(cache) / one_rank,
        "target_bytes": bound,
        "target_met": max(cache) <= bound,
        "rss_bound_bytes": rss_bound,
        "rss_within_bound": max(growth(r) for r in ranks) <= rss_bound,
        "dataset_seconds_max": max(r["dataset_seconds"] for r in ranks),
        "torchrun_seconds": wall,
        "ranks": ranks,
    }


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def table(rows: list[dict], preamble: str) -> str:
    """The markdown table of every run, under ``preamble``."""
    header = ["ranks", "variant", "cases per rank", "cache per rank (max), MiB", "RSS growth per rank (max), MiB",
              "the same after `malloc_trim`, MiB", "peak RSS per rank (max), MiB", "node cache (sum), MiB", "node RSS growth (sum), MiB",
              "rank cache / 1-rank cache", "node cache / 1-rank cache", "target: rank cache <= 1-rank / N + 1 case, MiB"]
    body = []
    for row in rows:
        trimmed = row["rss_growth_after_malloc_trim_max"]
        target = ("old: " if row["variant"] == "old" else "") + ("met" if row["target_met"] else "missed")
        body.append([row["world_size"], row["variant"], "/".join(map(str, row["cases_per_rank"])),
                     mib(row["cache_bytes_max"]), mib(row["rss_growth_max"]),
                     "-" if trimmed is None else mib(trimmed), mib(row["peak_rss_max"]),
                     mib(row["cache_bytes_node"]), mib(row["rss_growth_node"]),
                     f"{row['ratio_rank_to_one_rank_cache']:.3f}", f"{row['ratio_node_to_one_rank_cache']:.2f}",
                     f"{target} ({'<=' if row['target_met'] else '>'} {mib(row['target_bytes'])})"])
    return preamble + "\n\n" + markdown_table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rank_cache_memory_cpu.json")
    parser.add_argument("--work", type=Path, default=None, help="data and run folders (default: a temporary one)")
    parser.add_argument("--cases", type=int, default=24, help="synthetic cases (fold 0 of 5 trains on about 4/5)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64), help="case size (X Y Z)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--roi", type=int, nargs=3, default=(64, 64, 64), help="the bundle's roi_size (patch)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=(1, 2, 4))
    parser.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker is not None:
        rank_main(json.loads(args.rank_worker))
        return
    if 1 not in args.world_sizes:
        parser.error("--world-sizes needs 1: the one-rank cache is the reference")

    with tempfile.TemporaryDirectory(prefix="rank_cache_memory_") as scratch:
        work = args.work or Path(scratch)
        run_benchmark(args, work)


def run_benchmark(args: argparse.Namespace, work: Path) -> None:
    """Write the data, run every world size and variant, write the results."""
    from medseg.data.synth.writers import write_brats_dataset

    env = environment()
    dataset = work / "data"
    with Timer() as written:
        write_brats_dataset(dataset, cases=args.cases, shape=tuple(args.shape), seed=args.seed)
    runs_root = work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
    runs: dict[tuple[int, str], tuple[list[dict], float]] = {}
    with Timer() as total:
        for world in sorted(set(args.world_sizes)):
            for variant in VARIANTS:
                runs[world, variant] = launch(world, variant, dataset, runs_root / f"w{world}-{variant}", args.roi)
                print(f"{world} rank(s), {variant}: {runs[world, variant][1]:.1f} s", file=sys.stderr, flush=True)
    reference = runs[1, "new"][0][0]
    one_rank = reference["cache_bytes"]
    one_case = max(reference["case_bytes"])
    one_rank_rss = growth(reference)
    rows = [summarize(w, v, *runs[w, v], one_rank=one_rank, one_case=one_case, one_rank_rss=one_rank_rss)
            for w, v in runs]
    met = all(row["target_met"] for row in rows if row["variant"] == "new")
    preamble = (
        f"Device: cpu ({env['cpu_model']}, {env['cpu_count']} cores), gloo, `OMP_NUM_THREADS=1`; "
        f"`brats_segresnet` with `multi_gpu_train.json`, `cache_rate` 1.0, `roi_size` {list(args.roi)}; "
        f"{args.cases} synthetic BraTS cases of {'x'.join(map(str, args.shape))}, "
        f"{reference['cases']} training cases (fold 0 of 5). One-rank cache {mib(one_rank)} MiB, largest case "
        f"{mib(one_case)} MiB (the target's constant). *new*: each rank caches its `rank_share`; *old*: every "
        f"rank caches every training case (`train#dataset#data` = `split(...)`). RSS growth: `VmRSS` after "
        f"`train#dataset` minus after `datalist` (and after a glibc `malloc_trim(0)`, which releases freed heap memory the process kept); peak: `VmHWM` at the end. Target (issue #19) "
        f"{'met' if met else 'missed'} at every world size. {total.seconds:.0f} s of runs.")
    result = {
        "benchmark": "rank_cache_memory",
        "environment": env,
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "configs": [str(path.relative_to(REPO)) for path in CONFIGS],
        "data": {"cases": args.cases, "shape": list(args.shape), "seed": args.seed, "roi_size": list(args.roi),
                 "training_cases": reference["cases"], "write_seconds": written.seconds},
        "one_rank_cache_bytes": one_rank,
        "one_case_bytes": one_case,
        "target": "new: cache bytes per rank (max) <= one-rank cache / world size + largest case's bytes",
        "target_met": met,
        "runs_seconds": total.seconds,
        "runs": rows,
    }
    write_results(args.out, result, table(rows, preamble))


if __name__ == "__main__":
    main()
