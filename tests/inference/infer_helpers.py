"""Helpers for inference tests: tiny output bundles with known outputs, real files from installed packages.

The "pointwise" network is a 1x1x1 convolution with hand-set weights, so its output is a
known function of the preprocessed input: tests can compute the exact expected labels
from the original voxels and so check label values and geometry at once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from medseg.checkpoint import save_checkpoint
from medseg.networks import list_networks, register_network

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
POINTWISE = "infer_test_pointwise"
ROI = [16, 16, 16]


if POINTWISE not in list_networks():

    # Registered for the whole test session, so it carries a smoke config like every network:
    # the registry's loop over all networks then tests it too.
    @register_network(POINTWISE, spatial_dims=(3,), paper="test only: a 1x1x1 convolution",
                      smoke_kwargs={})
    def _pointwise(spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
        return nn.Conv3d(in_channels, out_channels, kernel_size=1)


def pydicom_dir(*parts: str) -> Path:
    """A folder of pydicom's bundled test files."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / Path(*parts)


def make_bundle(root: Path, network: dict, state: dict[str, torch.Tensor], *, convention: str | None,
                channels: list[str], preprocessing: dict, output_names: list[str] | None = None,
                roi: list[int] | None = None) -> Path:
    """Write an output-bundle-like folder: configs/inference.json and models/model.pt."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    config = {"roi_size": roi or ROI, "sw_batch_size": 2, "sw_overlap": 0.25, "network_spec": network,
              "label_convention": convention,
              # Must never be evaluated: medseg infer reads plain values only.
              "device": "$__import__('pathlib').Path('EXECUTED').touch()"}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    save_checkpoint(root / "models" / "model.pt", state, network=network, label_convention=convention,
                    channel_names=channels, preprocessing=preprocessing, extra={"output_names": output_names})
    return root


def pointwise_bundle(root: Path, weight: list[list[float]], bias: list[float], *, convention: str | None,
                     channels: list[str], task: str, label_values: list[int] | None = None,
                     output_names: list[str] | None = None) -> Path:
    """A bundle whose network computes ``logits = weight @ x + bias`` at every voxel."""
    w = torch.tensor(weight, dtype=torch.float32)
    network = {"name": POINTWISE, "kwargs": {"spatial_dims": 3, "in_channels": w.shape[1], "out_channels": w.shape[0]}}
    state = {"weight": w[:, :, None, None, None].contiguous(), "bias": torch.tensor(bias, dtype=torch.float32)}
    prep = {"task": task, "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "channels": channels}
    if label_values is not None:
        prep["label_values"] = label_values
    return make_bundle(root, network, state, convention=convention, channels=channels, preprocessing=prep,
                       output_names=output_names)


def multiclass_pointwise(root: Path) -> Path:
    """1 channel -> 3 classes with label values 0/1/4: class 0 if z < 0, 1 if 0 < z < 2, 4 if z > 2."""
    return pointwise_bundle(root, [[0.0], [10.0], [20.0]], [0.0, 0.0, -20.0], convention="toy",
                            channels=["image"], task="multiclass", label_values=[0, 1, 4])


def zscore(array: np.ndarray) -> np.ndarray:
    """MONAI's NormalizeIntensity(nonzero=True) of one channel, in float64."""
    array = array.astype(np.float64)
    out = np.zeros_like(array)
    nz = array != 0
    out[nz] = (array[nz] - array[nz].mean()) / array[nz].std()
    return out


def expected_multiclass(original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected labels of :func:`multiclass_pointwise` and a mask of voxels away from the class boundaries."""
    z = zscore(original)
    labels = np.where(z > 2, 4, np.where(z > 0, 1, 0)).astype(np.uint8)
    clear = (np.abs(z) > 0.02) & (np.abs(z - 2) > 0.02)
    return labels, clear


def save_volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save a NIfTI volume with a non-identity (LPS, shifted) affine by default."""
    if affine is None:
        affine = np.array([[-1.5, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def random_volume(seed: int, shape: tuple[int, int, int] = (20, 18, 12)) -> np.ndarray:
    """A positive random volume with a zero border (so non-zero normalisation has something to skip)."""
    rng = np.random.default_rng(seed)
    vol = rng.uniform(1, 100, size=shape).astype(np.float32)
    vol[:2] = 0
    return vol


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a folder (read-only package data) to a writable place."""
    shutil.copytree(src, dst)
    return dst
