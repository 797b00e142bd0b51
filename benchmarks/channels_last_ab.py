"""Interleaved A/B of the network's memory layout on the CPU: NCDHW (contiguous) vs channels_last_3d.

One forward pass of the model-zoo SegResNet (4 -> 3, init_filters 16) on a ``(1, 4, *size)``
window, alternating the two layouts ``--repeats`` times, so that a machine whose load varies
affects both alike. It reports each run and the best of each layout.

Run from the repository root::

    python benchmarks/channels_last_ab.py --size 128 128 128 --repeats 3 --out benchmarks/results/channels_last_ab_cpu.json
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from common import SEGRESNET_KWARGS, Timer, environment, markdown_table, write_results
from medseg.networks import build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 128))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = environment()
    torch.manual_seed(0)
    contiguous = build_network("segresnet", **SEGRESNET_KWARGS).eval()
    last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 4, *args.size, generator=torch.Generator().manual_seed(0))
    runs: dict[str, list[float]] = {"contiguous": [], "channels_last_3d": []}
    with torch.inference_mode():
        contiguous(x[..., :64, :64, :64])
        last(x[..., :64, :64, :64].contiguous(memory_format=torch.channels_last_3d))
        for _ in range(args.repeats):
            with Timer() as t:
                a = contiguous(x)
            runs["contiguous"].append(t.seconds)
            with Timer() as t:
                b = last(x.contiguous(memory_format=torch.channels_last_3d))
            runs["channels_last_3d"].append(t.seconds)
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "benchmark": "channels_last_ab",
        "size": list(args.size),
        "repeats": args.repeats,
        "environment": env,
        "seconds": runs,
        "best_seconds": best,
        "speedup": best["contiguous"] / best["channels_last_3d"],
        "max_abs_diff": float((a - b).abs().max()),
    }
    rows = [[k, ", ".join(f"{s:.1f}" for s in v), f"{best[k]:.1f}"] for k, v in runs.items()]
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); SegResNet forward on "
        f"{'x'.join(map(str, args.size))}, interleaved; speed-up of the best runs "
        f"{result['speedup']:.2f}x; max abs diff {result['max_abs_diff']:.1e}."
    )
    write_results(args.out, result, header + "\n\n" + markdown_table(["layout", "runs (s)", "best (s)"], rows))


if __name__ == "__main__":
    main()
