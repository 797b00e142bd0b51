"""Synthetic abdominal CT with a liver-like organ and hypodense lesions, in Hounsfield units.

Each case is an axial stack through an elliptical body in air: subcutaneous fat under a
roughened skin outline, soft tissue with patches of visceral fat, a spine (cortical ring,
cancellous core, discs) and rib segments, and a liver-like organ (class 1) holding one to
three hypodense lesions (class 2) of varied size, some only a few millimetres across.
Contrast is blurred for partial volume, shifted by a smooth additive inhomogeneity and
corrupted by Gaussian noise.

The intensities are chosen for the self-configuration benchmark: air (-1000 HU, about half
of each volume, a share that varies with body size) and bone (+300..+1100 HU) dominate a
per-image z-score, which squeezes the organ/lesion contrast and shifts it from case to
case, while a CT normalisation (clip to the dataset's foreground percentiles, z-score with
the foreground mean and std) keeps it. The lesions differ from the organ by 30-36 HU under
12-18 HU of noise, so they are visible but not trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.data.synth.fields import normalized_grid, smooth_field
from medseg.data.synth.resample import resample_volume, resampled_shape, voxel_affine
from medseg.errors import InvalidValueError

CT_LABELS: dict[str, int] = {"background": 0, "organ": 1, "lesion": 2}
DEFAULT_CT_SHAPE: tuple[int, int, int] = (96, 96, 48)
AIR_HU = -1000.0
_HU_RANGE = (-1024, 3071)  # the range a 12-bit CT scanner stores


@dataclass(frozen=True)
class CtCase:
    """One synthetic CT case.

    Attributes:
        image: int16 volume ``(X, Y, Z)`` in Hounsfield units.
        label: uint8 label map ``(X, Y, Z)``: 0 background, 1 organ, 2 lesion.
        affine: 4x4 voxel-to-world matrix (x and y flipped, as :func:`voxel_affine`).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _body(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Return the body mask, its normalised radius ``rho`` and the grid."""
    x, y, z = normalized_grid(shape)
    semi_x, semi_y = rng.uniform(0.74, 0.92), rng.uniform(0.55, 0.72)
    taper = 1.0 + rng.uniform(-0.15, 0.15) * z  # the outline widens or narrows along the body axis
    rho = np.sqrt((x / (semi_x * taper)) ** 2 + ((y - rng.uniform(-0.05, 0.05)) / (semi_y * taper)) ** 2)
    rho = rho * (1.0 + 0.03 * smooth_field(rng, shape, max(4, min(shape) // 4)))
    return rho < 1.0, rho, (x, y, z, semi_x, semi_y)


def _bone(rng: np.random.Generator, shape: tuple[int, int, int], grid: tuple, rho: np.ndarray,
          fat_edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Paint spine (with its discs) and rib segments; return their HU and their mask."""
    x, y, _, _, semi_y = grid
    hu = np.zeros(shape, dtype=np.float32)
    # Vertebral body posterior (high y index) with a spinous process behind it; discs every ~25 mm.
    radius = rng.uniform(0.10, 0.14)
    cy = semi_y * rng.uniform(0.45, 0.55)
    r = np.sqrt(x ** 2 + (y - cy) ** 2) / radius
    process = (x / (0.3 * radius)) ** 2 + ((y - cy - 1.6 * radius) / (0.8 * radius)) ** 2 < 1.0
    z_mm = np.arange(shape[2], dtype=np.float32).reshape(1, 1, -1)
    disc = ((z_mm + rng.uniform(0, 25)) % rng.uniform(22, 28)) < rng.uniform(4, 6)
    vertebra = (r < 1.0) | process
    hu = np.where(vertebra, rng.uniform(300, 450), hu)
    hu = np.where(((r < 1.0) & (r > 0.7)) | process, rng.uniform(800, 1100), hu)  # cortical ring
    hu = np.where(vertebra & disc, 80.0, hu)
    # Rib segments: a thin shell just inside the fat, broken into pieces, away from the spine.
    pieces = smooth_field(rng, shape, max(3, min(shape) // 6)) > 0.4
    ribs = (rho > fat_edge - 0.07) & (rho < fat_edge - 0.035) & pieces
    ribs &= (y < cy - radius) | (np.abs(x) > 2.5 * radius)
    hu = np.where(ribs, rng.uniform(550, 750), hu)
    return hu, vertebra | ribs


def _organ(rng: np.random.Generator, shape: tuple[int, int, int], grid: tuple, inside: np.ndarray) -> np.ndarray:
    """The liver-like organ: a lobulated ellipsoid anterior on the patient's right (high x index)."""
    x, y, z, semi_x, semi_y = grid
    cx, cy = semi_x * rng.uniform(0.3, 0.45), semi_y * rng.uniform(-0.35, -0.05)
    rx, ry, rz = rng.uniform(0.26, 0.36), rng.uniform(0.24, 0.34), rng.uniform(0.35, 0.6)
    dist = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + (z / rz) ** 2)
    return (dist + 0.2 * smooth_field(rng, shape, max(3, min(shape) // 6)) < 1.0) & inside


def _lesions(rng: np.random.Generator, shape: tuple[int, int, int], organ: np.ndarray) -> list[np.ndarray]:
    """One to three lesions inside the organ, 2-9 mm in radius (log-uniform: many small ones)."""
    depth = ndimage.distance_transform_edt(organ)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    masks = []
    for _ in range(int(rng.integers(1, 4))):
        # Capped for small organs (tiny test volumes), so that a lesion never swallows its organ.
        radius = min(float(np.exp(rng.uniform(np.log(2.0), np.log(9.0)))), max(1.5, 0.6 * float(depth.max())))
        candidates = np.argwhere(depth > 0.8 * radius)
        if len(candidates) == 0:
            candidates = np.argwhere(depth >= depth.max())
        centre = candidates[rng.integers(len(candidates))]
        semi = radius * rng.uniform(0.8, 1.25, size=3)
        inside = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, semi)) < 1.0
        masks.append(inside & organ)
    return masks


def check_ct_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return ``shape`` as three ints.

    Raises:
        InvalidValueError: ``shape`` is not three sizes of at least 16 voxels.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise InvalidValueError(f"shape must be three sizes of at least 16 voxels, got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def make_ct_case(rng: np.random.Generator, shape: tuple[int, int, int] = DEFAULT_CT_SHAPE) -> CtCase:
    """Generate one synthetic abdominal CT case at 1 mm.

    Args:
        rng: random generator; the case is a deterministic function of its state.
        shape: volume shape ``(X, Y, Z)`` at 1 mm spacing, each at least 16 (default 96x96x48).

    Returns:
        The int16 HU image, the label map (0 background, 1 organ, 2 lesion) and the affine.

    Raises:
        InvalidValueError: ``shape`` is not three sizes of at least 16 voxels.
    """
    shape = check_ct_shape(shape)
    body, rho, grid = _body(rng, shape)
    fat_edge = 1.0 - rng.uniform(0.06, 0.14)  # subcutaneous fat between rho = fat_edge and the skin
    inside = body & (rho < fat_edge)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[body] = rng.uniform(-115, -85)
    soft = rng.uniform(35, 45) + 8.0 * smooth_field(rng, shape, 2)
    hu = np.where(inside, soft, hu)
    hu = np.where(inside & (smooth_field(rng, shape, max(3, min(shape) // 8)) > 1.0), rng.uniform(-110, -80), hu)
    bone_hu, bone = _bone(rng, shape, grid, rho, fat_edge)
    hu = np.where(bone, bone_hu, hu)
    organ = _organ(rng, shape, grid, inside) & ~ndimage.binary_dilation(bone, iterations=3)
    organ_hu = rng.uniform(55, 65)
    hu = np.where(organ, organ_hu + 5.0 * smooth_field(rng, shape, 3), hu)
    label = organ.astype(np.uint8)
    for lesion in _lesions(rng, shape, organ):
        hu = np.where(lesion, organ_hu - rng.uniform(30, 36) + 4.0 * smooth_field(rng, shape, 2), hu)
        label[lesion] = CT_LABELS["lesion"]
    hu = ndimage.gaussian_filter(hu, sigma=0.7)  # partial volume at edges
    hu[body] += 4.0 * smooth_field(rng, shape, max(8, max(shape) // 2))[body]  # beam hardening, scatter
    hu += rng.uniform(12, 18) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(hu), *_HU_RANGE).astype(np.int16)
    return CtCase(image=image, label=label, affine=voxel_affine(shape))


def resample_ct_case(case: CtCase, spacing: tuple[float, float, float]) -> CtCase:
    """Resample a 1 mm case to ``spacing`` mm over the same extent (image linear, label nearest).

    Args:
        case: a case from :func:`make_ct_case`.
        spacing: target voxel size ``(SX, SY, SZ)`` in mm; check it first with
            :func:`medseg.data.synth.resample.check_spacings`.

    Returns:
        The resampled case (``case`` itself for exactly 1 mm).
    """
    if tuple(float(s) for s in spacing) == (1.0, 1.0, 1.0):
        return case
    return CtCase(image=resample_volume(case.image, spacing, order=1),
                  label=resample_volume(case.label, spacing, order=0),
                  affine=voxel_affine(resampled_shape(case.image.shape, spacing), spacing))
