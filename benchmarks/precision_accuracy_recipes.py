"""Part B of ``precision_accuracy.py``: what each recipe brings to the shared loop, stock and medseg.

:class:`Recipe` holds one arm's network, optimiser, loss, loader, precision and scheduler;
:func:`stock_recipe` builds the model-zoo ``brats_mri_segmentation`` recipe and
:func:`medseg_recipe` the pieces of ``bundles/brats_segresnet/configs/train.json``, as
``precision_accuracy.py``'s docstring describes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import SEGRESNET_KWARGS, Timer

REPO = Path(__file__).resolve().parent.parent
BUNDLE_B = REPO / "bundles" / "brats_segresnet"
MODALITIES = ("t1", "t1ce", "t2", "flair")


@dataclass
class Recipe:
    """What one part B arm brings to the shared training loop."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loader: Iterable[dict[str, Any]]
    autocast: torch.dtype | None  # None: fp32
    scaler: bool  # a GradScaler scales the loss
    scheduler: Any  # stepped once per epoch
    wt_index: int  # the WT channel of the network's output
    setup_s: float  # data set-up (cache build), counted on the clock
    to_kwargs: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)


def case_items(folder: Path) -> list[dict[str, Any]]:
    """Image (4 modalities, BraTS order) and label files of the BraTS 2021 case folders in ``folder``."""
    return [{"image": [str(c / f"{c.name}_{m}.nii.gz") for m in MODALITIES], "label": str(c / f"{c.name}_seg.nii.gz")}
            for c in sorted(p for p in folder.iterdir() if p.is_dir())]


def stock_recipe(args: argparse.Namespace, train: Path, device: torch.device) -> Recipe:
    """The model-zoo brats_mri_segmentation recipe (``precision_accuracy.py``'s docstring lists it)."""
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceLoss
    from monai.networks.nets import SegResNet
    from training_vs_stock_recipes import stock_transforms

    network = SegResNet(**SEGRESNET_KWARGS).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, weight_decay=1e-5)
    cuda = device.type == "cuda"
    with Timer() as t:
        loader = DataLoader(Dataset(case_items(train), stock_transforms(tuple(args.crop))), batch_size=1,
                            shuffle=True, num_workers=args.workers)
    return Recipe(
        network=network, optimizer=optimizer,
        loss=DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True),
        loader=loader, autocast=torch.float16 if cuda else None, scaler=cuda,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=300), wt_index=1, setup_s=t.seconds,
        description={"network": "monai SegResNet (common.SEGRESNET_KWARGS)", "optimizer": "Adam lr 1e-4 wd 1e-5",
                     "loss": "DiceLoss(sigmoid, squared_pred)", "autocast": "float16" if cuda else "none (fp32)",
                     "grad_scaler": cuda, "loader": f"Dataset + DataLoader({args.workers} workers)",
                     "scheduler": "CosineAnnealingLR(T_max=300) per epoch", "output_order": ["TC", "WT", "ET"]},
    )


def medseg_recipe(args: argparse.Namespace, train: Path, device: torch.device) -> Recipe:
    """The pieces of ``bundles/brats_segresnet/configs/train.json`` on this device.

    ``precision_accuracy.py``'s docstring lists them.
    """
    from monai.bundle import ConfigParser

    out = args.work / "b" / "medseg_config_output"  # prepare_datalist writes datalist.json here
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_B / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE_B), "dataset_dir": str(train), "output_dir": str(out),
                   "tracking_enabled": False, "roi_size": list(args.crop), "num_workers": args.workers,
                   "seed": args.seeds[0], "train#dataset#data": "$@datalist['training']"})
    parser.parse()
    if torch.device(parser.get_parsed_content("device")).type != device.type:
        raise RuntimeError(f"the bundle trains on {parser.get_parsed_content('device')}, this benchmark on {device}")
    network = parser.get_parsed_content("network")
    with Timer() as t:
        loader = parser.get_parsed_content("train#dataloader")  # builds the CacheDataset
    amp = bool(parser.get_parsed_content("train#trainer#amp"))
    dtype = parser.get_parsed_content("train#trainer#amp_kwargs")["dtype"] if amp else None
    names = list(parser.get_parsed_content("output_names"))
    return Recipe(
        network=network.train(), optimizer=parser.get_parsed_content("optimizer"), loss=parser.get_parsed_content("loss"),
        loader=loader, autocast=dtype, scaler=amp, scheduler=parser.get_parsed_content("lr_scheduler"),
        wt_index=names.index("WT"), setup_s=t.seconds, to_kwargs=parser.get_parsed_content("train#trainer#to_kwargs"),
        description={"config": str((BUNDLE_B / "configs" / "train.json").relative_to(REPO)),
                     "network": parser.get_parsed_content("network_spec"),
                     "optimizer": type(parser.get_parsed_content("optimizer")).__name__,
                     "loss": parser.get_parsed_content("loss_spec"),
                     "autocast": str(dtype).removeprefix("torch.") if dtype is not None else "none (fp32)",
                     "grad_scaler": amp, "loader": type(loader).__name__,
                     "device_augment": bool(parser.get_parsed_content("device_augment")),
                     "cache_build_s": t.seconds, "output_order": names},
    )

