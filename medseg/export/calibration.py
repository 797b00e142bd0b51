"""Calibration images for INT8 quantization: the user's own scans, preprocessed as inference does.

Static INT8 quantization sets each activation's range from calibration inputs; ranges set on
random noise (the old default) do not match what a network sees on real images. Here every input
goes through the same preprocessing as ``medseg infer`` (3D: orientation, spacing, intensity
normalisation of :func:`medseg.inference.preprocess.prepare_case`; 2D: the resize and
normalisation of :class:`medseg.inference.planar.PlanarPredictor`), then a centred patch of the
export's input shape is cut (3D, padded with zeros where the volume is smaller).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)


def _centre_patch(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centred ``size`` patch of ``image`` ``(C, *S)``, zero-padded where ``S`` is smaller."""
    out = torch.zeros((image.shape[0], *size), dtype=torch.float32)
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(image.shape[1:], size):
        take = min(have, want)
        start_src, start_dst = (have - take) // 2, (want - take) // 2
        src.append(slice(start_src, start_src + take))
        dst.append(slice(start_dst, start_dst + take))
    out[tuple(dst)] = image[tuple(src)].float()
    return out


def calibration_batches(bundle: str | os.PathLike[str] | None, inputs: Sequence[str | os.PathLike[str]],
                        input_shape: Sequence[int], checkpoint: str | os.PathLike[str] | None = None,
                        limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` preprocessed inputs ``(1, C, *S)`` (float32) from the user's images.

    Args:
        bundle: the bundle whose model is exported (its checkpoint gives the preprocessing).
        inputs: files or folders of the kinds ``medseg infer`` reads (NIfTI, BraTS, MSD, DICOM;
            2D: images or folders of them).
        input_shape: the export's example input ``(1, C, *S)``; 3D patches of ``S`` are cut.
        checkpoint: the weights, when not ``BUNDLE/models/model.pt``.
        limit: the most cases used.

    Raises:
        MedsegError: no usable image among ``inputs`` (each unusable one is named in the log).
    """
    from medseg.inference.model import load_inference_model
    from medseg.inference.planar import PlanarModel

    model = load_inference_model(bundle, checkpoint=checkpoint)
    planar = isinstance(model, PlanarModel)
    batches = _planar(model, inputs, limit) if planar else _volumes(model, inputs, input_shape, limit)
    if not batches:
        raise MedsegError(f"--calibration-data {', '.join(map(str, inputs))}: no image usable for calibration")
    channels = int(input_shape[1])
    for batch in batches:
        if batch.shape[1] != channels:
            raise MedsegError(f"--calibration-data: images have {batch.shape[1]} channels, the network takes {channels}")
    return batches


def _volumes(model, inputs, input_shape, limit) -> list[np.ndarray]:  # noqa: ANN001 - an InferenceModel
    from medseg.inference.inputs import expand_inputs
    from medseg.inference.preprocess import prepare_case

    def one(case) -> np.ndarray:  # noqa: ANN001
        prepared = prepare_case(case, model)
        image = prepared.image.as_tensor() if hasattr(prepared.image, "as_tensor") else prepared.image
        return _centre_patch(image, input_shape[2:])[None].numpy()

    return _collect(expand_inputs(inputs, model), one, limit)


def _collect(cases, prepare, limit: int) -> list[np.ndarray]:  # noqa: ANN001
    """``prepare(case)`` for up to ``limit`` cases, skipping (and naming in the log) those that fail."""
    batches = []
    for case in cases:
        if len(batches) == limit:
            break
        try:
            if case.problem:
                raise MedsegError(case.problem)
            batches.append(prepare(case))
        except MedsegError as err:
            logger.warning("calibration: %s skipped: %s", case.source, err)
    return batches


def _planar(model, inputs, limit) -> list[np.ndarray]:  # noqa: ANN001 - a PlanarModel
    from medseg.data.readers import read_image_2d
    from medseg.inference.inputs import expand_image_inputs
    from medseg.inference.planar import PlanarPredictor
    from medseg.transforms.planar import fit_geometry, to_network_size

    predictor = PlanarPredictor(model, device="cpu")

    def one(case) -> np.ndarray:  # noqa: ANN001
        rgb = read_image_2d(Path(case.images[0]))
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float() / 255.0
        x = to_network_size(image, fit_geometry(rgb.shape[:2], model.image_size, model.resize), "bilinear")
        if predictor.norm is not None:
            x = torch.as_tensor(predictor.norm(x))
        return x[None].float().numpy()

    return _collect(expand_image_inputs(inputs), one, limit)
