"""Training throughput end to end (data loading included): medseg's pipeline vs the stock MONAI recipe.

For each network (SegResNet as in the model zoo, and medseg's attention_unet3d), in one run on
the same machine and cases, the same training loop runs twice:

* **stock**: the model-zoo brats_mri_segmentation recipe: a plain ``Dataset`` (every case is
  read and transformed again at every step), ``--workers`` DataLoader workers, fp32,
  LoadImaged -> EnsureChannelFirstd -> ConvertToMultiChannelBasedOnBratsClassesd ->
  Orientationd RAS -> Spacingd 1 mm -> RandSpatialCropd -> 3 RandFlipd ->
  NormalizeIntensityd (non-zero, channel-wise) -> RandScaleIntensityd -> RandShiftIntensityd;
* **medseg**: what the bundles run: ``medseg.transforms.train_transforms`` in a
  ``CacheDataset`` (the deterministic steps, foreground crop and foreground/background
  indices are computed once; each step only crops, flips and shifts intensities), the same
  workers, AMP on CUDA only.

Both use the same network, crop size, Dice loss and Adam. Each step is split into the time
spent waiting for the batch and the time in forward + backward + optimizer step (on CUDA
synchronised, so it is the accelerator-busy time). The first ``--warmup`` steps (worker
start-up) are not counted; the cache build is reported on its own (it is paid once, not
per epoch).

Run from the repository root (fewer steps and a smaller crop on the CPU)::

    python benchmarks/training_vs_stock.py --data DATA --cases 4 --steps 20 --out benchmarks/results/training_gpu.json
    python benchmarks/training_vs_stock.py --data DATA --cases 4 --steps 2 --warmup 1 --crop 96 96 96 \\
        --workers 2 --out benchmarks/results/training_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from common import (
    SEGRESNET_KWARGS,
    Timer,
    case_arguments,
    environment,
    markdown_table,
    write_brats_cases,
    write_results,
)
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceLoss
from monai.transforms import (
    Compose,
    ConvertToMultiChannelBasedOnBratsClassesd,
    EnsureChannelFirstd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Spacingd,
)

from medseg.networks import build_network
from medseg.transforms import train_transforms

NETWORKS = {
    "segresnet": SEGRESNET_KWARGS,
    "attention_unet3d": {
        "spatial_dims": 3,
        "in_channels": 4,
        "out_channels": 3,
        "features": [16, 32, 64, 128, 256],
        "dropout": 0.0,
        "deep_supervision": False,
    },
}
MODALITIES = ("t1", "t1ce", "t2", "flair")


def datalist(cases: list[Path]) -> list[dict]:
    """Image (4 modalities, canonical order) and label files of BraTS 2021 case folders."""
    return [
        {
            "image": [str(c / f"{c.name}_{m}.nii.gz") for m in MODALITIES],
            "label": str(c / f"{c.name}_seg.nii.gz"),
        }
        for c in cases
    ]


def stock_transforms(crop: tuple[int, ...]) -> Compose:
    """The model-zoo brats_mri_segmentation training transforms."""
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys="image"),
            ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
            Orientationd(keys=keys, axcodes="RAS"),
            Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
            RandSpatialCropd(keys=keys, roi_size=crop, random_size=False),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        ]
    )


def loader(kind: str, items: list[dict], crop: tuple[int, ...], workers: int) -> tuple[DataLoader, float]:
    """The DataLoader of ``kind`` (``"stock"`` or ``"medseg"``) and the seconds spent building its cache."""
    if kind == "stock":
        return DataLoader(
            Dataset(items, stock_transforms(crop)),
            batch_size=1,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        ), 0.0
    transform = train_transforms("regions", crop, convention="brats2021", pos_fraction=0.0)
    with Timer() as t:
        dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=max(workers, 1), progress=False)
    return DataLoader(
        dataset, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    ), t.seconds


def measure(
    kind: str,
    network_name: str,
    items: list[dict],
    crop: tuple[int, ...],
    workers: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Train ``steps + warmup`` steps; return the per-step wait and compute seconds of the last ``steps``."""
    torch.manual_seed(0)
    network = build_network(network_name, **NETWORKS[network_name]).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, weight_decay=1e-5)
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)
    amp = kind == "medseg" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    data, cache_seconds = loader(kind, items, crop, workers)
    waits, computes = [], []
    iterator = iter(data)
    for step in range(warmup + steps):
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(data)
            batch = next(iterator)
        image, label = batch["image"].to(device), batch["label"].to(device)
        got = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        print(
            f"{network_name} {kind} step {step}: wait {got - start:.2f} s, compute {done - got:.2f} s, "
            f"loss {float(loss.detach()):.3f}",
            flush=True,
        )
        if step >= warmup:
            waits.append(got - start)
            computes.append(done - got)
    total = sum(waits) + sum(computes)
    return {
        "cache_build_seconds": cache_seconds,
        "wait_seconds": waits,
        "compute_seconds": computes,
        "cases_per_second": steps / total,
        "compute_fraction": sum(computes) / total,
        "input_shape": list(image.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser, weights=False)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=3, default=(224, 224, 144))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--steps", type=int, default=20, help="measured steps per pipeline")
    parser.add_argument("--warmup", type=int, default=2, help="steps not measured (worker start-up)")
    parser.add_argument(
        "--workers", type=int, default=4, help="DataLoader workers for both (stock recipe: 4)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    env = environment()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items = datalist(write_brats_cases(args.data, args.cases, args.shape))
    crop = tuple(args.crop)
    runs = {}
    for name in args.networks:
        runs[name] = {
            kind: measure(kind, name, items, crop, args.workers, args.steps, args.warmup, device)
            for kind in ("stock", "medseg")
        }
    result = {
        "benchmark": "training_vs_stock",
        "cases": args.cases,
        "shape": list(args.shape),
        "crop": list(crop),
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "note": args.note,
        "environment": env,
        "runs": runs,
        "speedup_vs_stock": {
            n: r["medseg"]["cases_per_second"] / r["stock"]["cases_per_second"] for n, r in runs.items()
        },
    }
    busy = "accelerator busy" if device.type == "cuda" else "forward/backward"
    rows = []
    for name, r in runs.items():
        for kind in ("stock", "medseg"):
            m = r[kind]
            rows.append(
                [
                    name,
                    kind,
                    f"{m['cases_per_second']:.3f}",
                    f"{100 * m['compute_fraction']:.1f} %",
                    f"{sum(m['wait_seconds']) / len(m['wait_seconds']):.2f}",
                    f"{sum(m['compute_seconds']) / len(m['compute_seconds']):.2f}",
                    f"{m['cache_build_seconds']:.1f}",
                    f"{result['speedup_vs_stock'][name]:.2f}x" if kind == "medseg" else "1.00x",
                ]
            )
    header = (
        f"Device: {env['device']} ({env['cpu_model']}, {env['cpu_count']} cores); crop {'x'.join(map(str, crop))}, "
        f"{args.cases} cases, {args.steps} measured steps after {args.warmup} warm-up, {args.workers} workers; "
        f"load average {env['loadavg_at_start'][0]:.1f} at start."
    )
    write_results(
        args.out,
        result,
        header
        + "\n\n"
        + markdown_table(
            [
                "network",
                "pipeline",
                "cases/s",
                f"{busy} share",
                "wait/step s",
                "compute/step s",
                "cache build s",
                "vs stock",
            ],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
