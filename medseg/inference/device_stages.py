"""A 3D case's preprocessing, its mapping back to the input grid and its labels, on the network's device.

On a GPU host the CPU work around the network bounds ``medseg infer`` (issue #18: 3.2x the
I/O floor on an H200 with 16 cores): the reorientation, resampling and z-scoring of
:func:`~medseg.inference.preprocess.prepare_case`, then the inverse mapping of every
probability channel and the label conversion, all in float32 on the CPU. With
``InferenceOptions.device_stages`` (on by default when the network runs on CUDA) the stages
of :class:`~medseg.inference.volume_task.VolumeRun` split the work differently:

* the reading threads only read and check (:func:`load_case`): the header checks of
  :func:`~medseg.inference.preprocess.prepare_case`, then MONAI's reading steps, keeping the
  file's data type (int16 is half the bytes of float32), into pinned memory for CUDA;
* the main thread, which owns the device, copies the image there without blocking and runs
  the very same MONAI transforms on the device tensor (:func:`preprocess_on_device`:
  ``Orientationd`` is flips and permutes, ``Spacingd`` a grid sampling, ``NormalizeIntensityd``
  reductions), the network, then MONAI's ``Invertd`` and the label conversion there too
  (:func:`restore_on_device`); only the label map (uint8 for every BraTS convention) comes
  back, with the float32 maps only when they are written (``save_prob``);
* the writing thread post-processes and writes, as before.

MONAI's transforms are kept rather than rewritten as torch code, so the recorded operations,
their inverses and the plan's steps stay one implementation: on the CPU device the results
are identical to :func:`~medseg.inference.preprocess.prepare_case` and
:func:`~medseg.inference.preprocess.restore_geometry` (tests/inference/test_device_stages.py);
on CUDA the resampling's interpolation rounds differently.

A volume whose preprocessed grid exceeds the predictor's ``cpu_threshold`` is preprocessed on
the CPU in the reading thread (:func:`load_case` returns a
:class:`~medseg.inference.preprocess.PreparedCase` for it), as the predictor keeps such
volumes on the CPU so that GPU memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor

from medseg.data.conventions import LabelConvention
from medseg.inference.geometry import Reference
from medseg.inference.inputs import InferenceCase
from medseg.inference.model import InferenceModel
from medseg.inference.postprocess import tensor_to_labels
from medseg.inference.preprocess import (
    PreparedCase,
    after_loading,
    invert_tensor,
    non_finite_error,
    read_case,
    resampled_voxels,
)
from medseg.transforms import IMAGE

__all__ = ["DeviceResult", "LoadedCase", "load_case", "preprocess_on_device", "restore_on_device"]


@dataclass
class LoadedCase:
    """A case read and checked, not yet preprocessed (:func:`load_case`).

    Attributes:
        image: ``(C, X, Y, Z)`` in the file's data type (or float32), pinned for a CUDA target.
        reference: the geometry outputs are written in.
        voxels: voxels of one channel on the preprocessed grid (before a plan's crop).
    """

    image: MetaTensor
    reference: Reference
    voxels: int


@dataclass
class DeviceResult:
    """A case's outputs on its input grid, back on the host (:func:`restore_on_device`).

    Attributes:
        labels: ``(X, Y, Z)`` label map in the case's convention, before post-processing.
        maps: ``(K, X, Y, Z)`` float32 probabilities then the uncertainty map, with ``save_prob``; else ``None``.
        reference: the geometry outputs are written in.
    """

    labels: np.ndarray
    maps: np.ndarray | None
    reference: Reference


def load_case(case: InferenceCase, model: InferenceModel, device: torch.device,
              cpu_threshold: int) -> LoadedCase | PreparedCase:
    """Read and check a case for :func:`preprocess_on_device` (the reading thread's share).

    Args:
        case: a NIfTI or DICOM case.
        model: the model, for the checks and the training spacing.
        device: where :func:`preprocess_on_device` will run; for CUDA the image is put in
            pinned memory, so that its copy does not block.
        cpu_threshold: a case whose preprocessed grid has more voxels is preprocessed here, on
            the CPU, as :func:`~medseg.inference.preprocess.prepare_case` does.

    Returns:
        The case as read, or, above ``cpu_threshold``, preprocessed.

    Raises:
        DataError, MedsegError: as :func:`~medseg.inference.preprocess.prepare_case`.
    """
    image, reference = read_case(case, model)
    voxels = resampled_voxels(tuple(image.shape[1:]), image.affine.numpy(), model.pixdim)
    loaded = LoadedCase(image=image, reference=reference, voxels=voxels)
    if voxels > cpu_threshold:
        # The image already read, preprocessed here on the CPU: what prepare_case gives, without a second read.
        return preprocess_on_device(case, loaded, model, torch.device("cpu"))
    if device.type == "cuda":
        loaded.image = MetaTensor(image.as_tensor().pin_memory(), meta=image.meta,
                                  applied_operations=image.applied_operations)
    return loaded


def preprocess_on_device(case: InferenceCase, loaded: LoadedCase, model: InferenceModel,
                         device: torch.device) -> PreparedCase:
    """Copy a read case to ``device`` and preprocess it there with the model's own MONAI transforms.

    Args:
        case: the case (to name the file holding NaN or infinite values).
        loaded: from :func:`load_case`.
        model: the model, for its preprocessing (:func:`~medseg.inference.preprocess.after_loading`).
        device: the network's device.

    Returns:
        The preprocessed image ``(C, X', Y', Z')`` on ``device``, float32, carrying its transforms.

    Raises:
        DataError: NaN or infinite values after preprocessing, naming the file that holds them.
    """
    # float32 first: MONAI's steps would cast anyway (Spacingd, NormalizeIntensityd), and an
    # explicit cast keeps Orientationd's output, and so every later step, exactly the CPU path's.
    data = loaded.image.as_tensor().to(device, non_blocking=True).float()
    pipeline = after_loading(model)
    image = pipeline({IMAGE: MetaTensor(data, meta=loaded.image.meta,
                                        applied_operations=loaded.image.applied_operations)})[IMAGE]
    if not bool(torch.isfinite(image).all()):
        raise non_finite_error(case)
    return PreparedCase(image=image, pipeline=pipeline, reference=loaded.reference)


def _nearest_resampling(model: InferenceModel) -> bool:
    """Whether the model's plan resamples an axis by nearest neighbour (``separate_axis`` with order 0).

    Undone on CUDA, that step rounds ties between two voxels unlike the CPU: with a plan at
    0.7/0.7/1.2 mm, 4% of the restored map voxels differed (up to 0.97) and 0.9% of the labels
    of a smooth volume. Such a plan's maps are therefore mapped back on the CPU.
    """
    resampling = (model.planned or {}).get("resampling") or {}
    return resampling.get("separate_axis") is not None and int(resampling.get("separate_axis_order", 0)) == 0


def restore_on_device(prepared: PreparedCase, maps: torch.Tensor, model: InferenceModel, save_prob: bool,
                      convention: LabelConvention | None = None) -> DeviceResult:
    """Map a case's maps back to its input grid and turn them into labels, on their device.

    Args:
        prepared: from :func:`preprocess_on_device`.
        maps: ``(K, X', Y', Z')`` on the preprocessed grid: the probabilities, then the
            uncertainty map with ``save_prob``; on the device.
        model: the model, for its label values and convention.
        save_prob: also bring the restored maps back, as they are written.
        convention: the label convention the mask is written in; ``None``: the model's.

    Returns:
        The label map and (with ``save_prob``) the maps, on the host. A plan that resamples an
        axis by nearest neighbour is undone on the CPU (:func:`_nearest_resampling`).

    Raises:
        RuntimeError: the inverted shape differs from the input's (a bug, never written out).
    """
    if maps.device.type == "cuda" and _nearest_resampling(model):
        maps = maps.cpu()
    restored = invert_tensor(maps, prepared.image, prepared.pipeline, tuple(prepared.reference.shape))
    labels = tensor_to_labels(restored[: model.out_channels], model, convention=convention)
    kept = restored.cpu().numpy() if save_prob else None
    return DeviceResult(labels=labels, maps=kept, reference=prepared.reference)
