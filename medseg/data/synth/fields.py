"""Smooth random fields: the building block for texture, bias fields and irregular shapes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.errors import InvalidValueError


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    """Zero-mean, unit-std random field whose features are about ``scale`` voxels wide.

    White noise is drawn on a grid ``scale`` times coarser than ``shape``, smoothed and
    upsampled linearly, which is much cheaper than smoothing at full resolution.

    Args:
        rng: the random generator (the only source of randomness, for determinism).
        shape: output shape, 2D or 3D.
        scale: feature size in voxels (>= 1).

    Returns:
        float32 array of ``shape``.
    """
    if scale < 1:
        raise InvalidValueError(f"scale must be >= 1, got {scale}")
    coarse = tuple(max(2, int(np.ceil(s / scale)) + 2) for s in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma=0.8, mode="wrap")
    zoom = [s / c for s, c in zip(shape, coarse)]
    field = ndimage.zoom(noise, zoom, order=1, mode="nearest", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def normalized_grid(shape: tuple[int, ...], spacing: tuple[float, ...] | None = None) -> list[np.ndarray]:
    """Coordinates in ``[-1, 1]`` along each axis, scaled by physical extent when ``spacing`` is given.

    Returns:
        One float32 array per axis, each broadcastable to ``shape``.
    """
    spacing = spacing or (1.0,) * len(shape)
    extent = max(s * sp for s, sp in zip(shape, spacing))
    axes = []
    for i, (n, sp) in enumerate(zip(shape, spacing)):
        coords = ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * sp) / (extent / 2.0)
        view = [1] * len(shape)
        view[i] = n
        axes.append(coords.reshape(view))
    return axes
