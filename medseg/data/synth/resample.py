"""Resample a synthetic case from its 1 mm grid to another voxel spacing.

Synthetic cases are drawn on a 1 mm grid (so the same seed always draws the same anatomy)
and resampled afterwards; a dataset of mixed, anisotropic spacings then differs from the
1 mm one only in how it was sampled, which is what a planner that picks the target spacing
has to cope with. The new grid covers the same physical extent: ``max(1, round(n / s))``
voxels of ``s`` mm per axis, centred on the 1 mm grid's centre. Each axis is resampled
exactly at spacing ``s`` (``scipy.ndimage.zoom`` would instead stretch the grid to fit the
rounded size, so the affine's spacing would be slightly off).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.errors import InvalidValueError

Spacing = tuple[float, float, float]

# Spacings outside (0, MAX_SPACING_MM] are refused: 20 mm is far coarser than any clinical scan.
MAX_SPACING_MM = 20.0
# The smallest axis a resampled case may have: fewer voxels leave nothing to segment or patch.
MIN_AXIS_VOXELS = 8
_AXES = "xyz"


def voxel_affine(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The voxel-to-RAS affine of synthetic volumes: x and y flipped (LPS axes), as BraTS files carry.

    Voxel ``(0, 0, 0)`` lies at world ``(0, (shape[1] - 1) * spacing[1], 0)``, so y runs down to 0.

    Args:
        shape: volume shape ``(X, Y, Z)``.
        spacing: voxel size in mm per axis (default 1 mm).

    Returns:
        The 4x4 float64 affine.
    """
    affine = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
    affine[1, 3] = (shape[1] - 1) * float(spacing[1])
    return affine


def resampled_shape(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, int, int]:
    """Shape of a 1 mm volume of ``shape`` resampled to ``spacing``: ``max(1, round(n / s))`` per axis."""
    x, y, z = (max(1, round(n * 1.0 / s)) for n, s in zip(shape, spacing))
    return x, y, z


def check_spacings(spacings: Sequence[Sequence[float]], shape: Sequence[int], cases: int) -> list[Spacing]:
    """Check the spacings a dataset is written at, before any file is written.

    Args:
        spacings: one or more ``(SX, SY, SZ)`` in mm; case ``i`` takes ``spacings[i % len(spacings)]``.
        shape: the 1 mm shape ``(X, Y, Z)`` every case is drawn at.
        cases: number of cases to be written.

    Returns:
        The spacings as float triples.

    Raises:
        InvalidValueError: no spacing, a spacing without three values, a value outside
            ``(0, 20]`` mm, or a resampled axis of fewer than 8 voxels (naming the first case
            and the axis).
    """
    if len(spacings) == 0:
        raise InvalidValueError("spacings must hold at least one (SX, SY, SZ), got none; pass None for 1 mm")
    checked: list[Spacing] = []
    for spacing in spacings:
        if len(spacing) != 3:
            raise InvalidValueError(f"a spacing needs 3 values SX SY SZ in mm, got {len(spacing)}: {tuple(spacing)}")
        sx, sy, sz = (float(s) for s in spacing)
        if not all(0.0 < s <= MAX_SPACING_MM for s in (sx, sy, sz)):  # also refuses NaN
            raise InvalidValueError(f"spacing {_fmt((sx, sy, sz))} mm: every value must be > 0 and <= "
                                    f"{MAX_SPACING_MM:g} mm")
        checked.append((sx, sy, sz))
    for index in range(min(cases, len(checked))):
        spacing = checked[index]
        for axis, (n, s, m) in enumerate(zip(shape, spacing, resampled_shape(shape, spacing))):
            if m < MIN_AXIS_VOXELS:
                raise InvalidValueError(
                    f"case {index} (spacing {_fmt(spacing)} mm): axis {_AXES[axis]} would have {m} voxel(s) "
                    f"({n} voxels at 1 mm / {s:g} mm); at least {MIN_AXIS_VOXELS} are needed: use a larger "
                    f"--shape or a finer spacing")
    return checked


def resample_volume(volume: np.ndarray, spacing: Sequence[float], order: int) -> np.ndarray:
    """Resample a 1 mm volume ``(X, Y, Z)`` to ``spacing`` mm over the same physical extent.

    Args:
        volume: the 1 mm volume; int16 images, integer or boolean label maps.
        spacing: target voxel size in mm per axis.
        order: 1 (linear: images, rounded and clipped back to the input's integer type) or
            0 (nearest neighbour: label maps and masks, whose values are kept as they are).

    Returns:
        The resampled volume, of shape :func:`resampled_shape` and the input's dtype.
    """
    if order not in (0, 1):
        raise InvalidValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
    shape = volume.shape
    new_shape = resampled_shape(shape, spacing)
    # Output voxel j sits at 1 mm coordinate c + (j - (m - 1) / 2) * s: both grids share their centre.
    offset = [(n - 1) / 2.0 - (m - 1) / 2.0 * s for n, m, s in zip(shape, new_shape, spacing)]
    if order == 0:
        source = volume.view(np.uint8) if volume.dtype == bool else volume
        out = ndimage.affine_transform(source, np.asarray(spacing, dtype=float), offset=offset,
                                       output_shape=new_shape, order=0, mode="nearest")
        return out.view(bool) if volume.dtype == bool else out
    out = ndimage.affine_transform(volume.astype(np.float32), np.asarray(spacing, dtype=float), offset=offset,
                                   output_shape=new_shape, order=1, mode="nearest")
    if np.issubdtype(volume.dtype, np.integer):
        info = np.iinfo(volume.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(volume.dtype)


def _fmt(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:g}" for s in spacing)
