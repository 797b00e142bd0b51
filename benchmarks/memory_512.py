"""Peak memory of ``medseg infer`` on a 512x512x512 single-channel volume (host RAM; GPU memory with CUDA).

Writes a 512^3 int16 ``.nii.gz`` (smooth noise, non-zero everywhere, so the non-zero box is
the whole volume: the worst case) and a medseg output bundle with a small network
(``attention_unet3d``, features 8/16/32/64, random weights: memory, not accuracy, is
measured), then runs the whole command (read, preprocess, predict, invert, write) in a
subprocess and reads its peak resident set size with ``resource.getrusage(RUSAGE_CHILDREN)``.
With CUDA the predictor alone is also run in a subprocess that reports
``torch.cuda.max_memory_allocated()``.

Run from the repository root::

    python benchmarks/memory_512.py --out benchmarks/results/memory_512_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import Timer, environment, markdown_table, medseg_command, write_results

from medseg.checkpoint import save_checkpoint
from medseg.networks import build_network

NETWORK = {
    "name": "attention_unet3d",
    "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "features": [8, 16, 32, 64]},
}
HOST_TARGET_GIB = 12.0
GPU_TARGET_GIB = 8.0

_GPU_PROBE = """
import json, sys, torch
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.networks import build_network
kwargs = json.loads(sys.argv[1]); edge = int(sys.argv[2]); roi = int(sys.argv[3])
net = build_network("attention_unet3d", **kwargs).eval()
predictor = SlidingWindowPredictor(net, (roi,) * 3, sw_batch_size=4, overlap=0.25, activation="sigmoid", device="cuda")
torch.cuda.reset_peak_memory_stats()
result = predictor.predict(torch.randn(1, edge, edge, edge))
print(json.dumps({"max_memory_allocated": torch.cuda.max_memory_allocated(), "stitch": result.stitch_device}))
"""


def write_inputs(folder: Path, edge: int, roi: int) -> tuple[Path, Path]:
    """The volume and the bundle."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(edge // 16,) * 3)
    volume = np.kron(coarse, np.ones((16, 16, 16)))  # blocky smooth noise, cheap at 512^3
    volume = (1000 + 200 * volume + rng.normal(0, 20, volume.shape)).clip(1, 3000).astype(np.int16)
    image = folder / "input" / "volume512.nii.gz"
    image.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 0.8, 1.0])), str(image))
    bundle = folder / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(
        json.dumps({"roi_size": [roi] * 3, "sw_batch_size": 2, "sw_overlap": 0.25})
    )
    torch.manual_seed(0)
    network = build_network(NETWORK["name"], **NETWORK["kwargs"])
    save_checkpoint(
        bundle / "models" / "model.pt",
        network.state_dict(),
        network=NETWORK,
        label_convention=None,
        channel_names=["image"],
        preprocessing={
            "task": "multiclass",
            "orientation": "RAS",
            "normalize": "nonzero_channel_wise",
            "pixdim": None,
            "label_values": [0, 1, 2],
            "channels": ["image"],
        },
    )
    return image, bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=512)
    parser.add_argument("--roi", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    env = environment()
    result: dict = {
        "benchmark": "memory_512",
        "edge": args.edge,
        "roi": args.roi,
        "network": NETWORK,
        "environment": env,
    }
    with tempfile.TemporaryDirectory(prefix="medseg-mem-") as tmp:
        image, bundle = write_inputs(Path(tmp), args.edge, args.roi)
        command = medseg_command(bundle, image, Path(tmp) / "out", args.device)
        with Timer() as t:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"medseg infer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN holds the largest child, i.e. medseg infer.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        result["host"] = {
            "seconds": t.seconds,
            "peak_rss_bytes": peak,
            "peak_rss_gib": peak / 1024**3,
            "target_gib": HOST_TARGET_GIB,
            "met": peak / 1024**3 <= HOST_TARGET_GIB,
            "command": " ".join(command[1:]),
        }
        output = nib.load(str(Path(tmp) / "out" / "volume512.nii.gz"))
        result["host"]["output_shape"] = list(output.shape)
    if torch.cuda.is_available():
        done = subprocess.run(
            [sys.executable, "-c", _GPU_PROBE, json.dumps(NETWORK["kwargs"]), str(args.edge), str(args.roi)],
            capture_output=True,
            text=True,
            check=True,
        )
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        gib = probe["max_memory_allocated"] / 1024**3
        result["gpu"] = {**probe, "gib": gib, "target_gib": GPU_TARGET_GIB, "met": gib <= GPU_TARGET_GIB}
    else:
        result["gpu"] = None
    rows = [
        [
            "host peak RSS, whole `medseg infer` command",
            f"{result['host']['peak_rss_gib']:.2f} GiB",
            f"<= {HOST_TARGET_GIB:.0f} GiB",
            "met" if result["host"]["met"] else "NOT met",
            f"{result['host']['seconds']:.0f} s",
        ]
    ]
    if result["gpu"]:
        rows.append(
            [
                "GPU max_memory_allocated, predictor",
                f"{result['gpu']['gib']:.2f} GiB",
                f"<= {GPU_TARGET_GIB:.0f} GiB",
                "met" if result["gpu"]["met"] else "NOT met",
                "",
            ]
        )
    else:
        rows.append(["GPU memory", "not measured (no CUDA device)", f"<= {GPU_TARGET_GIB:.0f} GiB", "-", ""])
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); {args.edge}^3 single channel, "
        f"attention_unet3d features 8/16/32/64, roi {args.roi}^3, sw batch 2, overlap 0.25."
    )
    write_results(
        args.out, result, header + "\n\n" + markdown_table(["what", "peak", "target", "", "time"], rows)
    )


if __name__ == "__main__":
    main()
