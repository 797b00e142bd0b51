"""Synthetic BraTS-like multi-contrast brain MRI with a tumour.

Each case is a head (scalp, skull, CSF, grey and white matter with texture and
ventricles) imaged in four contrasts whose tissue intensities are ordered as in real
MRI, multiplied by a smooth bias field and corrupted by Rician noise. The tumour has an
irregular shape, a random size and location, a necrotic core, an enhancing rim and
surrounding oedema; about a quarter of the cases are "low grade", with no enhancing
tumour. Labels use the BraTS 2021 values (1 necrosis, 2 oedema, 4 enhancing); writers
convert them to other conventions. A post-operative case (``cavity=True``) also has a
fluid-filled resection cavity cut into the tumour, kept as its own mask: the BraTS 2024+
writer labels it 4 (RC). :func:`resample_case` takes a case to another voxel spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.data.conventions import BRATS_CHANNELS
from medseg.data.synth.fields import normalized_grid, smooth_field
from medseg.data.synth.resample import resample_volume, resampled_shape, voxel_affine
from medseg.errors import InvalidValueError

# Tissue classes painted into the phantom before contrasts are applied.
BG, SCALP, SKULL, CSF, GM, WM, EDEMA, NECROSIS, ENHANCING, CAVITY = range(10)

# Mean intensity of each tissue class per contrast, relative to white matter in T1.
# T1: WM > GM > CSF; T1ce: enhancing rim bright; T2: CSF and oedema bright;
# FLAIR: CSF suppressed, oedema brightest; a resection cavity holds fluid, close to CSF.
_CONTRAST_TABLE: dict[str, tuple[float, ...]] = {
    #            BG    SCALP SKULL CSF   GM    WM    EDEMA NECR  ENH   CAVITY
    "t1":    (0.0, 0.95, 0.08, 0.22, 0.58, 0.80, 0.50, 0.28, 0.60, 0.18),
    "t1ce":  (0.0, 0.95, 0.08, 0.24, 0.60, 0.80, 0.52, 0.26, 1.25, 0.20),
    "t2":    (0.0, 0.70, 0.06, 1.00, 0.62, 0.45, 0.88, 0.95, 0.70, 1.05),
    "flair": (0.0, 0.60, 0.06, 0.12, 0.62, 0.50, 1.00, 0.55, 0.82, 0.20),
}
# Scanner scale of each contrast, so the four channels have different raw ranges.
_RAW_SCALE: dict[str, float] = {"t1": 900.0, "t1ce": 1100.0, "t2": 1600.0, "flair": 700.0}


@dataclass(frozen=True)
class BratsCase:
    """One synthetic case.

    Attributes:
        images: contrast name -> int16 volume ``(X, Y, Z)``, in canonical channel order.
        label: uint8 label map ``(X, Y, Z)`` in BraTS 2021 values {0, 1, 2, 4}.
        affine: 4x4 voxel-to-world matrix shared by all volumes.
        has_enhancing: whether the tumour has an enhancing component.
        cavity: boolean resection-cavity mask ``(X, Y, Z)`` (label 0 in ``label``), or ``None``.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    has_enhancing: bool
    cavity: np.ndarray | None = None


def brats_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The voxel-to-RAS affine that BraTS 2021 files carry (x and y flipped; 1 mm unless ``spacing`` is given)."""
    return voxel_affine(shape, spacing)


def _tissue_map(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paint scalp, skull, CSF, GM and WM; return the tissue map and the brain mask."""
    x, y, z = normalized_grid(shape)
    radii = rng.uniform([0.80, 0.92, 0.78], [0.88, 0.99, 0.86])
    # The head is an ellipsoid whose surface is roughened by a low-frequency field.
    scale = max(4, min(shape) // 6)
    rho = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    rho = rho * (1.0 + 0.025 * smooth_field(rng, shape, scale))
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[rho < 1.0] = SCALP
    tissue[rho < 0.94] = SKULL
    brain = rho < 0.88
    tissue[brain] = CSF
    # Cortex: a band under the brain surface whose thickness varies (gyri), with sulci of CSF.
    folds = smooth_field(rng, shape, max(2, min(shape) // 20))
    depth = 0.88 - rho
    tissue[brain & (depth > 0.02 + 0.012 * folds)] = GM
    tissue[brain & (depth > 0.14 + 0.045 * folds)] = WM
    # Deep grey-matter nuclei and the lateral ventricles.
    for side in (-1.0, 1.0):
        nucleus = ((x - 0.22 * side) / 0.12) ** 2 + (y / 0.2) ** 2 + ((z + 0.05) / 0.14) ** 2
        tissue[brain & (nucleus < 1.0)] = GM
        ventricle = ((x - 0.09 * side) / 0.06) ** 2 + ((y + 0.05) / 0.3) ** 2 + ((z - 0.08) / 0.1) ** 2
        tissue[brain & (ventricle < 1.0)] = CSF
    return tissue, brain


def _add_tumour(
    rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, enhancing: bool
) -> np.ndarray:
    """Paint oedema, necrosis and enhancing rim into ``tissue``; return the BraTS-2021 label map."""
    shape = tissue.shape
    x, y, z = normalized_grid(shape)
    # Centre inside the brain, away from the skull.
    inner = np.argwhere(ndimage.binary_erosion(brain, iterations=max(2, min(shape) // 8)))
    if len(inner) == 0:
        inner = np.argwhere(brain)
    centre = inner[rng.integers(len(inner))]
    cx, cy, cz = (2.0 * centre / (np.array(shape) - 1) - 1.0) * (np.array(shape) / max(shape))
    stretch = rng.uniform(0.7, 1.3, size=3)
    radius = rng.uniform(0.16, 0.30)
    dist = np.sqrt(((x - cx) / stretch[0]) ** 2 + ((y - cy) / stretch[1]) ** 2 + ((z - cz) / stretch[2]) ** 2) / radius
    # Lobulated, irregular shape: the level sets of distance plus a smooth field.
    f = dist + 0.35 * smooth_field(rng, shape, max(3, min(shape) // 10))
    core_level = rng.uniform(0.45, 0.65)
    necrosis_level = core_level * rng.uniform(0.35, 0.7)
    oedema = (f < 1.0) & brain
    core = (f < core_level) & brain
    label = np.zeros(shape, dtype=np.uint8)
    label[oedema] = 2
    tissue[oedema] = EDEMA
    if enhancing:
        necrosis = (f < necrosis_level) & brain
        label[core] = 4
        tissue[core] = ENHANCING
        label[necrosis] = 1
        tissue[necrosis] = NECROSIS
    else:
        label[core] = 1  # non-enhancing tumour core (low grade)
        tissue[core] = NECROSIS
    return label


def _add_cavity(rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Cut an ellipsoidal resection cavity into the tumour, off its centre; clear its labels; return its mask."""
    shape = tissue.shape
    tumour = np.argwhere(label > 0)
    if len(tumour) == 0:
        return np.zeros(shape, dtype=bool)
    # Tumour radius (voxels) from its volume; the cavity takes out one side of it.
    radius = (3.0 * len(tumour) / (4.0 * np.pi)) ** (1.0 / 3.0)
    direction = rng.normal(size=3)
    centre = tumour.mean(axis=0) + 0.8 * radius * direction / np.linalg.norm(direction)
    semi = radius * rng.uniform(0.4, 0.6, size=3)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, semi)) < 1.0
    cavity = inside & brain
    tissue[cavity] = CAVITY
    label[cavity] = 0
    return cavity


def _render_contrast(
    rng: np.random.Generator, tissue: np.ndarray, contrast: str, texture: np.ndarray
) -> np.ndarray:
    """Turn the tissue map into one MR contrast: means, texture, partial volume, bias, noise."""
    means = np.asarray(_CONTRAST_TABLE[contrast], dtype=np.float32)
    image = means[tissue]
    jitter = rng.uniform(0.94, 1.06)  # scanner-to-scanner contrast variation
    image = image * jitter * (1.0 + 0.07 * texture)
    image = ndimage.gaussian_filter(image, sigma=0.6)  # partial-volume blur at edges
    bias = np.exp(0.12 * smooth_field(rng, tissue.shape, max(8, max(tissue.shape) // 2)))
    image = image * bias
    sigma = 0.035
    noisy = np.sqrt((image + sigma * rng.standard_normal(image.shape, dtype=np.float32)) ** 2
                    + (sigma * rng.standard_normal(image.shape, dtype=np.float32)) ** 2)
    noisy[tissue == BG] *= 0.3  # air: only the Rician noise floor remains
    return np.clip(noisy * _RAW_SCALE[contrast], 0, np.iinfo(np.int16).max).astype(np.int16)


def make_brats_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (240, 240, 155), p_no_enhancing: float = 0.25,
    cavity: bool = False,
) -> BratsCase:
    """Generate one synthetic BraTS-like case.

    Args:
        rng: random generator; the case is a deterministic function of its state.
        shape: volume shape ``(X, Y, Z)`` at 1 mm spacing; BraTS is 240x240x155.
        p_no_enhancing: probability of a tumour without enhancing component.
        cavity: cut a resection cavity into the tumour (a post-operative case). Without it
            the generator draws exactly what it always drew, so existing data stay the same.

    Returns:
        The four contrasts, the BraTS-2021 label map, the affine and the cavity mask.
    """
    if len(shape) != 3 or min(shape) < 16:
        raise InvalidValueError(f"shape must be three sizes of at least 16 voxels, got {tuple(shape)}")
    shape = tuple(int(s) for s in shape)
    tissue, brain = _tissue_map(rng, shape)
    enhancing = bool(rng.random() >= p_no_enhancing)
    label = _add_tumour(rng, tissue, brain, enhancing)
    cavity_mask = _add_cavity(rng, tissue, brain, label) if cavity else None
    texture = smooth_field(rng, shape, 2)  # shared anatomy texture seen by all contrasts
    images = {c: _render_contrast(rng, tissue, c, texture) for c in BRATS_CHANNELS}
    return BratsCase(images=images, label=label, affine=brats_affine(shape), has_enhancing=enhancing,
                     cavity=cavity_mask)


def resample_case(case: BratsCase, spacing: tuple[float, float, float]) -> BratsCase:
    """Resample a 1 mm case to ``spacing`` mm over the same physical extent.

    Images are interpolated linearly (rounded and clipped, still int16); the label map and the
    cavity mask by nearest neighbour, so they hold only the values they held. The affine is
    :func:`brats_affine` of the new shape and spacing. A spacing of exactly 1 mm returns ``case``.

    Args:
        case: a case from :func:`make_brats_case` (1 mm voxels).
        spacing: target voxel size ``(SX, SY, SZ)`` in mm; check it first with
            :func:`medseg.data.synth.resample.check_spacings`.

    Returns:
        The resampled case; ``has_enhancing`` says whether its label map still holds enhancing tumour.
    """
    if tuple(float(s) for s in spacing) == (1.0, 1.0, 1.0):
        return case
    label = resample_volume(case.label, spacing, order=0)
    return BratsCase(
        images={name: resample_volume(image, spacing, order=1) for name, image in case.images.items()},
        label=label,
        affine=brats_affine(resampled_shape(case.label.shape, spacing), spacing),
        has_enhancing=bool((label == 4).any()),
        cavity=None if case.cavity is None else resample_volume(case.cavity, spacing, order=0),
    )
