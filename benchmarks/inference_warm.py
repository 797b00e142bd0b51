"""The warm-process inference benchmarks in one process: per case, stage by stage, the network's levers.

``inference_in_process.py``, ``stage_breakdown.py`` and ``inference_network_levers.py`` each
measure work inside one warm process, so none of their figures includes start-up; run one after
another as separate scripts, each pays Python, torch, MONAI and CUDA start-up again (about 15 s
on the GPU machine of ``benchmarks/gpu_suite.sh``). This runs the three in one process, in that
order (the lever benchmark flips global switches such as ``cudnn.benchmark``, so it runs last),
with the same arguments as running them one by one, and writes the same JSONs:
``RESULTS/inference_in_process_SUFFIX.json``, ``stage_breakdown_SUFFIX.json`` and
``inference_network_levers_SUFFIX.json``. One that fails is reported and the next still runs;
the exit status is 1 if any failed.

Run from the repository root::

    python benchmarks/inference_warm.py --data DATA --weights WEIGHTS --device cuda --results RESULTS
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import inference_in_process
import inference_network_levers
import stage_breakdown
import torch
from common import case_arguments


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[list[str]], None], list[str]]]:
    """The three benchmarks with their command lines, in the order they run."""
    common = ["--data", str(args.data), "--weights", str(args.weights), "--shape", *map(str, args.shape),
              "--device", args.device]
    roi = ["--roi", *map(str, args.roi)] if args.roi else []
    out = args.results
    return [
        ("in one process", inference_in_process.main,
         [*common, "--cases", str(args.cases), "--repeats", "1", "--out",
          str(out / f"inference_in_process_{args.suffix}.json")]),
        ("stage by stage", stage_breakdown.main,
         [*common, "--cases", str(args.stage_cases), "--out", str(out / f"stage_breakdown_{args.suffix}.json")]),
        ("the network, lever by lever", inference_network_levers.main,
         [*common, *roi, "--repeats", "3", "--out", str(out / f"inference_network_levers_{args.suffix}.json")]),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the three benchmarks; return 0, or 1 if any of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--cases", type=int, default=5, help="cases of the per-case benchmark")
    parser.add_argument("--stage-cases", type=int, default=3, help="cases timed stage by stage (one more warms up)")
    parser.add_argument("--roi", type=int, nargs=3, help="the window of the lever benchmark (default: the bundle's)")
    parser.add_argument("--results", type=Path, required=True, help="folder of the JSONs and tables")
    parser.add_argument("--suffix", default="gpu", help="the JSONs' name suffix (gpu or cpu)")
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, run, arguments in plan(args):
        start = time.perf_counter()
        print(f"inference_warm: {name}: {' '.join(arguments)}", flush=True)
        # Each starts as it would in its own process: stock's config turns cuDNN autotuning on. (Each
        # benchmark sets the .gz reader of the pipeline it times itself: medseg.utils.fastgzip.)
        torch.backends.cudnn.benchmark = False
        try:
            run(arguments)
        except (Exception, SystemExit):  # noqa: BLE001 - one benchmark's failure must not cost the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"inference_warm: {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"inference_warm: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
