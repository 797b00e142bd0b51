"""Synthetic ISIC-2018-like dermoscopy images with lesion masks.

Each image is RGB skin (tone, low-frequency blotches, fine texture, a dark dermoscope
vignette) with one pigmented lesion whose border is irregular (a random radial profile
plus a smooth field) and whose colour varies from light brown to dark brown and
blue-grey regions with a reticular pigment network. Hair strands cross the image and
some images carry ruler-like tick marks, the artefacts that real ISIC images have.
Files use ISIC 2018 Task 1 names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medseg.data.synth.fields import normalized_grid, smooth_field
from medseg.errors import InvalidValueError
from medseg.utils.atomic import atomic_path

ISIC_IMAGE_DIR = "ISIC2018_Task1-2_Training_Input"
ISIC_MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"

_SKIN_TONES = np.array([[233, 190, 170], [222, 170, 140], [198, 140, 110], [240, 205, 190]], dtype=np.float32)
_LESION_TONES = np.array([[150, 95, 70], [110, 65, 45], [70, 40, 35], [95, 85, 110]], dtype=np.float32)


def _lesion_mask(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Irregular lesion: returns the boolean mask and a radial coordinate (0 centre, 1 border)."""
    y, x = normalized_grid((h, w), spacing=(1.0, 1.0))
    cy, cx = rng.uniform(-0.25, 0.25, size=2)
    base = rng.uniform(0.25, 0.5)
    angle = np.arctan2(y - cy, x - cx)
    profile = np.ones_like(angle)
    for k in range(2, 7):  # lobulated border: a few random harmonics
        profile = profile + rng.uniform(0, 0.12 / k**0.5) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    aspect = rng.uniform(0.7, 1.0)
    r = np.sqrt((x - cx) ** 2 + ((y - cy) / aspect) ** 2) / (base * profile)
    r = r + 0.08 * smooth_field(rng, (h, w), max(3, min(h, w) // 24))
    return r < 1.0, np.clip(r, 0, None)


def _draw_hair(rng: np.random.Generator, img: Image.Image) -> None:
    draw = ImageDraw.Draw(img)
    h, w = img.height, img.width
    for _ in range(int(rng.integers(0, 12))):
        start = rng.uniform([0, 0], [w, h])
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 0.7) * max(h, w)
        curvature = rng.uniform(-0.004, 0.004)
        points = []
        for t in np.linspace(0, length, 40):
            direction += curvature * (length / 40)
            start = start + (length / 40) * np.array([np.cos(direction), np.sin(direction)])
            points.append(tuple(start))
        shade = int(rng.integers(20, 70))
        draw.line(points, fill=(shade, shade - 10 if shade > 10 else 0, 5), width=int(rng.integers(1, 4)))


def _draw_ruler(rng: np.random.Generator, img: Image.Image) -> None:
    draw = ImageDraw.Draw(img)
    h, w = img.height, img.width
    y0 = int(rng.uniform(0.85, 0.95) * h)
    step = max(4, w // 60)
    for i, x in enumerate(range(int(0.1 * w), int(0.9 * w), step)):
        tick = step * (3 if i % 10 == 0 else 2 if i % 5 == 0 else 1)
        draw.line([(x, y0), (x, y0 - tick)], fill=(40, 40, 40), width=1)
    draw.line([(int(0.1 * w), y0), (int(0.9 * w), y0)], fill=(40, 40, 40), width=1)


def make_isic_image(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Generate one dermoscopy-like image and its lesion mask.

    Args:
        rng: random generator.
        size: ``(width, height)`` in pixels.

    Returns:
        ``(rgb, mask)``: uint8 ``(H, W, 3)`` image and uint8 ``(H, W)`` mask with values 0/255.
    """
    w, h = int(size[0]), int(size[1])
    if min(w, h) < 32:
        raise InvalidValueError(f"image size must be at least 32x32, got {w}x{h}")
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.9, 1.05)
    img = np.broadcast_to(skin, (h, w, 3)).astype(np.float32).copy()
    img *= (1 + 0.05 * smooth_field(rng, (h, w), max(4, min(h, w) // 6)))[..., None]
    img *= (1 + 0.03 * smooth_field(rng, (h, w), 2))[..., None]
    mask, r = _lesion_mask(rng, h, w)
    # Colour varies inside the lesion: darker centre, patches of a second tone, pigment network.
    tone_a, tone_b = _LESION_TONES[rng.choice(len(_LESION_TONES), size=2, replace=False)]
    mix = np.clip(0.5 + 0.6 * smooth_field(rng, (h, w), max(3, min(h, w) // 10)), 0, 1)[..., None]
    lesion = tone_a * mix + tone_b * (1 - mix)
    lesion *= (0.85 + 0.25 * np.clip(r, 0, 1))[..., None]
    network = np.sin(np.linspace(0, rng.uniform(30, 60), w))[None, :] * np.sin(np.linspace(0, rng.uniform(30, 60), h))[:, None]
    lesion *= (1 - 0.08 * (network > 0.3))[..., None]
    # Soft border: blend over a few pixels rather than a hard cut-out.
    alpha = np.clip((1.0 - r) / 0.08, 0, 1)[..., None]
    img = img * (1 - alpha) + lesion * alpha
    y, x = normalized_grid((h, w), spacing=(1.0, 1.0))
    vignette = np.clip(1.25 - 0.55 * (x**2 + y**2) ** 1.5, 0.25, 1.0)
    img *= vignette[..., None]
    img += rng.normal(0, 4, img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _draw_hair(rng, pil)
    if rng.random() < 0.4:
        _draw_ruler(rng, pil)
    pil = pil.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(pil), (mask.astype(np.uint8) * 255)


def write_isic_dataset(
    out: str | Path,
    cases: int,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write ``cases`` synthetic images in the ISIC 2018 Task 1 layout.

    Args:
        out: output folder; images go to ``ISIC2018_Task1-2_Training_Input`` and masks to
            ``ISIC2018_Task1_Training_GroundTruth``.
        cases: number of images.
        size: ``(width, height)``; by default each image draws one of several sizes and
            aspect ratios, as real ISIC images vary.
        seed: random seed; image ``i`` depends only on ``(seed, i)``.
        progress: optional callback ``(done, total)``.

    Returns:
        The image paths.
    """
    if cases < 1:
        raise InvalidValueError(f"cases must be >= 1, got {cases}")
    out = Path(out)
    written = []
    for i in range(cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, 2018]))
        this_size = size or [(600, 450), (640, 480), (512, 512), (720, 480)][int(rng.integers(4))]
        rgb, mask = make_isic_image(rng, this_size)
        cid = f"ISIC_{i:07d}"
        image_path = out / ISIC_IMAGE_DIR / f"{cid}.jpg"
        with atomic_path(image_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="JPEG", quality=92)
        with atomic_path(out / ISIC_MASK_DIR / f"{cid}_segmentation.png") as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")
        written.append(image_path)
        if progress:
            progress(i + 1, cases)
    return written
