"""One builder per stage: ``train_transforms``, ``val_transforms``, ``infer_transforms``.

Bundle configs call these with their own hyperparameters, e.g.::

    "train#preprocessing": "$medseg.transforms.train_transforms(task='regions',
        roi_size=@roi_size, convention=@datalist['label_convention'])"

The deterministic steps (load, channel order, label mapping, orientation, spacing,
normalisation, foreground crop) come first, so ``CacheDataset`` caches their output; the
random steps follow. ``task`` is ``"regions"`` (sigmoid, BraTS TC/WT/ET) or ``"multiclass"``
(softmax, integer labels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
    SpatialPadd,
)

from medseg.errors import InvalidValueError
from medseg.transforms.keys import IMAGE, LABEL, modes
from medseg.transforms.labels import CanonicalChannelsd, LabelToRegionsd, validate_roi

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
                   crop_foreground: bool, label_values: Sequence[int] | None = None) -> list:
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
    if pixdim is not None:
        steps.append(Spacingd(keys=keys, pixdim=tuple(pixdim), mode=modes(keys)))
    steps.append(NormalizeIntensityd(keys=IMAGE, nonzero=True, channel_wise=True))
    if crop_foreground:
        steps.append(CropForegroundd(keys=keys, source_key=IMAGE, margin=2, allow_smaller=True))
    return steps


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
) -> Compose:
    """Training pipeline for 3D volumes.

    Args:
        task: ``"regions"`` or ``"multiclass"``.
        roi_size: training patch size ``(X, Y, Z)``.
        convention: label convention name, needed for ``"regions"``.
        pixdim: target spacing in mm, or ``None`` to keep the native spacing (BraTS is 1 mm).
        pos_fraction: fraction of patches centred on foreground (nnU-Net oversamples
            foreground; the model-zoo recipe samples uniformly, i.e. about the volume fraction).
        intensity_aug: scale and shift range of the intensity augmentation.
        flip_prob: probability of a mirror flip along each axis.
        label_values: the dataset's class values (``"multiclass"``), mapped to 0..K-1 if needed.
        device: where the patch goes right after it is cut from the cached volume, so the
            flips and intensity changes run there (e.g. ``cuda``: microseconds instead of
            tens of ms of CPU copies). ``None`` keeps everything on the CPU. A CUDA device
            needs a loader without worker processes (:func:`medseg.engine.fastpath.training_loader`).

    Returns:
        A Compose whose first part is deterministic (cacheable).
    """
    roi = validate_roi(roi_size, 3)
    if not 0.0 <= pos_fraction <= 1.0:
        raise InvalidValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    keys = (IMAGE, LABEL)
    return Compose(_deterministic(keys, task, convention, pixdim, crop_foreground=True, label_values=label_values) + [
        SpatialPadd(keys=keys, spatial_size=roi),
        # Foreground/background voxel indices are computed once and cached, not per patch;
        # the random steps then work on plain tensors, without MetaTensor bookkeeping.
        FgBgToIndicesd(keys=LABEL, image_key=IMAGE, image_threshold=0.0),
        EnsureTyped(keys=keys, track_meta=False),
        RandCropByPosNegLabeld(keys=keys, label_key=LABEL, spatial_size=roi, pos=pos_fraction,
                               neg=1.0 - pos_fraction, num_samples=1, fg_indices_key=f"{LABEL}_fg_indices",
                               bg_indices_key=f"{LABEL}_bg_indices", allow_smaller=False),
        *([] if device is None else [EnsureTyped(keys=keys, device=device, track_meta=False)]),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=2),
        RandScaleIntensityd(keys=IMAGE, factors=intensity_aug, prob=1.0),
        RandShiftIntensityd(keys=IMAGE, offsets=intensity_aug, prob=1.0),
    ])


def val_transforms(task: str, convention: str | None = None, pixdim: Sequence[float] | None = None,
                   label_values: Sequence[int] | None = None) -> Compose:
    """Validation pipeline: the deterministic steps only, whole volumes for sliding-window inference."""
    return Compose(_deterministic((IMAGE, LABEL), task, convention, pixdim, crop_foreground=True,
                                  label_values=label_values))


def infer_transforms(pixdim: Sequence[float] | None = None) -> Compose:
    """Inference pipeline for images only; every step is invertible so outputs return to input geometry."""
    return Compose(_deterministic((IMAGE,), "multiclass", None, pixdim, crop_foreground=False))
