"""2D (dermoscopy) inference: whole-image prediction, optional multi-scale and mirror TTA, PNG outputs.

A 2D image is small enough to go through the network whole, so there is no sliding
window: the image is resized (or letterboxed) to the training size exactly as in training
(:mod:`medseg.transforms.planar`), the lesion probability is resized back to the image's
own width and height, and thresholded. With ``multiscale`` the image is also predicted at
0.75x and 1.25x the training size (rounded to the network's size divisor) and the three
probability maps are averaged at the image's resolution.

Each case writes ``<id>.png`` (mask, 0/255, exactly the image's size), ``<id>_overlay.png``
(the image with the lesion tinted and outlined) and, with ``save_prob``, ``<id>_prob.png``
(probability x 255). The files are written through temporary names and renamed as a set.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from PIL import Image
from scipy import ndimage
from torch import nn

from medseg.checkpoint import ModelSpec, build_from_checkpoint
from medseg.errors import MedsegError
from medseg.inference.writer import output_paths
from medseg.privacy import safe_case_id
from medseg.transforms.planar import (
    NORMALIZATIONS,
    RESIZE_MODES,
    fit_geometry,
    from_network_size,
    normalizer,
    read_rgb,
    to_network_size,
)
from medseg.utils.atomic import atomic_path
from medseg.utils.device import autocast, resolve_device
from medseg.utils.limits import MAX_IMAGE_PIXELS_ENV, max_image_pixels

__all__ = ["MULTISCALE", "PlanarModel", "PlanarOutputs", "PlanarPredictor", "infer_image", "load_planar_model",
           "SavePlanard", "overlay_image", "planar_output_paths", "scaled_size", "write_planar_outputs"]

logger = logging.getLogger("medseg.infer")

#: The scales averaged by ``--multiscale``.
MULTISCALE: tuple[float, ...] = (0.75, 1.0, 1.25)
_OVERLAY_RGB = np.array([255, 40, 40], dtype=np.float32)
_CONTOUR_RGB = np.array([255, 230, 0], dtype=np.uint8)


@dataclass(frozen=True)
class PlanarModel:
    """A 2D binary-segmentation network with the preprocessing it was trained with.

    Attributes:
        network: the network, in eval mode, on the CPU.
        network_name: its registry name, e.g. ``"light_unet"``.
        checkpoint: the file the weights came from.
        image_size: the network input ``(H, W)`` used in training.
        resize: ``"stretch"`` or ``"letterbox"``.
        normalize: ``"imagenet"`` or ``"none"``.
        size_divisor: input sizes must be multiples of this (multi-scale sizes are rounded to it).
        output_names: ``("lesion",)``.
        channel_names: ``("R", "G", "B")``.
        threshold: probability at or above which a pixel is lesion.
    """

    network: nn.Module = field(repr=False)
    network_name: str
    checkpoint: Path
    image_size: tuple[int, int]
    resize: str
    normalize: str
    size_divisor: int
    output_names: tuple[str, ...] = ("lesion",)
    channel_names: tuple[str, ...] = ("R", "G", "B")
    threshold: float = 0.5

    @property
    def spatial_dims(self) -> int:
        """Always 2."""
        return 2


def load_planar_model(spec: ModelSpec, ckpt: dict[str, Any], checkpoint: Path) -> PlanarModel:
    """Build a :class:`PlanarModel` from a loaded 2D checkpoint and its :class:`~medseg.checkpoint.ModelSpec`.

    The size divisor is the network's own, from the registry (:attr:`ModelSpec.size_divisor`).

    Raises:
        MedsegError: the checkpoint's preprocessing lacks or misstates the image size (or asks
            for more pixels than :func:`~medseg.utils.limits.max_image_pixels`), resize mode or
            normalisation, the network is not a 1-output RGB network, or it is too large
            (:func:`~medseg.checkpoint.check_network_size`).
    """
    prep = spec.preprocessing
    kwargs = spec.network_kwargs
    if prep.get("task") != "binary":
        raise MedsegError(f"{checkpoint}: 2D models must have preprocessing.task 'binary', got {prep.get('task')!r}")
    size = prep.get("image_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise MedsegError(f"{checkpoint}: preprocessing.image_size must be [H, W] positive integers, got {size!r}")
    if size[0] * size[1] > max_image_pixels():  # every image is resized to it, 1.25x with --multiscale
        raise MedsegError(f"{checkpoint}: preprocessing.image_size {list(size)} has {size[0] * size[1]:,} pixels, "
                          f"more than the limit {max_image_pixels():,} (set {MAX_IMAGE_PIXELS_ENV} to change it)")
    if prep.get("resize") not in RESIZE_MODES:
        raise MedsegError(f"{checkpoint}: preprocessing.resize must be one of {RESIZE_MODES}, got {prep.get('resize')!r}")
    if prep.get("normalize") not in NORMALIZATIONS:
        raise MedsegError(f"{checkpoint}: preprocessing.normalize must be one of {NORMALIZATIONS}, "
                          f"got {prep.get('normalize')!r}")
    if kwargs.get("in_channels") != 3 or kwargs.get("out_channels") != 1:
        raise MedsegError(f"{checkpoint}: a 2D lesion model needs in_channels=3 and out_channels=1, got "
                          f"{kwargs.get('in_channels')} and {kwargs.get('out_channels')}")
    return PlanarModel(
        network=build_from_checkpoint(ckpt, source=checkpoint), network_name=spec.network, checkpoint=checkpoint,
        image_size=(int(size[0]), int(size[1])), resize=str(prep["resize"]), normalize=str(prep["normalize"]),
        size_divisor=spec.size_divisor, output_names=spec.output_names or ("lesion",),
        channel_names=spec.channel_names or ("R", "G", "B"),
    )


def scaled_size(size: Sequence[int], scale: float, divisor: int) -> tuple[int, int]:
    """``size`` times ``scale``, each side rounded to the nearest multiple of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(s * scale / divisor)) * divisor) for s in size)  # type: ignore[return-value]


class PlanarPredictor:
    """Predict the lesion probability of an RGB image at its own resolution.

    Args:
        model: the model.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        multiscale: average the scales of :data:`MULTISCALE`.
        tta: also average the 4 mirrorings of the two axes at each scale.
    """

    def __init__(self, model: PlanarModel, device: str = "auto", multiscale: bool = False, tta: bool = False) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.network = model.network.to(self.device).eval()
        self.scales = MULTISCALE if multiscale else (1.0,)
        self.flips: tuple[tuple[int, ...], ...] = (
            tuple(a for n in range(3) for a in itertools.combinations((2, 3), n)) if tta else ((),))
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


def infer_image(path: Path, predictor: PlanarPredictor, paths: PlanarOutputs, save_prob: bool = False,
                keep: Collection[Path] = ()) -> list[Path]:
    """Segment one image file and write its outputs (but those in ``keep``) at its own width and height.

    Returns:
        The files written.
    """
    rgb = read_rgb(path)
    probabilities = predictor.predict(rgb)
    return write_planar_outputs(rgb, probabilities, paths, predictor.model.threshold, save_prob, keep)


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
