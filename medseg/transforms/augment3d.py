"""nnU-Net's default 3D training augmentation, built from MONAI transforms, and the old "light" one.

``train_transforms(augmentation=...)`` takes a preset name or a mapping (a bundle's
``augmentation`` id); :func:`augmentation_spec` checks it, :func:`crop_size` says how large a
patch to cut, and :func:`random_steps` returns the random transforms that follow the crop.

The ``"nnunet"`` preset (:data:`NNUNET`) reproduces nnU-Net v2's
``nnUNetTrainer.get_training_transforms`` for a 3D configuration whose patch is not
anisotropic enough for "dummy 2D" augmentation (BraTS), as read in MIC-DKFZ/nnUNet
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`` (``get_training_transforms`` and
``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, commit 0e495086eb10) and the
batchgeneratorsv2 transforms it builds (MIC-DKFZ/batchgeneratorsv2 0.3.5, commit 3cb4f07aeac9):
``SpatialTransform``, ``GaussianNoiseTransform``, ``GaussianBlurTransform``,
``MultiplicativeBrightnessTransform``, ``ContrastTransform``, ``SimulateLowResolutionTransform``,
``GammaTransform``, ``MirrorTransform`` and ``BGContrast``. The elastic defaults (off, as in
v2) are nnU-Net v1's ``default_3D_augmentation_params`` (``nnunet/training/data_augmentation/
default_data_augmentation.py``, commit aa53b3b87130): alpha (0, 900), sigma (9, 13).

Where MONAI's random transforms have nnU-Net's semantics they are used as they are
(``RandGaussianNoised``, channel-wise ``RandScaleIntensityd``, ``RandFlipd``). nnU-Net also
needs separate probabilities for rotation and scaling, one isotropic scale, a probability per
channel, a parameter drawn per channel, and the output cut from the centre of a larger patch,
which MONAI's ``RandAffined``, ``RandGaussianSmoothd``, ``RandScaleIntensityFixedMeand``,
``RandSimulateLowResolutiond`` and ``RandAdjustContrastd`` do not offer; the small transforms
here draw those parameters from their own ``R`` (so :func:`medseg.engine.determinism.
transform_rng_states` captures them for exact resume) and call MONAI's deterministic pieces
(``Resample``, ``separable_filtering``, ``ScaleIntensityFixedMean``, ``Resize``,
``AdjustContrast``). Everything runs in torch on the patch's device.

Known differences from nnU-Net: the label is resampled with nearest neighbour (nnU-Net
interpolates one-hot labels linearly and takes the arg-max); nnU-Net's final masking of the
image outside the non-zero region (``MaskImageTransform``) is not reproduced; and the enlarged
crop follows nnU-Net's ``get_patch_size`` (see :func:`crop_size`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import (
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.transforms.utils import create_rotate

from medseg.errors import InvalidTypeError, InvalidValueError
from medseg.transforms.keys import IMAGE
from medseg.transforms.labels import validate_roi
from medseg.transforms.random3d import (
    RandContrastd,
    RandGammad,
    RandGaussianBlurd,
    RandLowResolutiond,
    RandSpatialCenterCropd,
    check_value,
)

__all__ = ["LIGHT", "NNUNET", "PRESETS", "augmentation_spec", "crop_size", "random_steps"]

#: nnU-Net v2's defaults (see the module docstring for the source of each value).
NNUNET: dict[str, Any] = {
    "preset": "nnunet",
    # SpatialTransform(p_rotation=0.2, rotation=(-30deg, 30deg)), one angle per axis (p_rot_per_axis=1).
    "p_rotation": 0.2,
    "rotation_deg": [-30.0, 30.0],
    # SpatialTransform(p_scaling=0.2, scaling=(0.7, 1.4), p_synchronize_scaling_across_axes=1); a
    # factor s samples s times the patch extent, so s > 1 makes objects smaller.
    "p_scale": 0.2,
    "scale_range": [0.7, 1.4],
    # SpatialTransform(p_elastic_deform=0) in v2; v1: p_eldef 0.2, alpha (0, 900), sigma (9, 13) voxels:
    # a uniform(-1, 1) field smoothed with a Gaussian of sigma, times alpha (MONAI's Rand3DElastic).
    "p_elastic": 0.0,
    "elastic_sigma": [9.0, 13.0],
    "elastic_magnitude": [0.0, 900.0],
    # GaussianNoiseTransform(noise_variance=(0, 0.1), synchronize_channels=True), p 0.1: the value drawn
    # is used as the standard deviation, the same for all channels (MONAI's RandGaussianNoise).
    "p_noise": 0.1,
    "noise_std": 0.1,
    # GaussianBlurTransform(blur_sigma=(0.5, 1), p_per_channel=0.5, unsynchronised channels and axes), p 0.2.
    "p_blur": 0.2,
    "p_blur_per_channel": 0.5,
    "blur_sigma": [0.5, 1.0],
    # MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)), per channel), p 0.15.
    "p_brightness": 0.15,
    "brightness_range": [0.75, 1.25],
    # ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True, per channel), p 0.15.
    "p_contrast": 0.15,
    "contrast_range": [0.75, 1.25],
    # SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_axes=True, p_per_channel=0.5), p 0.25.
    "p_lowres": 0.25,
    "p_lowres_per_channel": 0.5,
    "lowres_zoom": [0.5, 1.0],
    # GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=1, p_retain_stats=1), p 0.1; then the
    # same with p_invert_image=0, p 0.3.
    "p_gamma_inverted": 0.1,
    "p_gamma": 0.3,
    "gamma_range": [0.7, 1.5],
    # MirrorTransform(allowed_axes=(0, 1, 2)): each axis flipped with probability 0.5.
    "p_mirror": 0.5,
}

#: medseg's original pipeline: flips, then intensity scale and shift (always applied). Kept so that
#: runs made before the nnU-Net preset existed stay reproducible.
LIGHT: dict[str, Any] = {"preset": "light", "p_mirror": 0.5, "intensity_scale": 0.1, "intensity_shift": 0.1}

PRESETS: dict[str, dict[str, Any]] = {"nnunet": NNUNET, "light": LIGHT}

#: nnU-Net's ``get_patch_size(..., scale_range=(0.85, 1.25))`` divides the rotated extent by 0.85.
NNUNET_CROP_SCALE = 0.85

def augmentation_spec(value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Check an augmentation setting and return it as a complete, plain-JSON dict.

    Args:
        value: ``"nnunet"`` or ``None`` (:data:`NNUNET`), ``"light"`` (:data:`LIGHT`), or a mapping
            of values that replace those of a preset: its ``"preset"`` key (default ``"nnunet"``).

    Returns:
        A new dict with every key of the preset, ``"preset"`` included.

    Raises:
        InvalidValueError: an unknown preset or key, a probability outside [0, 1], a range that is
            not ``[min, max]`` with ``min <= max`` within its bounds, or a value that is not a number.
        InvalidTypeError: ``value`` is neither a string, a mapping nor ``None``.
    """
    if value is None:
        value = "nnunet"
    if isinstance(value, str):
        if value not in PRESETS:
            raise InvalidValueError(f"augmentation preset must be one of {sorted(PRESETS)}, got {value!r}")
        return copy.deepcopy(PRESETS[value])
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"augmentation must be a preset name or a mapping, got {type(value).__name__}: "
                               f"{value!r}")
    preset = value.get("preset", "nnunet")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise InvalidValueError(f"augmentation 'preset' must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = copy.deepcopy(PRESETS[preset])
    unknown = sorted(str(k) for k in value if k not in spec)
    if unknown:
        raise InvalidValueError(f"unknown augmentation key(s) {unknown} for preset {preset!r}; "
                                f"valid keys: {sorted(spec)}")
    spec.update({k: check_value(k, v) for k, v in value.items() if k != "preset"})
    return spec


def crop_size(spec: str | Mapping[str, Any] | None, roi: Sequence[int]) -> tuple[int, ...]:
    """The patch to cut before :func:`random_steps`, so that rotated or zoomed-out output has content.

    nnU-Net's ``get_patch_size`` (``nnunetv2/training/data_augmentation/compute_initial_patch_size.py``)
    rotates the patch about each axis alone by the largest angle (at most 90 degrees) and keeps the
    largest extent per axis; this does the same with the rotated box's exact extent (equal for a
    cube), then divides by 0.85, the smallest factor of the fixed ``(0.85, 1.25)`` nnU-Net passes
    there (not the range it samples from, as its own comment says; kept, so that patch sizes and
    memory match nnU-Net's). A 128^3 ROI gets 205^3 with the defaults, as in nnU-Net. Patches
    zoomed out past 1/0.85 and rotations about several axes at once can still reach past the
    crop, as in nnU-Net; those voxels are zero. The margin is even on every axis, so a patch
    that is neither rotated nor scaled is an exact centre crop.

    Args:
        spec: anything :func:`augmentation_spec` accepts.
        roi: the network's patch size ``(X, Y, Z)``.

    Returns:
        ``roi`` itself for the light preset or when ``p_rotation`` and ``p_scale`` are 0, else the
        enlarged ``(X, Y, Z)``.
    """
    spec = augmentation_spec(spec)
    roi = validate_roi(roi, 3)
    if spec["preset"] == "light":
        return roi
    size = np.asarray(roi, dtype=float)
    extent = size.copy()
    if spec["p_rotation"] > 0:
        angle = math.radians(min(90.0, max(abs(a) for a in spec["rotation_deg"])))
        for axis in range(3):
            angles = [0.0, 0.0, 0.0]
            angles[axis] = angle
            extent = np.maximum(extent, np.abs(np.asarray(create_rotate(3, angles))[:3, :3]) @ size)
    if spec["p_scale"] > 0:
        extent = extent / NNUNET_CROP_SCALE
    out = np.maximum(np.ceil(extent - 1e-6).astype(int), roi)
    out += (out - np.asarray(roi)) % 2
    return tuple(int(v) for v in out)


def random_steps(spec: str | Mapping[str, Any] | None, keys: Sequence[str], roi: Sequence[int]) -> list:
    """The random transforms that follow the crop.

    Args:
        spec: anything :func:`augmentation_spec` accepts.
        keys: keys warped and flipped together (image, label); intensity steps act on ``"image"``.
        roi: the network's patch size; the input patch is :func:`crop_size` large.

    Returns:
        MONAI dictionary transforms whose output is ``roi`` large. The light preset returns its
        original transforms, unchanged in class, order and arguments.
    """
    s = augmentation_spec(spec)
    keys = tuple(keys)
    flips = [RandFlipd(keys=keys, prob=s["p_mirror"], spatial_axis=axis) for axis in range(3)]
    if s["preset"] == "light":
        return flips + [RandScaleIntensityd(keys=IMAGE, factors=s["intensity_scale"], prob=1.0),
                        RandShiftIntensityd(keys=IMAGE, offsets=s["intensity_shift"], prob=1.0)]
    lo, hi = s["brightness_range"]
    return [
        RandSpatialCenterCropd(keys, roi, s["p_rotation"], s["rotation_deg"], s["p_scale"], s["scale_range"],
                               s["p_elastic"], s["elastic_sigma"], s["elastic_magnitude"]),
        RandGaussianNoised(keys=IMAGE, prob=s["p_noise"], mean=0.0, std=s["noise_std"], sample_std=True),
        RandGaussianBlurd(IMAGE, s["blur_sigma"], s["p_blur"], s["p_blur_per_channel"]),
        # Uniform factors: the same law as BGContrast for a range symmetric about 1, as nnU-Net's is.
        RandScaleIntensityd(keys=IMAGE, factors=(lo - 1.0, hi - 1.0), prob=s["p_brightness"], channel_wise=True),
        RandContrastd(IMAGE, s["contrast_range"], s["p_contrast"]),
        RandLowResolutiond(IMAGE, s["lowres_zoom"], s["p_lowres"], s["p_lowres_per_channel"]),
        RandGammad(IMAGE, s["gamma_range"], s["p_gamma_inverted"], invert_image=True),
        RandGammad(IMAGE, s["gamma_range"], s["p_gamma"], invert_image=False),
        *flips,
    ]
