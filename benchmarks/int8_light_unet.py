"""INT8 vs fp32 for the 2D light UNet on the CPU (ONNX Runtime static quantization).

Trains ``light_unet`` (default width, 3 -> 2 channels) briefly on synthetic blob images
(bright ellipses on a noisy, shaded background, generated here), exports it to ONNX,
quantizes it to INT8 with calibration images, and writes the size, latency and Dice figures
to ``benchmarks/results/int8_light_unet_cpu.json``.

Run from the repository root::

    python benchmarks/int8_light_unet.py            # about 3-4 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import monai
import numpy as np
import onnxruntime
import torch

import medseg
from medseg.export import check_parity, export_onnx, int8_report, quantize_onnx_int8
from medseg.losses import build_loss
from medseg.networks import build_network
from medseg.networks.summary import count_parameters
from medseg.utils.atomic import atomic_write_text


def blob_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images ``(n, 3, size, size)`` with bright ellipses on a shaded, noisy background.

    Ellipse radii are 6-26 pixels whatever the image size, and their number grows with the
    area (1-3 per 128x128), so small training crops and large evaluation images look alike.

    Returns:
        The images, standardised per image and channel, and the masks ``(n, 1, size, size)``.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.float32)
    per_image = max(1.0, (size / 128) ** 2)
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4) * per_image)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(6, 26, 2)
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        shading = (rng.uniform(-0.5, 0.5) * (xx - size / 2) + rng.uniform(-0.5, 0.5) * (yy - size / 2)) / size
        colour = rng.uniform(0.6, 1.2, 3)
        for c in range(3):
            images[i, c] = shading + colour[c] * mask + rng.normal(0, 0.35, (size, size))
        masks[i, 0] = mask
    images = (images - images.mean(axis=(2, 3), keepdims=True)) / images.std(axis=(2, 3), keepdims=True)
    return images, masks


def train(model: torch.nn.Module, steps: int, size: int, batch: int, rng: np.random.Generator) -> dict:
    """Train for ``steps`` steps on fresh synthetic batches; return the training log."""
    loss_fn = build_loss("dice_ce")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        x, y = blob_images(batch, size, rng)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {
        "steps": steps,
        "batch": batch,
        "train_size": size,
        "loss": "DiceCE (softmax), AdamW lr 3e-3",
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first10": round(float(np.mean(losses[:10])), 4),
        "loss_last10": round(float(np.mean(losses[-10:])), 4),
    }


def cpu_description() -> dict:
    """The CPU model name and its SIMD extensions that matter for INT8 (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = sorted(
                    present & {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}
                )
    except OSError:
        pass
    return {"cpu": name, "simd": flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--train-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="evaluation and timing image size")
    parser.add_argument("--n-calibration", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_light_unet_cpu.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    kwargs = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2}
    model = build_network("light_unet", **kwargs)
    log = train(model, args.train_steps, args.train_size, args.batch, rng)
    model.eval()

    calibration, _ = blob_images(args.n_calibration, args.size, np.random.default_rng(1))
    images, labels = blob_images(args.n_eval, args.size, np.random.default_rng(2))
    evaluation = [images[i : i + 1] for i in range(len(images))]
    truth = [labels[i, :1].astype(bool) for i in range(len(labels))]
    with tempfile.TemporaryDirectory() as work:
        fp32 = Path(work) / "light_unet.onnx"
        example = torch.from_numpy(images[:1])
        export_onnx(model, example, fp32, name="light_unet")
        parity = check_parity(model, fp32, example)
        reports = {}
        for method in ("minmax", "percentile"):
            int8 = Path(work) / f"light_unet.int8.{method}.onnx"
            batches = [calibration[i : i + 1] for i in range(len(calibration))]
            quantize_onnx_int8(fp32, int8, batches, calibrate_method=method)
            reports[method] = int8_report(
                fp32, int8, evaluation, truth, threads=args.threads, repeats=args.repeats
            )
    with torch.no_grad():
        torch_ms = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model(example)
            torch_ms.append((time.perf_counter() - t) * 1000)

    result = {
        "what": "light_unet 2D (3->2 channels, default width) fp32 ONNX vs INT8 QDQ (ONNX Runtime static, "
        "per-channel int8 weights, uint8 activations), with min-max and with percentile calibration",
        "weights": "Kaiming init (seed 0), then trained from scratch for "
        f"{log['steps']} steps ({log['seconds']} s) on synthetic ellipse-on-noise images; "
        "not a real-data model",
        "evaluation": f"{args.n_eval} synthetic images (seed 2), foreground = argmax != background; "
        "latency = median of interleaved ONNX Runtime runs on one image",
        "image_size": [args.size, args.size],
        "calibration_images": args.n_calibration,
        "parameters": count_parameters(model),
        "onnx_fp32_parity_max_abs_diff": parity,
        "torch_fp32_ms_median": round(float(np.median(torch_ms)), 3),
        "int8": reports,
        "training": log,
        "environment": {
            **cpu_description(),
            "cpu_count": os.cpu_count(),
            # Other work on the machine slows both models alike (runs are interleaved), but
            # inflates absolute times: the 1-minute load averages before and after the run.
            "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "monai": monai.__version__,
            "medseg": medseg.__version__,
        },
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
