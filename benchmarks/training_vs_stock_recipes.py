"""``training_vs_stock.py``'s arms: the networks, the cases' files, the stock model-zoo recipe and medseg's
defaults with one lever flipped per arm (what each arm runs, not how it is timed)."""

from __future__ import annotations

from pathlib import Path

import torch
from common import SEGRESNET_KWARGS
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


#: The choices one arm makes. Stock arms use the zoo's loader (``loader="stock"``).
FIELDS = ("loader", "precision", "device_augment", "channels_last", "fused_adam", "compile", "cuda_graphs",
          "sync_every_step")
#: Levers ``--levers`` can flip on medseg's defaults, one per arm. ``precision`` runs every other precision.
LEVERS = ("precision", "device_augment", "channels_last", "fused_adam", "compile", "cuda_graphs", "sync_every_step")
PRECISIONS = ("fp32", "fp16", "bf16")


def stock_recipes() -> dict[str, dict]:
    """The model-zoo recipe as its ``train.json`` runs it (AMP: float16 autocast and a GradScaler), and in fp32.

    The zoo's trainer logs the loss at every iteration (MONAI's ``StatsHandler``), which reads it
    back to the host: a synchronisation per step, kept here.
    """
    zoo = {"loader": "stock", "precision": "fp16", "device_augment": False, "channels_last": False,
           "fused_adam": False, "compile": False, "cuda_graphs": False, "sync_every_step": True}
    return {"stock (zoo: fp16 AMP)": zoo, "stock, fp32": {**zoo, "precision": "fp32"}}


def medseg_options(device: torch.device, network_name: str) -> dict:
    """The bundles' defaults for ``network_name`` on ``device`` (``configs/train.json`` takes them from ``medseg.engine.fastpath``)."""
    return {
        "loader": "medseg",
        "precision": fastpath.training_precision(device, network_name),
        "device_augment": fastpath.device_augment_default(device),
        "channels_last": False,  # opt-in: see docs/performance.md
        "fused_adam": fastpath.fused_adam(device),
        "compile": False,
        "cuda_graphs": False,
        "sync_every_step": False,  # the loss is read back only when logged
    }


def lever_arms(defaults: dict, levers: list[str], device: torch.device) -> dict[str, dict]:
    """One arm per lever: ``defaults`` with that choice flipped (each other precision for ``precision``)."""
    arms = {}
    for lever in levers:
        if lever == "precision":
            for precision in PRECISIONS:
                if precision != defaults["precision"] and (device.type == "cuda" or precision == "fp32"):
                    arms[f"medseg, {precision}"] = {**defaults, "precision": precision}
        elif lever == "cuda_graphs":
            if device.type == "cuda":  # CUDA graphs are a CUDA lever
                arms["medseg, compiled with CUDA graphs"] = {**defaults, "compile": True, "cuda_graphs": True}
        else:
            arms[f"medseg, {lever} {'off' if defaults[lever] else 'on'}"] = {**defaults, lever: not defaults[lever]}
    return arms
