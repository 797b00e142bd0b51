"""2D prediction: the whole image through the network, optional multi-scale and mirror TTA.

A 2D image is small enough to go through the network whole, so there is no sliding
window (the 3D peer is :mod:`medseg.inference.predictor`): the image is resized (or
letterboxed) to the training size exactly as in training (:mod:`medseg.transforms.planar`),
and the lesion probability is resized back to the image's own width and height. With
``multiscale`` the image is also predicted at 0.75x and 1.25x the training size (rounded to
the network's size divisor) and the three probability maps are averaged at the image's
resolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.transforms.planar import fit_geometry, from_network_size, normalizer, to_network_size
from medseg.utils.device import autocast, resolve_device

if TYPE_CHECKING:
    from medseg.inference.planar import PlanarModel

__all__ = ["MULTISCALE", "PlanarPredictor", "scaled_size"]

#: The scales averaged by ``--multiscale``.
MULTISCALE: tuple[float, ...] = (0.75, 1.0, 1.25)


def scaled_size(size: Sequence[int], scale: float, divisor: int) -> tuple[int, int]:
    """``size`` times ``scale``, each side rounded to the nearest multiple of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(s * scale / divisor)) * divisor) for s in size)  # type: ignore[return-value]


class PlanarPredictor:
    """Predict the lesion probability of an RGB image at its own resolution.

    Args:
        model: the model.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        multiscale: average the scales of :data:`MULTISCALE`.
        tta: also average the 4 mirrorings of the two axes at each scale. Without it, the
            mirrorings of the model's default ``tta_axes`` (none unless its checkpoint says so).
    """

    def __init__(self, model: PlanarModel, device: str = "auto", multiscale: bool = False, tta: bool = False) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.network = model.network.to(self.device).eval()
        self.scales = MULTISCALE if multiscale else (1.0,)
        dims = (2, 3) if tta else tuple(2 + a for a in sorted(model.tta_axes))
        self.flips: tuple[tuple[int, ...], ...] = tuple(
            a for n in range(len(dims) + 1) for a in itertools.combinations(dims, n))
        self.norm = normalizer(model.normalize)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((1, 1, *x.shape[2:]), device=self.device)
        for axes in self.flips:
            inp = torch.flip(x, axes) if axes else x
            with autocast(self.device):
                logits = self.network(inp)
            prob = torch.sigmoid(logits.float())
            total += torch.flip(prob, axes) if axes else prob
        return total / len(self.flips)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Lesion probability of one image.

        Args:
            rgb: ``(H, W, 3)`` uint8 image.

        Returns:
            ``(H, W)`` float32 probabilities in ``[0, 1]``.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise MedsegError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
        hw = rgb.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0
        accumulated = torch.zeros(hw, dtype=torch.float32)
        for scale in self.scales:
            size = scaled_size(self.model.image_size, scale, self.model.size_divisor)
            geometry = fit_geometry(hw, size, self.model.resize)
            x = to_network_size(image, geometry, "bilinear")
            if self.norm is not None:
                x = torch.as_tensor(self.norm(x))
            prob = self._forward(x[None].to(self.device))[0].float().cpu()
            accumulated += from_network_size(prob, geometry, hw)[0]
        return (accumulated / len(self.scales)).clamp_(0, 1).numpy()
