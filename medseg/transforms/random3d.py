"""The random 3D transforms nnU-Net's augmentation needs and MONAI's random transforms lack.

Each draws its parameters from its own ``R`` only (so :func:`medseg.engine.determinism.
transform_rng_states` captures them for exact resume) and calls MONAI's deterministic pieces
(``Resample``, ``separable_filtering``, ``ScaleIntensityFixedMean``, ``Resize``,
``AdjustContrast``), in torch on the patch's device. :mod:`medseg.transforms.augment3d`
assembles them with MONAI's own into nnU-Net's pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.layers import GaussianFilter, separable_filtering
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import (
    AdjustContrast,
    CenterSpatialCrop,
    MapTransform,
    Randomizable,
    RandomizableTransform,
    Resample,
    Resize,
    ScaleIntensityFixedMean,
)
from monai.transforms.utils import create_grid, create_rotate, create_scale

from medseg.errors import InvalidValueError
from medseg.transforms.keys import modes
from medseg.transforms.labels import validate_roi

__all__ = [
    "RandContrastd", "RandGammad", "RandGaussianBlurd", "RandLowResolutiond", "RandSpatialCenterCropd",
    "affine_matrix", "check_value", "warp_center",
]


_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "rotation_deg": ("within [-180, 180]", lambda v: -180 <= v <= 180),
    "scale_range": ("> 0", lambda v: v > 0),
    "elastic_sigma": ("> 0", lambda v: v > 0),
    "elastic_magnitude": (">= 0", lambda v: v >= 0),
    "blur_sigma": ("> 0", lambda v: v > 0),
    "brightness_range": ("> 0", lambda v: v > 0),
    "contrast_range": ("> 0", lambda v: v > 0),
    "lowres_zoom": ("in (0, 1]", lambda v: 0 < v <= 1),
    "gamma_range": ("> 0", lambda v: v > 0),
}
_SCALARS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "noise_std": (">= 0", lambda v: v >= 0),
    "intensity_scale": (">= 0", lambda v: v >= 0),
    "intensity_shift": (">= 0", lambda v: v >= 0),
}


def _number(key: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise InvalidValueError(f"augmentation {key!r} must be {what}, got {value!r}")
    return float(value)


def _probability(key: str, value: Any) -> float:
    p = _number(key, value, "a probability in [0, 1]")
    if not 0.0 <= p <= 1.0:
        raise InvalidValueError(f"augmentation {key!r} must be a probability in [0, 1], got {value!r}")
    return p


def check_value(key: str, value: Any) -> Any:
    """The value of ``key`` in plain JSON form, or an error that names the key, the rule and the value."""
    if key.startswith("p_"):
        return _probability(key, value)
    if key in _SCALARS:
        rule, ok = _SCALARS[key]
        v = _number(key, value, f"a number {rule}")
        if not ok(v):
            raise InvalidValueError(f"augmentation {key!r} must be a number {rule}, got {value!r}")
        return v
    rule, ok = _RANGES[key]
    what = f"[min, max] with min <= max, both {rule}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidValueError(f"augmentation {key!r} must be {what}, got {value!r}")
    lo, hi = (_number(key, v, what) for v in value)
    if lo > hi or not (ok(lo) and ok(hi)):
        raise InvalidValueError(f"augmentation {key!r} must be {what}, got {list(value)!r}")
    return [lo, hi]


def affine_matrix(angles: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """The 4x4 matrix ``Rz @ Ry @ Rx @ S`` of nnU-Net's ``create_affine_matrix_3d`` (angles in radians).

    It maps output voxel coordinates (centred) to the input coordinates they are sampled from.
    """
    rotation = np.asarray(create_rotate(3, tuple(float(a) for a in angles), rotate_order="xyz"), dtype=np.float64)
    return rotation @ np.asarray(create_scale(3, [float(scale)] * 3), dtype=np.float64)


def warp_center(img: torch.Tensor, roi: Sequence[int], matrix: np.ndarray | None = None,
                offsets: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """The centre ``roi`` of ``img`` sampled through ``matrix`` and an optional displacement field.

    Args:
        img: ``(C, X, Y, Z)`` patch at least ``roi`` large, on any device.
        roi: output size ``(X, Y, Z)``.
        matrix: 4x4 output-to-input matrix about the centres (:func:`affine_matrix`), or ``None``.
        offsets: ``(3, *roi)`` displacements in voxels, added before ``matrix`` (nnU-Net's order).
        mode: ``"bilinear"`` (trilinear) for images, ``"nearest"`` for labels.

    Returns:
        ``(C, *roi)`` with ``img``'s dtype; without ``matrix`` and ``offsets`` the exact centre crop.

    Raises:
        InvalidValueError: ``img`` is not 3D or is smaller than ``roi``.
    """
    roi = validate_roi(roi, 3)
    spatial = tuple(img.shape[1:])
    if len(spatial) != 3 or any(s < r for s, r in zip(spatial, roi)):
        raise InvalidValueError(f"the patch to warp must be (C, X, Y, Z) at least {roi}, got shape {tuple(img.shape)}")
    if matrix is None and offsets is None:
        return CenterSpatialCrop(roi)(img)
    grid = create_grid(roi, dtype=torch.float32, device=img.device, backend="torch")
    if offsets is not None:
        grid[:3] += offsets.to(grid)
    if matrix is not None:
        grid = (torch.as_tensor(matrix, dtype=torch.float32, device=img.device) @ grid.reshape(4, -1)).reshape(grid.shape)
    out = Resample(mode=mode, padding_mode="zeros", dtype=torch.float32)(img, grid)
    return out.to(img.dtype)


class RandSpatialCenterCropd(Randomizable, MapTransform):
    """nnU-Net's ``SpatialTransform``: rotate, scale and deform about the patch centre, output the centre ROI.

    Whether to rotate, to scale and to deform are drawn separately (in that order); a rotation
    draws one angle per axis, a scaling one factor for all axes. When nothing fires the output
    is the exact centre crop, without interpolation.

    Args:
        keys: keys warped together (image and label).
        roi_size: output size ``(X, Y, Z)``; inputs are at least this large (see :func:`crop_size`).
        p_rotation: probability of a rotation. Defaults to nnU-Net's 0.2.
        rotation_deg: range of each angle, degrees. Defaults to (-30, 30).
        p_scale: probability of an isotropic scaling. Defaults to 0.2.
        scale_range: range of the factor; s > 1 samples s times the extent (objects shrink).
        p_elastic: probability of an elastic deformation. Defaults to 0 (nnU-Net v2).
        elastic_sigma: range of the smoothing sigma of the displacement field, voxels.
        elastic_magnitude: range of its magnitude (MONAI ``Rand3DElastic``'s, nnU-Net v1's alpha).
        mode: interpolation per key; default from :data:`medseg.transforms.keys.INTERPOLATION`.
    """

    def __init__(self, keys: KeysCollection, roi_size: Sequence[int], p_rotation: float = 0.2,
                 rotation_deg: Sequence[float] = (-30.0, 30.0), p_scale: float = 0.2,
                 scale_range: Sequence[float] = (0.7, 1.4), p_elastic: float = 0.0,
                 elastic_sigma: Sequence[float] = (9.0, 13.0), elastic_magnitude: Sequence[float] = (0.0, 900.0),
                 mode: Sequence[str] | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.roi = validate_roi(roi_size, 3)
        self.p = {k: check_value(k, v) for k, v in (("p_rotation", p_rotation), ("p_scale", p_scale),
                                                ("p_elastic", p_elastic))}
        self.rotation_deg = check_value("rotation_deg", rotation_deg)
        self.scale_range = check_value("scale_range", scale_range)
        self.elastic_sigma = check_value("elastic_sigma", elastic_sigma)
        self.elastic_magnitude = check_value("elastic_magnitude", elastic_magnitude)
        try:
            self.mode = tuple(mode) if mode is not None else modes(tuple(self.keys))
        except KeyError as err:
            raise InvalidValueError(f"no default interpolation for key {err}; pass `mode`, one per key") from None
        self.angles: np.ndarray | None = None
        self.scale: float | None = None
        self.elastic: tuple[float, float, np.ndarray] | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw what fires and its parameters (the elastic field is drawn at ROI size, as MONAI does)."""
        rotate, scale, deform = (self.R.uniform() < self.p[k] for k in ("p_rotation", "p_scale", "p_elastic"))
        self.angles = np.deg2rad(self.R.uniform(*self.rotation_deg, size=3)) if rotate else None
        self.scale = float(self.R.uniform(*self.scale_range)) if scale else None
        self.elastic = None
        if deform:
            sigma, magnitude = self.R.uniform(*self.elastic_sigma), self.R.uniform(*self.elastic_magnitude)
            self.elastic = (float(sigma), float(magnitude),
                            self.R.uniform(-1.0, 1.0, size=(3, *self.roi)).astype(np.float32))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        matrix = None
        if self.angles is not None or self.scale is not None:
            angles = self.angles if self.angles is not None else np.zeros(3)
            matrix = affine_matrix(angles, 1.0 if self.scale is None else self.scale)
        offsets = None
        for key, mode in self.key_iterator(d, self.mode):
            img = d[key]
            if self.elastic is not None and offsets is None:
                sigma, magnitude, field = self.elastic
                smooth = GaussianFilter(3, sigma, truncated=3.0).to(img.device)
                offsets = smooth(torch.from_numpy(field).to(img.device)[None])[0] * magnitude
            d[key] = warp_center(img, self.roi, matrix, offsets, mode)
        return d


def _bg_contrast(r: np.random.RandomState, lo: float, hi: float) -> float:
    """batchgeneratorsv2's ``BGContrast``: a range around 1 is sampled half below 1, half above."""
    if lo < 1.0 < hi:
        return float(r.uniform(lo, 1.0) if r.uniform() < 0.5 else r.uniform(1.0, hi))
    return float(r.uniform(lo, hi))


class _RandPerChannel(RandomizableTransform, MapTransform):
    """Applies with probability ``prob``; then to each channel with ``p_per_channel``, with its own parameter."""

    def __init__(self, keys: KeysCollection, prob: float, p_per_channel: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _probability("prob", prob))
        self.p_per_channel = _probability("p_per_channel", p_per_channel)
        self.channel_params: dict[int, Any] = {}

    def draw(self) -> Any:
        """One channel's parameter, from ``self.R``."""
        raise NotImplementedError

    def apply(self, channel: torch.Tensor, param: Any) -> torch.Tensor:
        """Transform one ``(1, X, Y, Z)`` channel."""
        raise NotImplementedError

    def randomize(self, data: int) -> None:
        """Draw for ``data`` channels: whether to act, then which channels, then their parameters (nnU-Net's order)."""
        super().randomize(None)
        self.channel_params = {}
        if self._do_transform:
            chosen = [c for c in range(data) if self.R.uniform() < self.p_per_channel]
            self.channel_params = {c: self.draw() for c in chosen}

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(d[first].shape[0])
        if self.channel_params:
            for key in self.key_iterator(d):
                img = d[key]
                # A new tensor, never in place: the patch may be a view of the cached volume.
                d[key] = torch.cat([self.apply(img[c:c + 1], self.channel_params[c]) if c in self.channel_params
                                    else img[c:c + 1] for c in range(img.shape[0])])
        return d


class RandGaussianBlurd(_RandPerChannel):
    """nnU-Net's ``GaussianBlurTransform``: per channel, a sigma per axis; edges reflected as nnU-Net does.

    MONAI's ``GaussianSmooth`` pads with zeros, which darkens the patch border.
    """

    def __init__(self, keys: KeysCollection, sigma: Sequence[float] = (0.5, 1.0), prob: float = 0.2,
                 p_per_channel: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob, p_per_channel, allow_missing_keys)
        self.sigma = check_value("blur_sigma", sigma)

    def draw(self) -> tuple[float, ...]:
        return tuple(float(self.R.uniform(*self.sigma)) for _ in range(3))

    def apply(self, channel: torch.Tensor, param: tuple[float, ...]) -> torch.Tensor:
        kernels = [gaussian_1d(torch.tensor(s, device=channel.device), normalize=True).to(channel.dtype) for s in param]
        return separable_filtering(channel[None], kernels, mode="reflect")[0]


class RandContrastd(_RandPerChannel):
    """nnU-Net's ``ContrastTransform`` (``preserve_range=True``): per channel, scale about the mean, clip to the range."""

    def __init__(self, keys: KeysCollection, factors: Sequence[float] = (0.75, 1.25), prob: float = 0.15,
                 p_per_channel: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob, p_per_channel, allow_missing_keys)
        self.factors = check_value("contrast_range", factors)

    def draw(self) -> float:
        return _bg_contrast(self.R, *self.factors)

    def apply(self, channel: torch.Tensor, param: float) -> torch.Tensor:
        return ScaleIntensityFixedMean(factor=param - 1.0, preserve_range=True, fixed_mean=True,
                                       dtype=channel.dtype)(channel)


class RandLowResolutiond(_RandPerChannel):
    """nnU-Net's ``SimulateLowResolutionTransform``: per channel, nearest down by a zoom, trilinear back up."""

    def __init__(self, keys: KeysCollection, zoom: Sequence[float] = (0.5, 1.0), prob: float = 0.25,
                 p_per_channel: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob, p_per_channel, allow_missing_keys)
        self.zoom = check_value("lowres_zoom", zoom)

    def draw(self) -> float:
        return float(self.R.uniform(*self.zoom))

    def apply(self, channel: torch.Tensor, param: float) -> torch.Tensor:
        shape = tuple(channel.shape[1:])
        small = tuple(max(1, round(s * param)) for s in shape)
        down = Resize(small, mode="nearest-exact", dtype=channel.dtype)(channel)
        return Resize(shape, mode="trilinear", dtype=channel.dtype)(down)


class RandGammad(_RandPerChannel):
    """nnU-Net's ``GammaTransform``: per channel, gamma on the min-max range, optionally of the inverted image."""

    def __init__(self, keys: KeysCollection, gamma: Sequence[float] = (0.7, 1.5), prob: float = 0.3,
                 invert_image: bool = False, retain_stats: bool = True, p_per_channel: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, prob, p_per_channel, allow_missing_keys)
        self.gamma = check_value("gamma_range", gamma)
        self.invert_image, self.retain_stats = bool(invert_image), bool(retain_stats)

    def draw(self) -> float:
        return _bg_contrast(self.R, *self.gamma)

    def apply(self, channel: torch.Tensor, param: float) -> torch.Tensor:
        return AdjustContrast(param, invert_image=self.invert_image, retain_stats=self.retain_stats)(channel)
