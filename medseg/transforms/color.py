"""Colour jitter for RGB images: brightness, contrast, saturation and hue.

MONAI has intensity transforms but none that shifts saturation or hue of an RGB image, so
this is the one custom augmentation of the 2D pipeline. :func:`adjust_color` is a pure
function over tensors (the same operations, in the same order, as torchvision's
``ColorJitter``, which medseg does not depend on); :class:`RandColorJitterd` draws the
factors and calls it, TorchIO-style, so the augmentation is reproducible from the factors.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from medseg.errors import InvalidValueError

__all__ = ["RandColorJitterd", "adjust_color"]

# ITU-R BT.601 luma weights, as PIL's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[0], img[1], img[2]
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(0)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[0], img[1], img[2]
    maxc, _ = img.max(dim=0)
    minc, _ = img.min(dim=0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv[0], hsv[1], hsv[2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(hsv)
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        out[0] = torch.where(sel, r, out[0])
        out[1] = torch.where(sel, g, out[1])
        out[2] = torch.where(sel, b, out[2])
    return out


def adjust_color(img: torch.Tensor, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 hue: float = 0.0) -> torch.Tensor:
    """Adjust an RGB image with values in ``[0, 1]``.

    Args:
        img: ``(3, H, W)`` float tensor in ``[0, 1]``.
        brightness: multiplies every value; 1 keeps the image.
        contrast: blends with the mean grey level; 1 keeps the image, 0 gives flat grey.
        saturation: blends with the grey image; 1 keeps the image, 0 gives greyscale.
        hue: shift of the hue in turns, in ``[-0.5, 0.5]``; 0 keeps the image.

    Returns:
        The adjusted ``(3, H, W)`` image, clipped to ``[0, 1]``.

    Raises:
        ValueError: ``img`` is not ``(3, H, W)``, or a factor is out of range.
    """
    if img.ndim != 3 or img.shape[0] != 3:
        raise InvalidValueError(f"adjust_color needs a (3, H, W) RGB image, got shape {tuple(img.shape)}")
    if min(brightness, contrast, saturation) < 0:
        raise InvalidValueError(f"brightness, contrast and saturation must be >= 0, got {brightness}, {contrast}, {saturation}")
    if not -0.5 <= hue <= 0.5:
        raise InvalidValueError(f"hue must be in [-0.5, 0.5], got {hue}")
    out = img.float()
    if brightness != 1.0:
        out = (out * brightness).clamp(0, 1)
    if contrast != 1.0:
        out = (contrast * out + (1 - contrast) * _gray(out).mean()).clamp(0, 1)
    if saturation != 1.0:
        out = (saturation * out + (1 - saturation) * _gray(out)).clamp(0, 1)
    if hue != 0.0:
        hsv = _rgb_to_hsv(out)
        hsv[0] = (hsv[0] + hue) % 1.0
        out = _hsv_to_rgb(hsv).clamp(0, 1)
    return out


class RandColorJitterd(RandomizableTransform, MapTransform):
    """Randomly jitter brightness, contrast, saturation and hue of RGB images in ``[0, 1]``.

    Each factor is drawn uniformly from ``[1 - x, 1 + x]`` (hue: ``[-x, x]``), and the four
    adjustments are applied in a random order, as torchvision's ``ColorJitter`` does.

    Args:
        keys: image keys, each ``(3, H, W)``.
        brightness: maximum relative brightness change, >= 0. Defaults to 0.2.
        contrast: maximum relative contrast change, >= 0. Defaults to 0.2.
        saturation: maximum relative saturation change, >= 0. Defaults to 0.2.
        hue: maximum hue shift in turns, in ``[0, 0.5]``. Defaults to 0.02.
        prob: probability of jittering an image. Defaults to 0.8.
    """

    def __init__(self, keys: KeysCollection, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 hue: float = 0.02, prob: float = 0.8, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise InvalidValueError(f"`{name}` must be >= 0, got {value}")
        if not 0 <= hue <= 0.5:
            raise InvalidValueError(f"`hue` must be in [0, 0.5], got {hue}")
        self.ranges = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}
        self.factors: dict[str, float] = {}
        self.order: list[str] = []

    def randomize(self, data: object = None) -> None:
        """Draw whether to jitter, the four factors and their order."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.factors = {name: float(self.R.uniform(-x, x)) if name == "hue" else float(self.R.uniform(1 - x, 1 + x))
                        for name, x in self.ranges.items()}
        self.order = [list(self.ranges)[i] for i in self.R.permutation(len(self.ranges))]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(np.asarray(d[key]) if not isinstance(d[key], torch.Tensor) else d[key])
            for name in self.order:
                img = adjust_color(img, **{name: self.factors[name]})
            d[key] = img
        return d
