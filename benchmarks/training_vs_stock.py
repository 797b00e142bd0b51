"""Training throughput end to end (data loading included): medseg's fast path vs the stock MONAI recipe.

For each network (SegResNet as in the model zoo, and medseg's attention_unet3d), in one run on
the same machine and cases, the same training loop runs over different pipelines:

* **stock (zoo: fp16 AMP)**: the model-zoo brats_mri_segmentation recipe as its ``train.json``
  runs it: a plain ``Dataset`` (every case is read and transformed again at every step),
  ``--workers`` DataLoader workers, float16 autocast with a GradScaler (the zoo's ``amp: true``),
  the loss read back at every step (its ``StatsHandler``), LoadImaged -> EnsureChannelFirstd ->
  ConvertToMultiChannelBasedOnBratsClassesd -> Orientationd RAS -> Spacingd 1 mm ->
  RandSpatialCropd -> 3 RandFlipd -> NormalizeIntensityd (non-zero, channel-wise) ->
  RandScaleIntensityd -> RandShiftIntensityd. **stock, fp32** is the same without autocast.
  Every ratio is against the first;
* **medseg**: what the 3D bundles run by default on this device for this network, built by the
  same library calls their ``configs/train.json`` makes: ``medseg.transforms.train_transforms``
  in a ``CacheDataset`` (the deterministic steps, foreground crop and foreground/background
  indices are computed once; each step only crops, flips and shifts intensities), and
  ``medseg.engine.fastpath``: on CUDA the patch moves to the GPU as soon as it is cut (flips
  and intensity changes there), a ``ThreadDataLoader`` feeds the loop, the autocast type of
  ``fastpath.training_precision`` for the network, fused Adam, and no host synchronisation in
  the step (the loss is read back every 10 steps, when a trainer would log it);
* **levers** (``--levers``): the medseg pipeline with one choice flipped, so each lever's
  share is measured in the same run: ``precision`` (each of fp32 with TF32, fp16 with a
  GradScaler, bf16), ``device_augment``, ``channels_last``, ``fused_adam``, ``compile``
  (``torch.compile`` of network and loss; the compilation is the first warm-up step, reported
  as ``compile s`` and not counted), ``cuda_graphs`` (the same with the network compiled in
  ``mode="reduce-overhead"``: inductor records its kernels as CUDA graphs, as the crop's shape is
  static; CUDA only, at least 3 warm-up steps: compile, record, replay) and ``sync_every_step``.

All use the same network, crop size, Dice loss and Adam. Each measured step is split into the
host's wait for its batch and, on CUDA, the device time from the batch's arrival to the end of
the optimizer step (CUDA events, read after the run); throughput is the measured steps over
their wall-clock time with the device drained at both ends, and the device-busy share is the
summed device time over that wall time. The first ``--warmup`` steps (worker start-up,
compilation) are not counted; the cache build is reported on its own (paid once per run, and
shared by the arms here). The JSON and table are rewritten after every arm, so a run cut
short keeps what it measured.

This file holds the loader, the timed loop and the command line; the arms are
``training_vs_stock_recipes.py`` and the JSON and table ``training_vs_stock_report.py``.

Run from the repository root (fewer steps and a smaller crop on the CPU)::

    python benchmarks/training_vs_stock.py --data DATA --cases 8 --steps 20 --levers \
        precision channels_last device_augment compile --out benchmarks/results/training_gpu.json
    python benchmarks/training_vs_stock.py --data DATA --cases 4 --steps 2 --warmup 1 --crop 96 96 96 \
        --workers 2 --levers channels_last device_augment --out benchmarks/results/training_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from common import Timer, case_arguments, environment, write_brats_cases
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceLoss
from training_vs_stock_recipes import (
    LEVERS,
    NETWORKS,
    datalist,
    lever_arms,
    medseg_options,
    stock_recipes,
    stock_transforms,
)
from training_vs_stock_report import write_report

from medseg.engine import fastpath
from medseg.networks import build_network
from medseg.transforms import train_transforms

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def loader(
    options: dict, items: list[dict], crop: tuple[int, ...], workers: int, device: torch.device,
    caches: dict[bool, tuple[CacheDataset, float]],
) -> tuple[DataLoader, float]:
    """The stock loader or medseg's, and the seconds spent building its cache.

    medseg's ``CacheDataset`` is built once per ``device_augment`` choice and shared by the
    arms that make the same choice (the cache holds the deterministic steps only).
    """
    if options["loader"] == "stock":
        return DataLoader(
            Dataset(items, stock_transforms(crop)),
            batch_size=1,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        ), 0.0
    augment = options["device_augment"]
    if augment not in caches:
        transform = train_transforms(
            "regions", crop, convention="brats2021", pos_fraction=0.0,
            device=fastpath.augment_device(device, augment),
        )
        with Timer() as t:
            dataset = CacheDataset(items, transform, cache_rate=1.0, num_workers=max(workers, 1), progress=False)
        caches[augment] = (dataset, t.seconds)
    dataset, seconds = caches[augment]
    return fastpath.training_loader(dataset, 1, augment, num_workers=workers), seconds


def _precision(options: dict, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast type (``None``: fp32, TF32 allowed on CUDA) and whether a GradScaler scales the loss (fp16)."""
    if device.type != "cuda" or options["precision"] == "fp32":
        return None, False
    return _DTYPES[options["precision"]], options["precision"] == "fp16"


def measure(
    options: dict,
    network_name: str,
    items: list[dict],
    crop: tuple[int, ...],
    workers: int,
    steps: int,
    warmup: int,
    device: torch.device,
    caches: dict[bool, tuple[CacheDataset, float]],
    log_every: int = 10,
) -> dict:
    """Train ``steps + warmup`` steps; return the timings of the last ``steps``.

    Per step: the host's wait for the batch and, on CUDA, the device time from the batch's
    arrival to the end of the optimizer step (CUDA events, read after the run: the step itself
    never waits for the device unless ``sync_every_step``). Throughput is the measured steps
    over their wall-clock time, the device drained at both ends.
    """
    torch.manual_seed(0)
    network = fastpath.place_network(
        build_network(network_name, **NETWORKS[network_name]), device, options["channels_last"]
    ).train()
    optimizer = torch.optim.Adam(
        network.parameters(), lr=1e-4, weight_decay=1e-5, fused=options["fused_adam"] or None
    )
    loss_fn = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)
    forward, criterion = network, loss_fn
    if options["compile"]:
        mode = "reduce-overhead" if options["cuda_graphs"] else "default"  # as the bundles' compile_mode id
        forward, criterion = torch.compile(network, **fastpath.compile_kwargs(mode)), torch.compile(loss_fn)
        if options["cuda_graphs"]:
            warmup = max(warmup, 3)  # compile, record the graphs, then replay them
    dtype, scaled = _precision(options, device)
    scaler = torch.amp.GradScaler("cuda", enabled=scaled)
    cuda = device.type == "cuda"
    # fp32 on CUDA: TF32 in matrix products too (cuDNN's convolutions use it by default).
    torch.backends.cuda.matmul.allow_tf32 = cuda and dtype is None
    to_kwargs = fastpath.batch_to_kwargs(options["channels_last"])
    data, cache_seconds = loader(options, items, crop, workers, device, caches)
    waits: list[float] = []
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    host_computes: list[float] = []
    warmup_seconds: list[float] = []
    losses: list[float] = []
    iterator = iter(data)
    label_name = "stock" if options["loader"] == "stock" else "medseg"
    measured_start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            measured_start = time.perf_counter()
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(data)
            batch = next(iterator)
        image = batch["image"].to(device, non_blocking=True, **to_kwargs)
        label = batch["label"].to(device, non_blocking=True, **to_kwargs)
        if options["compile"]:  # dynamo traces plain tensors, not MONAI's MetaTensor subclass
            image, label = image.as_tensor(), label.as_tensor()
        got = time.perf_counter()
        if cuda:
            begin_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin_event.record()
        optimizer.zero_grad(set_to_none=True)
        if options["cuda_graphs"]:
            torch.compiler.cudagraph_mark_step_begin()  # last step's graph outputs may be overwritten
        autocast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            loss = criterion(forward(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            end_event.record()
        if options["sync_every_step"] or step < warmup or (step - warmup) % log_every == 0:
            losses.append(float(loss.detach()))  # a host synchronisation
        done = time.perf_counter()
        if step < warmup:
            warmup_seconds.append(done - start)
            continue
        waits.append(got - start)
        host_computes.append(done - got)
        if cuda:
            events.append((begin_event, end_event))
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - measured_start
    computes = [b.elapsed_time(e) / 1000 for b, e in events] if cuda else host_computes
    print(f"{network_name} {label_name} {options}: {steps / wall:.3f} cases/s, device busy "
          f"{sum(computes) / wall:.1%}, first steps {[round(s, 1) for s in warmup_seconds]} s, "
          f"losses {[round(x, 3) for x in losses[-3:]]}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    return {
        "options": options,
        "amp_dtype": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
        "grad_scaler": scaled,
        "cache_build_seconds": cache_seconds,
        "warmup_step_seconds": warmup_seconds,
        "compile_seconds": warmup_seconds[0] if options["compile"] and warmup_seconds else None,
        "warmup": warmup,
        "wait_seconds": waits,
        "compute_seconds": computes,
        "measured_wall_seconds": wall,
        "cases_per_second": steps / wall,
        "compute_fraction": sum(computes) / wall,
        "final_loss": losses[-1] if losses else None,
        "input_shape": list(image.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser, weights=False)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=3, default=(224, 224, 144))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--steps", type=int, default=20, help="measured steps per pipeline")
    parser.add_argument("--warmup", type=int, default=2, help="steps not measured (worker start-up, compilation)")
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
    stock = next(iter(stock_recipes()))
    runs: dict[str, dict] = {}
    defaults = {name: medseg_options(device, name) for name in args.networks}
    # Arms that are slow to measure (compilation) come after every network's other arms, so a run
    # cut short keeps the rest; the cache is built once per device_augment choice, for every network.
    plans = {name: {**stock_recipes(), "medseg": defaults[name], **lever_arms(defaults[name], args.levers, device)}
             for name in args.networks}
    caches: dict[bool, tuple[CacheDataset, float]] = {}  # the cached steps do not depend on the network
    for slow in (False, True):
        for name, arms in plans.items():
            for arm, options in arms.items():
                if options["compile"] != slow:
                    continue
                runs.setdefault(name, {})[arm] = measure(options, name, items, crop, args.workers, args.steps,
                                                         args.warmup, device, caches)
                write_report(args, env, crop, defaults, runs, stock, device)  # after every arm: a cut run keeps its rows


if __name__ == "__main__":
    main()
