"""The ISIC bundles on the CPU: training budget, held-out Jaccard, time per image, parameters, INT8.

Trains ``bundles/isic_light_unet`` from scratch through medseg's own training path
(``medseg train`` = :func:`medseg.engine.runner.run_training`) on synthetic ISIC-like images
with the settings its docs state as the CPU budget, segments held-out synthetic images
(another seed) with ``medseg infer`` (single-scale and ``--multiscale``), scores them with
``medseg evaluate --task isic``, times the networks of both ISIC bundles on one 256x256
image, and exports the trained light UNet to ONNX and INT8 (ONNX Runtime static
quantization calibrated on training images) to compare latency and Dice against fp32.

Run from the repository root (about 10 minutes on 2 idle cores)::

    python benchmarks/isic_cpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import monai
import numpy as np
import onnxruntime
import torch

import medseg
from medseg.data.synth.isic import write_isic_dataset
from medseg.evaluation.runner import evaluate
from medseg.export import check_parity, export_onnx, int8_report, quantize_onnx_int8
from medseg.inference import InferenceOptions, run_inference
from medseg.inference.model import load_inference_model
from medseg.networks import build_network
from medseg.networks.summary import count_parameters
from medseg.transforms.planar import fit_geometry, read_mask, read_rgb, to_network_size
from medseg.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
LIGHT = REPO / "bundles" / "isic_light_unet"
DEEPLAB = REPO / "bundles" / "isic_deeplabv3plus"
#: The budget stated in bundles/isic_light_unet/docs/README.md (and used by its accuracy test).
BUDGET = {"max_epochs": 30, "batch_size": 8, "roi_size": [96, 96], "learning_rate": 0.003, "warmup_epochs": 1,
          "num_workers": 0, "val_interval": 10, "deterministic": True}
IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"


def _network_of(bundle: Path) -> torch.nn.Module:
    spec = json.loads((bundle / "configs" / "train.json").read_text())["network_spec"]
    return build_network(spec["name"], **spec["kwargs"]).eval()


def _torch_ms(model: torch.nn.Module, size: int, repeats: int) -> float:
    x = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def _at_network_size(data: Path, size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images ``(1, 3, H, W)`` in ``[0, 1]`` and masks ``(1, H, W)`` at the network size (as training sees them)."""
    images, masks = [], []
    for path in sorted((data / IMAGE_DIR).glob("*.jpg")):
        rgb = read_rgb(path)
        geometry = fit_geometry(rgb.shape[:2], size, "stretch")
        image = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
        images.append(to_network_size(image, geometry, "bilinear")[None].numpy())
        mask = read_mask(data / MASK_DIR / f"{path.stem}_segmentation.png", rgb.shape[:2])
        masks.append(to_network_size(torch.from_numpy(mask[None].astype(np.float32)), geometry, "nearest").numpy() > 0)
    return images, masks


def _segment_and_score(bundle_out: Path, heldout: Path, work: Path, multiscale: bool) -> dict:
    model = load_inference_model(bundle_out)
    preds = work / ("preds_multiscale" if multiscale else "preds")
    start = time.perf_counter()
    report = run_inference(model, [heldout / IMAGE_DIR], preds,
                           InferenceOptions(device="cpu", progress=False, multiscale=multiscale))
    wall = time.perf_counter() - start
    result = evaluate(preds, heldout, "isic", work / f"eval_{preds.name}" / "metrics.csv", montage_cases=0)
    per_image = [o.seconds for o in report.written]
    return {
        "images": len(per_image),
        "seconds_per_image_median": round(statistics.median(per_image), 4),
        "seconds_total": round(wall, 2),
        "thresholded_jaccard": round(result.summary["thresholded_jaccard"]["mean"], 4),
        "jaccard": round(result.summary["jaccard"]["mean"], 4),
        "dice": round(result.summary["dice"]["mean"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-cases", type=int, default=40)
    parser.add_argument("--test-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trained", type=Path, help="an existing output bundle of isic_light_unet (skips training)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "isic_cpu.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train, heldout = work / "train", work / "heldout"
        write_isic_dataset(train, cases=args.train_cases, size=(192, 144), seed=0)
        write_isic_dataset(heldout, cases=args.test_cases, size=(192, 144), seed=99)
        training: dict = {"settings": BUDGET, "train_images": args.train_cases, "image_size": [144, 192]}
        bundle_out = args.trained
        if bundle_out is None:
            from medseg.engine.runner import run_training

            bundle_out = work / "light_unet"
            start = time.perf_counter()
            result = run_training(LIGHT, data=train, overrides=dict(BUDGET), output=bundle_out, tracking=False)
            training["seconds"] = round(time.perf_counter() - start, 1)
            training["best_val_mean_dice"] = round(float(result.best_metric), 4) if result.best_metric else None

        heldout_fp32 = _segment_and_score(bundle_out, heldout, work, multiscale=False)
        heldout_multi = _segment_and_score(bundle_out, heldout, work, multiscale=True)

        model = load_inference_model(bundle_out)
        size = model.image_size
        calibration, _ = _at_network_size(train, size)
        images, masks = _at_network_size(heldout, size)
        fp32, int8 = work / "light_unet.onnx", work / "light_unet.int8.onnx"
        example = torch.from_numpy(images[0])
        export_onnx(model.network, example, fp32, name="light_unet")
        parity = check_parity(model.network, fp32, example)
        quantize_onnx_int8(fp32, int8, calibration[:32], calibrate_method="percentile")
        int8_figures = int8_report(fp32, int8, images, [m[0:1] for m in masks], threads=args.threads,
                                   repeats=args.repeats)

    light, deeplab = _network_of(LIGHT), _network_of(DEEPLAB)
    results = {
        "what": "ISIC bundles on the CPU: light UNet trained from scratch on synthetic ISIC-like images "
                "(medseg data synth isic), scored on held-out synthetic images; network latency; INT8 vs fp32",
        "training": training,
        "heldout_single_scale": heldout_fp32,
        "heldout_multiscale": heldout_multi,
        "parameters": {"isic_light_unet": count_parameters(light), "isic_deeplabv3plus": count_parameters(deeplab)},
        "network_ms_256x256_torch_fp32": {"isic_light_unet": _torch_ms(light, 256, args.repeats),
                                          "isic_deeplabv3plus": _torch_ms(deeplab, 256, args.repeats)},
        "int8": {"input": [1, 3, *size], "calibration": "percentile, 32 training images",
                 "onnx_fp32_parity_max_abs_diff": float(parity), **int8_figures},
        "environment": {
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "onnxruntime": onnxruntime.__version__, "medseg": medseg.__version__,
        },
    }
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
