"""What a fresh process pays before its first case: the interpreter, the imports, the device, the first kernels.

``inference_vs_stock.py`` times whole fresh processes: a folder of cases or one new scan,
start-up included. On a GPU machine that start-up is most of a single scan's time, for stock
MONAI and for medseg alike; this script splits it, each row a fresh ``python`` process timed
from outside (the best of ``--repeats``), each adding one step to the row before:

* ``python -c pass``: the interpreter;
* ``import torch``;
* ``+ CUDA context``: ``torch.cuda.init()`` and a one-element tensor on the device (CUDA only);
* ``+ first convolution``: a 3D convolution and a GroupNorm on the device (loads cuDNN and the
  kernels; CUDA only);
* ``import monai`` (with torch; MONAI imports most of its submodules on first import);
* ``medseg infer's imports``: ``medseg.cli.infer_cmd`` and the 3D inference stages;
* ``medseg infer --help`` (imports no torch: ``tests/test_import_cost.py``);
* ``stock: import monai.bundle + ignite``: what ``python -m monai.bundle run`` imports before it
  reads its config.

Run from the repository root::

    python benchmarks/startup.py --out benchmarks/results/startup_gpu.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import environment, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]

CONV = ("import torch; d = torch.device('cuda'); x = torch.zeros(1, 4, 32, 32, 32, device=d); "
        "net = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3), torch.nn.GroupNorm(8, 8)).to(d); "
        "net(x); torch.cuda.synchronize()")


def steps(cuda: bool) -> dict[str, list[str]]:
    """The rows: a label and the command line of a fresh process."""
    py = [sys.executable]
    rows = {
        "python -c pass": py + ["-c", "pass"],
        "import torch": py + ["-c", "import torch"],
    }
    if cuda:
        rows["import torch + CUDA context"] = py + ["-c", ("import torch; torch.cuda.init(); "
                                                          "torch.zeros(1, device='cuda'); torch.cuda.synchronize()")]
        rows["import torch + CUDA context + first convolution"] = py + ["-c", CONV]
    rows["import torch, monai"] = py + ["-c", "import torch, monai"]
    rows["medseg infer's imports"] = py + ["-c", ("import medseg.cli.infer_cmd, medseg.inference.volume_task, "
                                                 "medseg.inference.device_stages")]
    rows["medseg infer --help"] = py + ["-m", "medseg", "infer", "--help"]
    rows["stock: import monai.bundle, ignite"] = py + ["-c", "import monai.bundle, ignite.engine, monai.engines"]
    return rows


def best_seconds(command: list[str], repeats: int) -> tuple[float, list[float]]:
    """The fastest of ``repeats`` runs of ``command`` (wall clock), and every run's seconds."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return min(seconds), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = environment()
    cuda = env["gpu"] is not None
    rows = {}
    for label, command in steps(cuda).items():
        best, seconds = best_seconds(command, args.repeats)
        rows[label] = {"command": command[1:], "best_seconds": best, "seconds": seconds}
        print(f"{label}: {best:.2f} s", flush=True)
    result = {"benchmark": "startup", "repeats": args.repeats, "environment": env, "rows": rows}
    header = (f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); Python {env['python']}, torch "
              f"{env['torch']}, MONAI {env['monai']}; each row a fresh process, best of {args.repeats}, wall clock.")
    table = markdown_table(["fresh process", "seconds"], [[k, f"{r['best_seconds']:.2f}"] for k, r in rows.items()])
    write_results(args.out, result, header + "\n\n" + table)


if __name__ == "__main__":
    main()
