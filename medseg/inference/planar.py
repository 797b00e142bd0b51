"""2D (dermoscopy) models: the network and the preprocessing it was trained with.

A 2D checkpoint loads into a :class:`PlanarModel` (the 3D peer is
:class:`~medseg.inference.model.InferenceModel`). Its prediction lives in
:mod:`~medseg.inference.planar_predictor`, its PNG outputs in
:mod:`~medseg.inference.planar_writer`, and its run through the batch loop in
:mod:`~medseg.inference.image_task`; their public names are re-exported here, where
callers and the 2D bundles' configs (``medseg.inference.planar.SavePlanard``) find them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from medseg.checkpoint import ModelSpec, build_from_checkpoint
from medseg.errors import MedsegError
from medseg.inference.planar_predictor import MULTISCALE, PlanarPredictor, scaled_size
from medseg.inference.planar_writer import (
    PlanarOutputs,
    SavePlanard,
    overlay_image,
    planar_output_paths,
    write_planar_outputs,
)
from medseg.transforms.planar import NORMALIZATIONS, RESIZE_MODES
from medseg.utils.limits import MAX_IMAGE_PIXELS_ENV, max_image_pixels

__all__ = ["MULTISCALE", "PlanarModel", "PlanarOutputs", "PlanarPredictor", "SavePlanard", "load_planar_model",
           "overlay_image", "planar_output_paths", "scaled_size", "write_planar_outputs"]


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
        tta_axes: image axes (0 rows, 1 columns) mirrored by default, without ``--tta``
            (the checkpoint's ``InferenceSettings.tta_axes``).
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
    tta_axes: tuple[int, ...] = ()

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
        tta_axes=tuple(spec.inference.tta_axes) if spec.inference is not None else (),
    )
