"""One builder per stage: ``train_transforms``, ``val_transforms``, ``infer_transforms``.

Bundle configs call these with their own hyperparameters, e.g.::

    "train#preprocessing": "$medseg.transforms.train_transforms(task='regions',
        roi_size=@roi_size, convention=@datalist['label_convention'])"

The deterministic steps (load, channel order, label mapping, orientation, spacing,
normalisation, foreground crop) come first, so ``CacheDataset`` caches their output; the
random steps follow. ``task`` is ``"regions"`` (sigmoid, BraTS TC/WT/ET) or ``"multiclass"``
(softmax, integer labels). The training augmentation is chosen by ``augmentation``
(:mod:`medseg.transforms.augment3d`): nnU-Net's default 3D augmentation or the original light one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    MapLabelValued,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    Spacingd,
    SpatialPadd,
)

from medseg.errors import InvalidValueError
from medseg.transforms.augment3d import augmentation_spec, crop_size, random_steps
from medseg.transforms.keys import IMAGE, LABEL, modes
from medseg.transforms.labels import CanonicalChannelsd, LabelToRegionsd, validate_roi
from medseg.transforms.planned import planned_steps

TASKS = ("regions", "multiclass")

# Every LoadImaged builds MONAI's pydicom reader, which warns each time that the optional
# nvImageCodec GPU decoder is missing: once per inferred case. medseg reads DICOM with
# SimpleITK, so the warning is noise.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def contiguous_label_map(label_values: Sequence[int] | None) -> tuple[list[int], list[int]] | None:
    """``(orig, target)`` for MapLabelValued when class values are not already 0..K-1, else ``None``."""
    if label_values is None:
        return None
    values = sorted(int(v) for v in label_values)
    return None if values == list(range(len(values))) else (values, list(range(len(values))))


def _deterministic(keys: tuple[str, ...], task: str, convention: str | None, pixdim: Sequence[float] | None,
                   crop_foreground: bool, label_values: Sequence[int] | None = None,
                   planned: Mapping[str, Any] | None = None) -> list:
    if task not in TASKS:
        raise InvalidValueError(f"task must be one of {TASKS}, got {task!r}")
    steps: list = [
        LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        CanonicalChannelsd(keys=IMAGE),
        EnsureTyped(keys=keys, track_meta=True),
    ]
    if LABEL in keys and task == "regions":
        if convention is None:
            raise InvalidValueError("task 'regions' needs the label convention (e.g. 'brats2021')")
        steps.append(LabelToRegionsd(keys=LABEL, convention=convention))
    mapping = contiguous_label_map(label_values)
    if LABEL in keys and task == "multiclass" and mapping is not None:
        # Softmax classes must be 0..K-1; e.g. a dataset labelled {0, 1, 4} becomes {0, 1, 2}.
        steps.append(MapLabelValued(keys=LABEL, orig_labels=mapping[0], target_labels=mapping[1]))
    # The axis labels are given explicitly (MONAI's current default), which also keeps MONAI
    # from warning on every run that this default will change.
    steps.append(Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if planned is not None:
        return steps + planned_steps(keys, pixdim, planned["normalization"], planned.get("intensity_properties"),
                                     planned.get("resampling"), bool(planned.get("crop_foreground", crop_foreground)))
    if pixdim is not None:
        steps.append(Spacingd(keys=keys, pixdim=tuple(pixdim), mode=modes(keys)))
    steps.append(NormalizeIntensityd(keys=IMAGE, nonzero=True, channel_wise=True))
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key=IMAGE, margin=2, allow_smaller=True))
    return steps


def planned_preprocessing(normalization: Sequence[str] | None, intensity_properties: Sequence[Mapping] | None = None,
                          resampling: Mapping[str, Any] | None = None,
                          crop_foreground: bool = True) -> dict[str, Any] | None:
    """The plan's preprocessing choices as one mapping, or ``None`` (no plan: the fixed steps).

    Args:
        normalization: one scheme per channel (:mod:`medseg.transforms.planned`); ``None``
            keeps the fixed non-zero, channel-wise z-score of bundles without a plan.
        intensity_properties: per channel, the dataset's foreground statistics (CT channels).
        resampling: the plan's interpolation (``image_order``, ``label_order``,
            ``separate_axis``, ``separate_axis_order``).
        crop_foreground: crop to the non-zero box.
    """
    if normalization is None:
        return None
    return {"normalization": list(normalization),
            "intensity_properties": [dict(p) for p in intensity_properties] if intensity_properties else None,
            "resampling": dict(resampling) if resampling else None, "crop_foreground": bool(crop_foreground)}


def train_transforms(
    task: str,
    roi_size: Sequence[int],
    convention: str | None = None,
    pixdim: Sequence[float] | None = None,
    pos_fraction: float = 0.5,
    intensity_aug: float = 0.1,
    flip_prob: float = 0.5,
    label_values: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    augmentation: str | Mapping[str, Any] | None = "light",
    planned: Mapping[str, Any] | None = None,
) -> Compose:
    """Training pipeline for 3D volumes.

    After the deterministic (cached) steps, a patch of
    :func:`~medseg.transforms.augment3d.crop_size` is cut around a foreground or background
    voxel, moved to ``device`` if one is given, and augmented by
    :func:`~medseg.transforms.augment3d.random_steps`, which return ``roi_size``. With the
    ``"nnunet"`` preset the cut patch is larger than ``roi_size`` (rotated and zoomed-out
    patches then have content in their corners); the cached volume is padded only to
    ``roi_size`` and each cut patch to the larger size, which gives the same patches as padding
    the volume (the crop centre is clamped the same way) without caching the padding.

    Args:
        task: ``"regions"`` or ``"multiclass"``.
        roi_size: training patch size ``(X, Y, Z)``.
        convention: label convention name, needed for ``"regions"``.
        pixdim: target spacing in mm, or ``None`` to keep the native spacing (BraTS is 1 mm).
        pos_fraction: fraction of patches centred on foreground (nnU-Net oversamples
            foreground; the model-zoo recipe samples uniformly, i.e. about the volume fraction).
        intensity_aug: scale and shift range of the intensity augmentation (light preset only).
        flip_prob: probability of a mirror flip along each axis (light preset only).
        label_values: the dataset's class values (``"multiclass"``), mapped to 0..K-1 if needed.
        device: where the patch goes right after it is cut from the cached volume, so the
            flips and intensity changes run there (e.g. ``cuda``: microseconds instead of
            tens of ms of CPU copies). ``None`` keeps everything on the CPU. A CUDA device
            needs a loader without worker processes (:func:`medseg.engine.fastpath.training_loader`).
        augmentation: ``"light"`` (default: flips, intensity scale and shift, exactly the
            pipeline of runs made before presets existed), ``"nnunet"`` or ``None`` (nnU-Net v2's
            default 3D augmentation, :data:`~medseg.transforms.augment3d.NNUNET`), or a mapping
            that changes a preset's values (a bundle's ``augmentation`` id; see
            :func:`~medseg.transforms.augment3d.augmentation_spec`). For the light preset,
            ``flip_prob`` and ``intensity_aug`` give the values the mapping does not set.
        planned: a plan's crop, normalisation and resampling (:func:`planned_preprocessing`);
            ``None``: resample to ``pixdim`` linearly, z-score the non-zero voxels, crop.

    Returns:
        A Compose whose first part is deterministic (cacheable).
    """
    roi = validate_roi(roi_size, 3)
    if not 0.0 <= pos_fraction <= 1.0:
        raise InvalidValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    spec = augmentation_spec(augmentation)
    if spec["preset"] == "light":
        given = dict(augmentation) if isinstance(augmentation, Mapping) else {}
        spec = augmentation_spec({"preset": "light", "p_mirror": flip_prob, "intensity_scale": intensity_aug,
                                  "intensity_shift": intensity_aug, **given})
    crop = crop_size(spec, roi)
    keys = (IMAGE, LABEL)
    return Compose(_deterministic(keys, task, convention, pixdim, crop_foreground=True, label_values=label_values,
                                  planned=planned) + [
        SpatialPadd(keys=keys, spatial_size=roi),
        # Foreground/background voxel indices are computed once and cached, not per patch;
        # the random steps then work on plain tensors, without MetaTensor bookkeeping.
        FgBgToIndicesd(keys=LABEL, image_key=IMAGE, image_threshold=0.0),
        EnsureTyped(keys=keys, track_meta=False),
        RandCropByPosNegLabeld(keys=keys, label_key=LABEL, spatial_size=crop, pos=pos_fraction,
                               neg=1.0 - pos_fraction, num_samples=1, fg_indices_key=f"{LABEL}_fg_indices",
                               bg_indices_key=f"{LABEL}_bg_indices", allow_smaller=crop != roi),
        *([] if crop == roi else [SpatialPadd(keys=keys, spatial_size=crop)]),
        *([] if device is None else [EnsureTyped(keys=keys, device=device, track_meta=False)]),
        *random_steps(spec, keys, roi),
    ])


def val_transforms(task: str, convention: str | None = None, pixdim: Sequence[float] | None = None,
                   label_values: Sequence[int] | None = None, planned: Mapping[str, Any] | None = None) -> Compose:
    """Validation pipeline: the deterministic steps only, whole volumes for sliding-window inference."""
    return Compose(_deterministic((IMAGE, LABEL), task, convention, pixdim, crop_foreground=True,
                                  label_values=label_values, planned=planned))


def infer_transforms(pixdim: Sequence[float] | None = None, planned: Mapping[str, Any] | None = None) -> Compose:
    """Inference pipeline for images only; every spatial step is invertible so outputs return to input geometry.

    Without a plan the volume is not cropped; with one it is cropped as in training (the crop
    is undone with zeros, which every output reads as background).
    """
    return Compose(_deterministic((IMAGE,), "multiclass", None, pixdim, crop_foreground=False, planned=planned))
