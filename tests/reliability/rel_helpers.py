"""Helpers for the reliability tests: tiny bundles (the shared training helpers are in ``tiny_training``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medseg.checkpoint import save_checkpoint
from medseg.networks import build_network

BRATS_CHANNELS = ["t1", "t1ce", "t2", "flair"]

def brats_bundle(root: Path, seed: int = 0) -> Path:
    """An output-bundle-like folder with a tiny 4-channel BraTS-regions network (random weights).

    MONAI's UNet with two levels and batch norm: ~100x faster on the CPU than the attention
    U-Net with instance norm at this size, so the inference tests measure medseg, not the network.
    """
    network = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                          "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch"}}
    torch.manual_seed(seed)
    model = build_network(network["name"], **network["kwargs"])
    (root / "configs").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"roi_size": [16, 16, 16], "sw_batch_size": 2, "sw_overlap": 0.25,
                              "network_spec": network, "label_convention": "brats2021"}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    prep = {"task": "regions", "orientation": "RAS", "normalize": "nonzero_channel_wise",
            "channels": BRATS_CHANNELS}
    save_checkpoint(root / "models" / "model.pt", model, network=network, label_convention="brats2021",
                    channel_names=BRATS_CHANNELS, preprocessing=prep,
                    extra={"output_names": ["TC", "WT", "ET"]})
    return root


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, as paths relative to it (hidden temporary files included)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def single_channel_bundle(root: Path, seed: int = 0, network: dict[str, Any] | None = None) -> Path:
    """An output-bundle-like folder with a tiny 1-channel, 2-class network (random weights), e.g. for DICOM.

    Args:
        root: the folder to write.
        seed: torch seed of the random weights.
        network: ``{"name", "kwargs"}``; default a tiny attention U-Net (features 4/8/16).
    """
    network = network or {
        "name": "attention_unet3d",
        "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 8, 16]},
    }
    torch.manual_seed(seed)
    model = build_network(network["name"], **network["kwargs"])
    (root / "configs").mkdir(parents=True, exist_ok=True)
    config = {"roi_size": [16, 16, 16], "sw_batch_size": 2, "sw_overlap": 0.25, "network_spec": network,
              "label_convention": "toy"}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "label_values": [0, 1], "channels": ["image"]}
    save_checkpoint(root / "models" / "model.pt", model, network=network, label_convention="toy",
                    channel_names=["image"], preprocessing=prep)
    return root


def pydicom_series(*parts: str) -> Path:
    """A folder of DICOM files shipped with pydicom (real files from an installed package)."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / Path(*parts)


def volume_file(path: Path, seed: int) -> Path:
    """Write a random 20x18x12 float32 NIfTI volume with an LPS, shifted affine to ``path``."""
    rng = np.random.default_rng(seed)
    affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.uniform(1, 100, (20, 18, 12)).astype(np.float32), affine), str(path))
    return path
