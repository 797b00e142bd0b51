"""The deterministic steps a plan (:mod:`medseg.planning`) decides: crop, per-channel normalisation, resampling.

They run after the reorientation to RAS, in nnU-Net's order: crop to the non-zero box,
normalise each channel at its native spacing, then resample to the target spacing. All but
the normalisation are MONAI transforms that MONAI's ``Invertd`` undoes at inference
(:func:`medseg.inference.preprocess.restore_geometry`).

Normalisation schemes, per channel:

``"ct"``
    clip to the dataset's foreground 0.5 and 99.5 percentiles and z-score with the dataset's
    foreground mean and std (one MONAI ``ScaleIntensityRange`` with ``clip=True``: the clip
    range mapped onto its z-scores).
``"zscore"``
    per image, over all voxels (MONAI ``NormalizeIntensity``).
``"zscore_nonzero"``
    per image, over the non-zero voxels; the others stay 0 (``NormalizeIntensity(nonzero=True)``).

Resampling: images with a spline of ``image_order``, labels with ``label_order`` (0: nearest).
With a ``separate_axis``, the other two axes are resampled first (the separate axis keeps its
spacing) and then the separate axis alone with ``separate_axis_order``, as nnU-Net resamples
anisotropic data: thick slices are not blurred into their neighbours.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CropForegroundd,
    Invertd,
    MapTransform,
    NormalizeIntensity,
    ScaleIntensityRange,
    Spacingd,
)
from monai.utils import ensure_tuple_rep

from medseg.errors import InvalidValueError
from medseg.transforms.keys import IMAGE

__all__ = ["InvertProbabilitiesd", "NormalizeChannelsd", "linear_for_splines", "nonzero", "planned_steps",
           "resampling_steps"]

_STD_FLOOR = 1e-8


def nonzero(image: torch.Tensor) -> torch.Tensor:
    """Voxels where any channel is non-zero (nnU-Net's crop mask; ``> 0`` would crop CT's air away wrongly)."""
    return image != 0


class NormalizeChannelsd(MapTransform):
    """Normalise each channel of ``keys`` by its own scheme (see the module docstring).

    Args:
        keys: the image key(s).
        normalization: one scheme per channel.
        intensity_properties: per channel, the dataset's foreground ``mean``, ``std``,
            ``percentile_00_5`` and ``percentile_99_5`` (used by ``"ct"`` channels).
    """

    def __init__(self, keys: KeysCollection, normalization: Sequence[str],
                 intensity_properties: Sequence[Mapping[str, float]] | None = None) -> None:
        super().__init__(keys)
        self.normalization = list(normalization)
        props = list(intensity_properties or [])
        self.steps = []
        for channel, scheme in enumerate(self.normalization):
            if scheme == "ct":
                if channel >= len(props):
                    raise InvalidValueError(f"channel {channel} is normalised as CT but has no intensity_properties")
                p = props[channel]
                low, high = float(p["percentile_00_5"]), float(p["percentile_99_5"])
                mean, std = float(p["mean"]), max(float(p["std"]), _STD_FLOOR)
                self.steps.append(ScaleIntensityRange(a_min=low, a_max=high, b_min=(low - mean) / std,
                                                      b_max=(high - mean) / std, clip=True))
            elif scheme in ("zscore", "zscore_nonzero"):
                self.steps.append(NormalizeIntensity(nonzero=scheme == "zscore_nonzero"))
            else:
                raise InvalidValueError(f"normalization of channel {channel} must be 'ct', 'zscore' or "
                                        f"'zscore_nonzero', got {scheme!r}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.steps):
                raise InvalidValueError(f"the image has {image.shape[0]} channel(s); the plan normalises "
                                        f"{len(self.steps)} ({self.normalization})")
            out = image.clone().float() if isinstance(image, torch.Tensor) else image.astype("float32")
            for channel, step in enumerate(self.steps):
                out[channel:channel + 1] = step(image[channel:channel + 1].float()
                                                if isinstance(image, torch.Tensor) else image[channel:channel + 1])
            d[key] = out
        return d


def _mode(order: int) -> str | int:
    """MONAI's interpolation mode for a spline order: 0 nearest, 1 (tri)linear, 2-5 a spline of that order."""
    return "nearest" if order == 0 else "bilinear" if order == 1 else order


def resampling_steps(keys: tuple[str, ...], pixdim: Sequence[float], resampling: Mapping[str, Any]) -> list:
    """MONAI ``Spacingd`` steps to ``pixdim`` by the plan's ``resampling`` (one, or two for a separate axis)."""
    image_order, label_order = int(resampling["image_order"]), int(resampling["label_order"])
    modes = tuple(_mode(image_order if k == IMAGE else label_order) for k in keys)
    axis = resampling.get("separate_axis")
    target = [float(p) for p in pixdim]
    if axis is None:
        return [Spacingd(keys=keys, pixdim=target, mode=modes)]
    in_plane = [-1.0 if a == axis else t for a, t in enumerate(target)]  # non-positive: keep that axis's spacing
    along = [t if a == axis else -1.0 for a, t in enumerate(target)]
    separate = _mode(int(resampling["separate_axis_order"]))
    return [Spacingd(keys=keys, pixdim=in_plane, mode=modes),
            Spacingd(keys=keys, pixdim=along, mode=tuple(separate if k == IMAGE else "nearest" for k in keys))]


def planned_steps(keys: tuple[str, ...], pixdim: Sequence[float] | None, normalization: Sequence[str],
                  intensity_properties: Sequence[Mapping[str, float]] | None, resampling: Mapping[str, Any] | None,
                  crop_foreground: bool) -> list:
    """Crop, normalise, resample: the plan's steps after the reorientation (see the module docstring)."""
    steps: list = []
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key=IMAGE, select_fn=nonzero, margin=0, allow_smaller=True))
    steps.append(NormalizeChannelsd(keys=IMAGE, normalization=normalization,
                                    intensity_properties=intensity_properties))
    if pixdim is not None:
        plan = resampling or {"image_order": 1, "label_order": 0, "separate_axis": None, "separate_axis_order": 0}
        steps += resampling_steps(keys, pixdim, plan)
    return steps


def linear_for_splines(operations: Any) -> Any:
    """A copy of MONAI's applied-operations stack with every spline resampling (order 2-5) made linear."""
    if isinstance(operations, (list, tuple)):
        return [linear_for_splines(op) for op in operations]
    if not isinstance(operations, Mapping):
        return operations
    out = {k: linear_for_splines(v) for k, v in operations.items()}
    mode = out.get("mode")
    if isinstance(mode, int) and mode >= 2:
        out["mode"] = "bilinear"
    return out


class InvertProbabilitiesd(Invertd):
    """MONAI's ``Invertd`` for probability maps: a spline resampling of the image is undone linearly.

    A cubic spline overshoots: a probability map resampled with it leaves [0, 1] near edges.
    nnU-Net resamples probabilities back with order 1 (and order 0 along a separate axis, which
    this keeps); so does this. Takes ``Invertd``'s arguments.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for orig_key in ensure_tuple_rep(self.orig_keys, len(self.keys)):
            image = d.get(orig_key)
            if isinstance(image, MetaTensor):
                d[orig_key] = MetaTensor(image.as_tensor(), meta=image.meta,
                                         applied_operations=linear_for_splines(image.applied_operations))
        return super().__call__(d)
