"""2D (dermoscopy) pipelines: checked RGB/mask loading, resize or letterbox, augmentation, normalisation.

Training and inference share :func:`fit_geometry`, :func:`to_network_size` and
:func:`normalizer`, so an image reaches the network the same way in both. Images are
``(3, H, W)`` float in ``[0, 1]`` until the final normalisation; masks are ``(1, H, W)``
in ``{0, 1}``. Arrays follow PIL's row-major ``(H, W)`` order (MONAI's ``PILReader``
transposes to ``(W, H)``, which would make "height" ambiguous in messages and outputs).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    Rand2DElasticd,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    Resize,
    SpatialPad,
)

from medseg.data.readers import mask_problems, open_image_2d, read_mask_2d
from medseg.errors import DataError, InvalidValueError
from medseg.transforms.color import RandColorJitterd
from medseg.transforms.keys import IMAGE, INTERPOLATION, LABEL, modes

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "RESIZE_MODES", "Geometry", "LoadImage2Dd", "ToNetworkSized",
    "fit_geometry", "from_network_size", "infer_transforms_2d", "normalizer", "read_mask", "read_rgb", "to_network_size",
    "train_transforms_2d", "val_transforms_2d",
]

RESIZE_MODES = ("stretch", "letterbox")
NORMALIZATIONS = ("imagenet", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file as RGB.

    Greyscale, palette and RGBA images are converted (alpha is dropped), so any photograph
    PIL reads can be segmented.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        DataError: the file is missing or does not decode.
    """
    with open_image_2d(path) as img:
        return np.asarray(img.convert("RGB"))


def read_mask(path: str | Path, image_hw: tuple[int, int], image_path: str | Path | None = None) -> np.ndarray:
    """Decode an ISIC mask (values 0 and 255) that must match its image's size.

    Args:
        path: the PNG mask.
        image_hw: ``(H, W)`` of its image.
        image_path: the image, named in the error.

    Returns:
        ``(H, W)`` uint8 array with values 0 and 1.

    Raises:
        DataError: the mask is missing, undecodable, a different size from its image (never
            silently resized), not single-channel, or has values other than 0 and 255.
    """
    path = Path(path)
    mask = read_mask_2d(path)
    problems = mask_problems(mask, image_hw, Path(image_path).name if image_path else "")
    if problems:
        raise DataError(path, *problems[0])
    return (mask > 0).astype(np.uint8)


@dataclass(frozen=True)
class Geometry:
    """How an ``(H, W)`` image maps onto the network's input size.

    Attributes:
        resized: ``(h, w)`` after resizing (the whole network input for ``"stretch"``).
        pad: ``(top, left)`` padding added around the resized image (letterbox).
        size: the network input ``(H, W)``.
    """

    resized: tuple[int, int]
    pad: tuple[int, int]
    size: tuple[int, int]


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        out = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise InvalidValueError(f"image_size must be two positive integers (H, W), got {size!r}") from None
    if len(out) != 2 or min(out) < 1:
        raise InvalidValueError(f"image_size must be two positive integers (H, W), got {list(out)}")
    return out  # type: ignore[return-value]


def fit_geometry(hw: Sequence[int], size: Sequence[int], mode: str = "stretch") -> Geometry:
    """Where an image of ``hw = (H, W)`` goes in a network input of ``size``.

    Args:
        hw: the image's height and width.
        size: the network input ``(H, W)``.
        mode: ``"stretch"`` resizes to ``size`` (the aspect ratio changes); ``"letterbox"``
            scales to fit inside ``size`` keeping the aspect ratio and pads the rest, centred.

    Raises:
        ValueError: an unknown mode or a bad size.
    """
    size = _check_size(size)
    if mode not in RESIZE_MODES:
        raise InvalidValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    h, w = int(hw[0]), int(hw[1])
    if mode == "stretch":
        return Geometry(resized=size, pad=(0, 0), size=size)
    scale = min(size[0] / h, size[1] / w)
    rh, rw = min(size[0], max(1, round(h * scale))), min(size[1], max(1, round(w * scale)))
    return Geometry(resized=(rh, rw), pad=((size[0] - rh) // 2, (size[1] - rw) // 2), size=size)


def to_network_size(array: torch.Tensor, geometry: Geometry, mode: str = "bilinear") -> torch.Tensor:
    """Resize a ``(C, H, W)`` tensor as ``geometry`` says (anti-aliased when shrinking), then pad it."""
    resize = Resize(spatial_size=geometry.resized, mode=mode, anti_aliasing=mode != "nearest")
    out = torch.as_tensor(resize(array, lazy=False)).float()
    if geometry.resized != geometry.size:
        out = torch.as_tensor(SpatialPad(spatial_size=geometry.size, method="symmetric")(out, lazy=False))
        # SpatialPad splits odd padding the same way fit_geometry does (the smaller half first).
    return out


def from_network_size(array: torch.Tensor, geometry: Geometry, hw: Sequence[int]) -> torch.Tensor:
    """Invert :func:`to_network_size` for ``(C, h, w)`` network outputs: crop the padding, resize to ``hw``."""
    top, left = geometry.pad
    rh, rw = geometry.resized
    cropped = array[:, top:top + rh, left:left + rw]
    hw = (int(hw[0]), int(hw[1]))
    if tuple(cropped.shape[1:]) == hw:
        return cropped
    return torch.nn.functional.interpolate(cropped[None].float(), size=hw, mode="bilinear", align_corners=False)[0]


def normalizer(normalize: str) -> NormalizeIntensity | None:
    """The final intensity normalisation: ``"imagenet"`` (per-channel mean/std) or ``"none"`` (keep ``[0, 1]``)."""
    if normalize not in NORMALIZATIONS:
        raise InvalidValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize == "none":
        return None
    return NormalizeIntensity(subtrahend=np.array(IMAGENET_MEAN), divisor=np.array(IMAGENET_STD), channel_wise=True)


class LoadImage2Dd(MapTransform):
    """Load an RGB image (``(3, H, W)`` float in ``[0, 1]``) and, if present, its mask (``(1, H, W)``, 0/1).

    Also sets ``image_path`` and ``image_hw`` (the original ``(H, W)``), which inference
    uses to write the mask back at the image's own size.

    The mask must be exactly the image's size: a mismatch raises a :class:`DataError`
    naming both files, never a silent resize.
    """

    def __init__(self, keys: KeysCollection = (IMAGE, LABEL), allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        rgb = read_rgb(str(d[IMAGE]))
        hw = rgb.shape[:2]
        d[f"{IMAGE}_path"] = str(d[IMAGE])
        d[f"{IMAGE}_hw"] = np.asarray(hw, dtype=np.int64)  # the original size, to write outputs back at it
        d[IMAGE] = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
        if LABEL in self.keys and d.get(LABEL) is not None:
            mask = read_mask(str(d[LABEL]), hw, d[f"{IMAGE}_path"])
            d[LABEL] = torch.from_numpy(mask[None].astype(np.float32))
        return d


class ToNetworkSized(MapTransform):
    """Resize or letterbox every key to the network input size, with each key's own interpolation."""

    def __init__(self, keys: KeysCollection, image_size: Sequence[int], resize: str = "stretch",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = _check_size(image_size)
        fit_geometry((1, 1), self.image_size, resize)  # validates the mode now, not at the first image
        self.resize = resize

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            geometry = fit_geometry(d[key].shape[1:], self.image_size, self.resize)
            d[key] = to_network_size(d[key], geometry, INTERPOLATION[str(key)])
        return d


def _deterministic(keys: tuple[str, ...], image_size: Sequence[int], resize: str) -> list:
    return [LoadImage2Dd(keys=keys), ToNetworkSized(keys=keys, image_size=image_size, resize=resize),
            EnsureTyped(keys=keys, track_meta=False)]


def _normalize(normalize: str) -> list:
    norm = normalizer(normalize)
    if norm is None:
        return []
    return [NormalizeIntensityd(keys=IMAGE, subtrahend=norm.subtrahend, divisor=norm.divisor, channel_wise=True)]


def train_transforms_2d(
    image_size: Sequence[int],
    resize: str = "stretch",
    normalize: str = "none",
    flip_prob: float = 0.5,
    rot90_prob: float = 0.5,
    color_jitter: Mapping[str, float] | None = None,
    noise_std: float = 0.02,
    noise_prob: float = 0.2,
    elastic_prob: float = 0.2,
) -> Compose:
    """Training pipeline for RGB images with binary masks.

    Args:
        image_size: network input ``(H, W)``.
        resize: ``"stretch"`` or ``"letterbox"`` (keeps the aspect ratio, pads).
        normalize: ``"imagenet"`` (for ImageNet-pretrained encoders) or ``"none"``.
        flip_prob: probability of a flip along each axis.
        rot90_prob: probability of a rotation by a random multiple of 90 degrees.
        color_jitter: :class:`~medseg.transforms.color.RandColorJitterd` arguments
            (``brightness``, ``contrast``, ``saturation``, ``hue``, ``prob``); ``None`` uses its defaults.
        noise_std: standard deviation of the additive Gaussian noise (on the ``[0, 1]`` scale).
        noise_prob: probability of adding noise.
        elastic_prob: probability of an elastic deformation (0 turns it off).

    Returns:
        A Compose whose first three steps (load, resize, type) are deterministic and cacheable.
    """
    keys = (IMAGE, LABEL)
    for name, p in (("flip_prob", flip_prob), ("rot90_prob", rot90_prob), ("noise_prob", noise_prob),
                    ("elastic_prob", elastic_prob)):
        if not 0.0 <= p <= 1.0:
            raise InvalidValueError(f"{name} must be in [0, 1], got {p}")
    size = _check_size(image_size)
    if rot90_prob > 0 and size[0] != size[1]:
        raise InvalidValueError(f"rot90 needs a square image_size, got {list(size)}; set rot90_prob=0")
    steps = _deterministic(keys, size, resize) + [
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1),
        RandRotate90d(keys=keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)),
    ]
    if elastic_prob > 0:
        # Control points every ~1/8 of the image, displaced by up to 1/64 of it.
        steps.append(Rand2DElasticd(keys=keys, prob=elastic_prob, spacing=(max(size) // 8,) * 2,
                                    magnitude_range=(0.0, max(size) / 64), mode=modes(keys), padding_mode="zeros"))
    steps += [
        RandColorJitterd(keys=IMAGE, **dict(color_jitter or {})),
        RandGaussianNoised(keys=IMAGE, prob=noise_prob, std=noise_std),
    ]
    return Compose(steps + _normalize(normalize))


def val_transforms_2d(image_size: Sequence[int], resize: str = "stretch", normalize: str = "none") -> Compose:
    """Validation pipeline: load, resize or letterbox, normalise; no randomness."""
    return Compose(_deterministic((IMAGE, LABEL), image_size, resize) + _normalize(normalize))


def infer_transforms_2d(image_size: Sequence[int], resize: str = "stretch", normalize: str = "none") -> Compose:
    """Inference pipeline for images alone: load, resize or letterbox, normalise."""
    return Compose(_deterministic((IMAGE,), image_size, resize) + _normalize(normalize))
