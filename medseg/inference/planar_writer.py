"""2D outputs: the lesion mask, an overlay and the probability map as PNG, written as a set.

The 2D peer of :mod:`medseg.inference.writer`. Each case writes ``<id>.png`` (mask, 0/255,
exactly the image's size), ``<id>_overlay.png`` (the image with the lesion tinted and
outlined) and, with ``save_prob``, ``<id>_prob.png`` (probability x 255). The files are
written through temporary names and renamed as a set. :class:`SavePlanard` writes the same
files from MONAI bundle configs (``monai.bundle run``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from PIL import Image
from scipy import ndimage

from medseg.inference.writer import output_paths
from medseg.privacy import safe_case_id
from medseg.transforms.planar import fit_geometry, from_network_size, read_rgb
from medseg.utils.atomic import atomic_path

__all__ = ["PlanarOutputs", "SavePlanard", "overlay_image", "planar_output_paths", "write_planar_outputs"]

_OVERLAY_RGB = np.array([255, 40, 40], dtype=np.float32)
_CONTOUR_RGB = np.array([255, 230, 0], dtype=np.uint8)


@dataclass(frozen=True)
class PlanarOutputs:
    """The files of one 2D case: ``<id>.png``, ``<id>_overlay.png``, ``<id>_prob.png``."""

    mask: Path
    overlay: Path
    probabilities: Path


def planar_output_paths(output_dir: str | Path, case_id: str) -> PlanarOutputs:
    """The output files of ``case_id``, refusing ids that would write outside ``output_dir``.

    Raises:
        MedsegError: as :func:`medseg.inference.writer.output_paths`.
    """
    root = output_paths(output_dir, case_id).labels.parent  # the same id checks as the 3D outputs
    return PlanarOutputs(root / f"{case_id}.png", root / f"{case_id}_overlay.png", root / f"{case_id}_prob.png")


def overlay_image(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The image with the lesion tinted red and its border drawn in yellow.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        mask: ``(H, W)`` boolean lesion mask.
        alpha: opacity of the tint.

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * _OVERLAY_RGB
    out = out.astype(np.uint8)
    width = max(1, round(max(mask.shape) / 300))  # visible on large photographs too
    border = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out[border] = _CONTOUR_RGB
    return out


def write_planar_outputs(rgb: np.ndarray, probabilities: np.ndarray, paths: PlanarOutputs, threshold: float = 0.5,
                         save_prob: bool = False, keep: Collection[Path] = ()) -> list[Path]:
    """Write the mask and the overlay (and the probability map) of one image, as a set.

    Args:
        rgb: the input ``(H, W, 3)`` uint8 image.
        probabilities: ``(H, W)`` lesion probabilities.
        paths: where to write.
        threshold: probability at or above which a pixel is lesion.
        save_prob: also write the probability map.
        keep: existing files to leave as they are (not written).

    Returns:
        The files written.

    Raises:
        RuntimeError: the probability map is not the image's size (nothing is written).
    """
    if probabilities.shape != rgb.shape[:2]:
        raise RuntimeError(f"probability map is {probabilities.shape}, the image {rgb.shape[:2]}; not written")
    mask = probabilities >= threshold
    images = [(paths.mask, Image.fromarray((mask * 255).astype(np.uint8), mode="L")),
              (paths.overlay, Image.fromarray(overlay_image(rgb, mask), mode="RGB"))]
    if save_prob:
        images.append((paths.probabilities, Image.fromarray(np.round(probabilities * 255).astype(np.uint8), mode="L")))
    images = [(target, image) for target, image in images if target not in keep]
    with contextlib.ExitStack() as stack:  # every file to its temporary name first, then all renamed
        for target, image in images:
            image.save(stack.enter_context(atomic_path(target)), format="PNG")
    return [target for target, _ in images]


class SavePlanard(MapTransform):
    """Bundle post-processing: write each prediction as ``<case_id>.png`` + overlay at its image's own size.

    Used by the 2D bundles' ``configs/inference.json`` (MONAI's ``monai.bundle run``); it
    expects the ``image_path`` and ``image_hw`` keys of
    :class:`~medseg.transforms.planar.LoadImage2Dd` and a sigmoid probability ``(1, h, w)``.

    Args:
        keys: the prediction key.
        output_dir: the output folder.
        image_size: the network input ``(H, W)``.
        resize: ``"stretch"`` or ``"letterbox"``, as in training.
        threshold: probability at or above which a pixel is lesion.
    """

    def __init__(self, keys: str, output_dir: str | Path, image_size: Sequence[int], resize: str = "stretch",
                 threshold: float = 0.5) -> None:
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.image_size = tuple(int(s) for s in image_size)
        self.resize = resize
        self.threshold = threshold

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        path = Path(str(d["image_path"]))
        hw = tuple(int(v) for v in np.asarray(d["image_hw"]).reshape(-1))
        geometry = fit_geometry(hw, self.image_size, self.resize)
        for key in self.key_iterator(d):
            prob = from_network_size(torch.as_tensor(d[key]).float().cpu(), geometry, hw)[0].numpy()
            case_id = safe_case_id(str(d.get("case_id") or path.stem))
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_planar_outputs(read_rgb(path), prob, planar_output_paths(self.output_dir, case_id), self.threshold)
        return d
