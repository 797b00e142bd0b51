"""Training throughput end to end (data loading included): medseg's fast path vs the stock MONAI recipe.

For each network (SegResNet as in the model zoo, and medseg's attention_unet3d), in one run on
the same machine and cases, the same training loop runs over different pipelines:

* **stock**: the model-zoo brats_mri_segmentation recipe: a plain ``Dataset`` (every case is
  read and transformed again at every step), ``--workers`` DataLoader workers, fp32,
  LoadImaged -> EnsureChannelFirstd -> ConvertToMultiChannelBasedOnBratsClassesd ->
  Orientationd RAS -> Spacingd 1 mm -> RandSpatialCropd -> 3 RandFlipd ->
  NormalizeIntensityd (non-zero, channel-wise) -> RandScaleIntensityd -> RandShiftIntensityd;
* **medseg**: what the 3D bundles run by default on this device, built by the same library
  calls their ``configs/train.json`` makes: ``medseg.transforms.train_transforms`` in a
  ``CacheDataset`` (the deterministic steps, foreground crop and foreground/background
  indices are computed once; each step only crops, flips and shifts intensities), and
  ``medseg.engine.fastpath``: on CUDA the patch moves to the GPU as soon as it is cut
  (flips and intensity changes there) and a ``ThreadDataLoader`` feeds the loop, bf16
  autocast, fused Adam; on the CPU worker processes (the channels-last layout is opt-in);
* **levers** (``--levers``): the medseg pipeline with one choice flipped, so each lever's
  share is measured in the same run (``device_augment``, ``channels_last``, ``amp``,
  ``fused_adam``).

Both use the same network, crop size, Dice loss and Adam. Each step is split into the time
spent waiting for the batch and the time in forward + backward + optimizer step (on CUDA
synchronised, so it is the accelerator-busy time). The first ``--warmup`` steps (worker
start-up) are not counted; the cache build is reported on its own (it is paid once, not
per epoch).

Run from the repository root (fewer steps and a smaller crop on the CPU)::

    python benchmarks/training_vs_stock.py --data DATA --cases 20 --steps 40 --levers \
        device_augment channels_last amp --out benchmarks/results/training_gpu.json
    python benchmarks/training_vs_stock.py --data DATA --cases 4 --steps 2 --warmup 1 --crop 96 96 96 \
        --workers 2 --levers channels_last device_augment --out benchmarks/results/training_cpu.json
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

from medseg.engine import fastpath
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


LEVERS = ("device_augment", "channels_last", "amp", "fused_adam")


def medseg_options(device: torch.device) -> dict[str, bool]:
    """The bundles' defaults on ``device`` (``configs/train.json`` takes them from ``medseg.engine.fastpath``)."""
    return {
        "device_augment": fastpath.device_augment_default(device),
        "channels_last": False,  # opt-in: see docs/performance.md
        "amp": device.type == "cuda",
        "fused_adam": fastpath.fused_adam(device),
    }


def loader(
    options: dict[str, bool] | None, items: list[dict], crop: tuple[int, ...], workers: int, device: torch.device
) -> tuple[DataLoader, float]:
    """The stock loader (``options`` is ``None``) or medseg's, and the seconds spent building its cache."""
    if options is None:
        return DataLoader(
            Dataset(items, stock_transforms(crop)),
            batch_size=1,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        ), 0.0
    transform = train_transforms(
        "regions",
        crop,
        convention="brats2021",
        pos_fraction=0.0,
        device=fastpath.augment_device(device, options["device_augment"]),
    )
    with Timer() as t:
        dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=max(workers, 1), progress=False)
    return fastpath.training_loader(dataset, 1, options["device_augment"], num_workers=workers), t.seconds


def measure(
    options: dict[str, bool] | None,
    network_name: str,
    items: list[dict],
    crop: tuple[int, ...],
    workers: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Train ``steps + warmup`` steps; return the per-step wait and compute seconds of the last ``steps``.

    ``options`` ``None`` is the stock recipe (fp32, NCDHW, foreach Adam, worker processes).
    """
    opts = options or dict.fromkeys(LEVERS, False)
    torch.manual_seed(0)
    network = fastpath.place_network(
        build_network(network_name, **NETWORKS[network_name]), device, opts["channels_last"]
    ).train()
    optimizer = torch.optim.Adam(
        network.parameters(), lr=1e-4, weight_decay=1e-5, fused=opts["fused_adam"] or None
    )
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)
    amp = opts["amp"] and device.type == "cuda"
    amp_dtype = fastpath.amp_kwargs(device)["dtype"]
    # As MONAI's SupervisedTrainer: a GradScaler whenever AMP is on (a no-op factor under bf16).
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    to_kwargs = fastpath.batch_to_kwargs(opts["channels_last"])
    data, cache_seconds = loader(options, items, crop, workers, device)
    waits, computes = [], []
    iterator = iter(data)
    label_name = "stock" if options is None else "medseg"
    for step in range(warmup + steps):
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(data)
            batch = next(iterator)
        image = batch["image"].to(device, **to_kwargs)
        label = batch["label"].to(device, **to_kwargs)
        got = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=amp_dtype) if amp else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        print(
            f"{network_name} {label_name} {opts} step {step}: wait {got - start:.2f} s, "
            f"compute {done - got:.2f} s, loss {float(loss.detach()):.3f}",
            flush=True,
        )
        if step >= warmup:
            waits.append(got - start)
            computes.append(done - got)
    total = sum(waits) + sum(computes)
    return {
        "options": options,
        "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp else "float32",
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
    parser.add_argument(
        "--levers",
        nargs="*",
        default=[],
        choices=LEVERS,
        help="also run medseg's pipeline with each of these choices flipped from its default",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    env = environment()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    items = datalist(write_brats_cases(args.data, args.cases, args.shape))
    crop = tuple(args.crop)
    defaults = medseg_options(device)
    arms: dict[str, dict[str, bool] | None] = {"stock": None, "medseg": defaults}
    for lever in args.levers:
        arms[f"medseg, {lever} {'off' if defaults[lever] else 'on'}"] = {**defaults, lever: not defaults[lever]}
    runs = {}
    for name in args.networks:
        runs[name] = {
            arm: measure(options, name, items, crop, args.workers, args.steps, args.warmup, device)
            for arm, options in arms.items()
        }
    result = {
        "benchmark": "training_vs_stock",
        "cases": args.cases,
        "shape": list(args.shape),
        "crop": list(crop),
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "medseg_defaults": defaults,
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
        for kind, m in r.items():
            rows.append(
                [
                    name,
                    kind,
                    f"{m['cases_per_second']:.3f}",
                    f"{100 * m['compute_fraction']:.1f} %",
                    f"{sum(m['wait_seconds']) / len(m['wait_seconds']):.2f}",
                    f"{sum(m['compute_seconds']) / len(m['compute_seconds']):.2f}",
                    f"{m['cache_build_seconds']:.1f}",
                    f"{m['cases_per_second'] / r['stock']['cases_per_second']:.2f}x",
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
