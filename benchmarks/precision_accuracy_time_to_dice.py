"""Part B of ``precision_accuracy.py``: train each recipe until its held-out WT Dice reaches the threshold.

One loop for both arms (MONAI ``SupervisedTrainer``'s step), a clock that excludes validation,
and one shared sliding-window validation on the held-out cases.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SEGRESNET_KWARGS
from precision_accuracy_recipes import Recipe, case_items, medseg_recipe, stock_recipe


def heldout_volumes(heldout: Path, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out cases as both arms' validation sees them: ``(image [1,4,X,Y,Z], WT mask [X,Y,Z])`` on ``device``.

    Load, channel first, RAS, non-zero channel-wise z-score: the normalisation both recipes
    train with; no resampling (the cases are 1 mm, as BraTS).
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Orientationd
    from monai.utils import convert_to_tensor

    transform = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                         Orientationd(keys=["image", "label"], axcodes="RAS"),
                         NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    out = []
    for item in case_items(heldout):
        data = transform(item)
        image = convert_to_tensor(data["image"], dtype=torch.float32, track_meta=False).unsqueeze(0).to(device)
        out.append((image, (convert_to_tensor(data["label"], track_meta=False)[0] > 0).to(device)))
    return out


def validate(recipe: Recipe, cases: list[tuple[torch.Tensor, torch.Tensor]], crop: tuple[int, ...]) -> float:
    """Mean held-out WT Dice of the recipe's network now (sliding window, fp32, sigmoid > 0.5)."""
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=crop, sw_batch_size=4, overlap=0.5, mode="gaussian")
    recipe.network.eval()
    dices = []
    with torch.no_grad():
        for image, truth in cases:
            logits = inferer(image, recipe.network)
            pred = logits[0, recipe.wt_index] > 0  # sigmoid(x) > 0.5
            total = int(pred.sum()) + int(truth.sum())
            dices.append(1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total)
    recipe.network.train()
    return float(np.mean(dices))


def step(recipe: Recipe, batch: dict[str, Any], device: torch.device, scaler: torch.amp.GradScaler) -> float:
    """One training step as MONAI's ``SupervisedTrainer`` takes it; the loss is read back (a host sync)."""
    import contextlib

    image = batch["image"].to(device, **recipe.to_kwargs)
    label = batch["label"].to(device, **recipe.to_kwargs)
    recipe.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device.type, dtype=recipe.autocast) if recipe.autocast is not None
                else contextlib.nullcontext())
    with autocast:
        loss = recipe.loss(recipe.network(image), label).mean()
    scaler.scale(loss).backward()
    scaler.step(recipe.optimizer)
    scaler.update()
    return float(loss.detach())


def time_to_threshold(args: argparse.Namespace, recipe: Recipe, cases: list[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device) -> dict[str, Any]:
    """Train until the held-out WT Dice reaches ``--threshold`` or the clock reaches ``--max-seconds``."""
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.scaler)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    curve: list[dict[str, float]] = []
    steps, epochs, paused, reached, loss = 0, 0, 0.0, None, float("nan")
    start = time.perf_counter()

    def clock() -> float:
        return recipe.setup_s + time.perf_counter() - start - paused

    done = False
    while not done:
        for batch in recipe.loader:
            loss = step(recipe, batch, device, scaler)
            steps += 1
            if steps % args.val_every and clock() < args.max_seconds:
                continue
            sync()
            at, began = clock(), time.perf_counter()
            dice = validate(recipe, cases, tuple(args.crop))
            paused += time.perf_counter() - began
            curve.append({"step": steps, "epoch": epochs, "clock_s": at, "wt_dice": dice, "loss": loss,
                          "validation_s": time.perf_counter() - began})
            print(f"  step {steps} (epoch {epochs}) clock {at:.1f} s: held-out WT Dice {dice:.4f}, loss {loss:.4f}",
                  flush=True)
            if dice >= args.threshold:
                reached = at
            if reached is not None or at >= args.max_seconds:
                done = True
                break
        else:
            epochs += 1
            recipe.scheduler.step()
    return {"reached": reached is not None, "seconds_to_threshold": reached, "steps": steps,
            "epochs_completed": epochs, "clock_at_end_s": curve[-1]["clock_s"] if curve else clock(),
            "best_wt_dice": max((c["wt_dice"] for c in curve), default=None),
            "final_wt_dice": curve[-1]["wt_dice"] if curve else None, "setup_s": recipe.setup_s,
            "validation_s_total": paused, "curve": curve, "recipe": recipe.description}


def warm_up(device: torch.device, crop: tuple[int, ...]) -> None:
    """One untimed forward and backward of a throwaway SegResNet, so neither arm pays the first kernels' loading."""
    from monai.networks.nets import SegResNet

    network = SegResNet(**SEGRESNET_KWARGS).to(device)
    network(torch.randn(1, 4, *crop, device=device)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def part_b(args: argparse.Namespace, train: Path, heldout: Path) -> dict[str, Any]:
    """Both recipes, medseg first, each from the same seed; time to the held-out WT Dice threshold."""
    from medseg.engine.determinism import seed_everything

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = heldout_volumes(heldout, device)
    warm_up(device, tuple(args.crop))
    arms: dict[str, Any] = {}
    for name, build in (("medseg", medseg_recipe), ("stock", stock_recipe)):
        seed_everything(args.seeds[0], deterministic=False)  # the bundles' default: fast kernels allowed
        print(f"part B: {name}", flush=True)
        recipe = build(args, train, device)
        arms[name] = time_to_threshold(args, recipe, cases, device)
        del recipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ratio = None
    if arms["medseg"]["reached"] and arms["stock"]["reached"]:
        ratio = arms["stock"]["seconds_to_threshold"] / arms["medseg"]["seconds_to_threshold"]
    return {"device": str(device), "threshold": args.threshold, "max_seconds": args.max_seconds,
            "val_every": args.val_every, "seed": args.seeds[0], "arms": arms, "stock_over_medseg": ratio}

