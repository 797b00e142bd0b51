"""Load a case, apply the training-time preprocessing, and map predictions back to the input grid.

NIfTI cases go through :func:`medseg.transforms.infer_transforms` unchanged (the same
MONAI steps as training's validation: load channel-first, canonical channel order,
orientation to RAS, optional resampling to the training spacing, non-zero channel-wise
z-scoring). DICOM series are read by MONAI's ``LoadImage`` with its ITK reader
(:mod:`medseg.inference.dicom_io`) and then go through the same steps after ``LoadImaged``.

Every spatial step is inverted with MONAI's ``Invertd``, which replays the recorded
transforms backwards: the orientation change is a permutation and flip of axes, so its
inverse is exact; a resampling to the training spacing is inverted by resampling to the
original grid. The result is checked against the input's original shape before anything
is written.

Sizes are bounded before memory is taken: each NIfTI header is checked against the limits
of :mod:`medseg.utils.limits` (:func:`~medseg.data.readers.read_nifti_header`), and so is
the grid a resampling to the checkpoint's spacing would make (a checkpoint asking for
0.01 mm would turn a 240x240x155 brain at 1 mm into 9e12 voxels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Invertd, LoadImaged

from medseg.data.layouts.brats import duplicate_files
from medseg.data.readers import read_nifti, read_nifti_header
from medseg.errors import DataError, MedsegError
from medseg.inference.dicom_io import load_series
from medseg.inference.geometry import DicomReference, NiftiReference, Reference
from medseg.inference.inputs import InferenceCase
from medseg.inference.model import InferenceModel
from medseg.transforms import IMAGE, infer_transforms
from medseg.transforms.keys import CHANNEL_PERMUTATION
from medseg.transforms.labels import CanonicalChannelsd
from medseg.transforms.planned import InvertProbabilitiesd
from medseg.utils.limits import MAX_VOXELS_ENV, max_voxels

__all__ = ["PreparedCase", "after_loading", "check_resampled_size", "invert_maps", "loading_transforms", "nifti_channels",
           "prepare_case", "restore_geometry"]

_PRED = "medseg_pred"
_AFFINE_TOL = 1e-3  # mm; the tolerance of ``medseg data check``


@dataclass
class PreparedCase:
    """A case ready for the network.

    Attributes:
        image: preprocessed image ``(C, X', Y', Z')`` carrying its applied transforms.
        pipeline: the transforms applied (inverted by :func:`restore_geometry`).
        reference: the geometry outputs are written in.
    """

    image: MetaTensor
    pipeline: Compose
    reference: Reference


def nifti_channels(shape: tuple[int, ...]) -> int:
    """Channels of a NIfTI array shape: 3D is 1; ``(X, Y, Z, C)`` (MSD's 4D files) is C."""
    if len(shape) <= 3:
        return 1
    if len(shape) == 4:
        return shape[3]
    raise DataError("", "bad shape", f"{shape}")


def check_resampled_size(shape: tuple[int, ...], affine: np.ndarray, channels: int,
                         pixdim: tuple[float, ...] | None, source: object) -> None:
    """Refuse an input whose grid at the model's spacing would hold more voxels than the limit.

    Args:
        shape: the input's spatial shape ``(X, Y, Z)``.
        affine: its voxel-to-world matrix (which axis runs along which world axis).
        channels: its number of channels.
        pixdim: the spacing the model resamples to, in RAS order (``None``: no resampling).
        source: the file, for the message.

    Raises:
        DataError: more than :func:`~medseg.utils.limits.max_voxels` voxels after resampling.
    """
    if pixdim is None:
        return
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    target = list(pixdim) + [pixdim[-1]] * (3 - len(pixdim))  # MONAI pads a short pixdim with its last value
    world_axis = nib.io_orientation(affine)[:, 0]  # the RAS axis each array axis becomes after Orientation
    voxels = channels
    for size, step, axis in zip(shape[:3], spacing, world_axis):
        voxels *= max(1, math.ceil(size * step / target[int(axis)] - 1e-6))
    if voxels > max_voxels():
        raise DataError(source, "too many voxels after resampling",
                        f"shape {tuple(shape[:3])} at spacing {tuple(round(float(s), 4) for s in spacing)} mm "
                        f"resampled to the model's {tuple(pixdim)} mm is {voxels:,} voxels, more than the limit "
                        f"{max_voxels():,} (set {MAX_VOXELS_ENV} to change it)")


def _check_nifti_case(case: InferenceCase, model: InferenceModel) -> NiftiReference:
    """Check every channel file's header: one file per modality, readable, 3D, one geometry, the right channels."""
    if len(case.images) > 1:
        for path in case.images:
            others = duplicate_files(path)
            if others:
                raise DataError(path, "duplicate modality", f"{', '.join(p.name for p in [Path(path), *others])} "
                                                            "are the same modality of one case; keep one and "
                                                            "remove the others")
    headers = [read_nifti_header(path) for path in case.images]
    first = headers[0]
    for header in headers:
        if len(header.shape) < 3 or len(header.shape) > 4:
            raise DataError(header.path, "not 3D", f"{len(header.shape)} dimensions, shape {header.shape}; "
                                                   "expected a 3D volume (or 3D + channels)")
        channels = nifti_channels(header.shape)
        if len(case.images) > 1 and (channels != 1 or len(header.shape) != 3):
            raise DataError(header.path, "channel count", f"shape {header.shape}: each modality file must be 3D")
        if header.spatial_shape != first.spatial_shape or not np.allclose(header.affine, first.affine,
                                                                           atol=_AFFINE_TOL):
            raise DataError(header.path, "geometry mismatch", f"shape {header.spatial_shape} and affine differ from "
                                                              f"{first.path.name} {first.spatial_shape}")
    total = len(case.images) if len(case.images) > 1 else nifti_channels(first.shape)
    if total != model.in_channels:
        raise DataError(first.path, "channel count", f"shape {first.shape} gives {total} channel(s); the model "
                                                     f"expects {model.in_channels} {list(model.channel_names)}")
    if case.channel_permutation is not None and len(case.channel_permutation) != total:
        raise DataError(first.path, "channel count", f"channel permutation {case.channel_permutation} for "
                                                     f"{total} channels")
    check_resampled_size(first.spatial_shape, first.affine, total, model.pixdim, first.path)
    return NiftiReference.from_file(first.path)


def _load_nifti(case: InferenceCase, model: InferenceModel) -> PreparedCase:
    reference = _check_nifti_case(case, model)
    pipeline = infer_transforms(pixdim=model.pixdim, planned=model.planned)
    data: dict[str, object] = {IMAGE: [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])}
    if case.channel_permutation is not None:
        data[CHANNEL_PERMUTATION] = list(case.channel_permutation)
    try:
        out = pipeline(data)
    except Exception as err:  # MONAI wraps reader errors in RuntimeError("applying transform ...")
        for path in case.images:
            read_nifti(path)  # raises a DataError naming the file that does not decode
        raise DataError(case.source, "unreadable", f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
    if not bool(torch.isfinite(out[IMAGE]).all()):
        # Normalisation spreads one NaN over its whole channel; name the file that holds it.
        for path in case.images:
            _check_finite(read_nifti(path)[0], path)
        raise DataError(case.source, "non-finite values", "NaN or infinite intensities after preprocessing")
    return PreparedCase(image=out[IMAGE], pipeline=pipeline, reference=reference)


def _check_finite(array: np.ndarray, source: object) -> None:
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(source, "non-finite values", f"{bad} NaN or infinite voxel(s); the mask would be meaningless")


def _load_dicom(case: InferenceCase, model: InferenceModel) -> PreparedCase:
    if case.dicom is None:
        raise DataError(case.source, "not a DICOM series")
    image = load_series(case.dicom)
    check_resampled_size(tuple(image.shape[1:]), image.affine.numpy(), 1, model.pixdim, case.source)
    _check_finite(image.numpy(), case.source)
    reference = DicomReference.from_series(image, case.dicom.files)
    pipeline = after_loading(model)
    out = pipeline({IMAGE: image})
    return PreparedCase(image=out[IMAGE], pipeline=pipeline, reference=reference)


def after_loading(model: InferenceModel) -> Compose:
    """``model``'s preprocessing after ``LoadImaged``: for images already read (DICOM series, ensemble bundles).

    DICOM and NIfTI inputs get identical preprocessing this way.
    """
    return Compose([t for t in infer_transforms(pixdim=model.pixdim, planned=model.planned).transforms
                    if not isinstance(t, LoadImaged)])


def loading_transforms() -> Compose:
    """The reading steps of :func:`~medseg.transforms.infer_transforms` alone: channel-first, canonical channel order.

    What comes after them is :func:`after_loading`.
    """
    steps = infer_transforms().transforms
    first = next(i for i, t in enumerate(steps) if not isinstance(t, (LoadImaged, CanonicalChannelsd, EnsureTyped)))
    return Compose(steps[:first])


def prepare_case(case: InferenceCase, model: InferenceModel) -> PreparedCase:
    """Read and preprocess one case.

    Args:
        case: a case from :func:`medseg.inference.inputs.expand_inputs` without a problem.
        model: the model, for the channel count and training spacing.

    Returns:
        The preprocessed image ``(C, X', Y', Z')`` with what is needed to invert it.

    Raises:
        DataError: naming the file, when a file is unreadable, truncated, of another
            geometry than its sibling modalities, or has the wrong number of channels.
        MedsegError: the case's input problem found while listing inputs.
    """
    if case.problem:
        raise MedsegError(case.problem)  # already names the file and the rule
    if case.kind == "dicom":
        return _load_dicom(case, model)
    return _load_nifti(case, model)


def restore_geometry(values: torch.Tensor, prepared: PreparedCase, interpolate: bool = True) -> np.ndarray:
    """Map maps computed on the preprocessed grid back onto the input's original grid.

    Args:
        values: ``(K, X', Y', Z')`` maps on the preprocessed grid (probabilities, uncertainty).
        prepared: the case they were computed for.
        interpolate: interpolate when inverting a resampling: the transforms' own linear
            interpolation, and linear where they used a spline (a plan's order 3), which would
            overshoot [0, 1]; ``False``: nearest neighbour. Orientation changes are exact either way.

    Returns:
        float32 array ``(K, X, Y, Z)`` on the original grid.

    Raises:
        RuntimeError: the inverted shape differs from the input's (a bug, never written out).
    """
    return invert_maps(values, prepared.image, prepared.pipeline, tuple(prepared.reference.shape), interpolate)


def invert_maps(values: torch.Tensor, image: MetaTensor, pipeline: Compose, expected: tuple[int, ...],
                interpolate: bool = True) -> np.ndarray:
    """Undo ``pipeline``'s spatial steps, recorded on ``image``, on ``values`` (see :func:`restore_geometry`).

    Args:
        values: ``(K, X', Y', Z')`` maps on the grid of ``image``.
        image: the image ``pipeline`` made, carrying its applied transforms.
        pipeline: the transforms to undo (steps applied before it stay recorded, and stay).
        expected: the spatial shape the inverse must have.
        interpolate: as for :func:`restore_geometry`.

    Raises:
        RuntimeError: the inverted shape is not ``expected`` (a bug, never written out).
    """
    pred = MetaTensor(values.detach().to("cpu", torch.float32))
    invert = InvertProbabilitiesd if interpolate else Invertd
    inverted = invert(keys=_PRED, transform=pipeline, orig_keys=IMAGE, nearest_interp=not interpolate,
                      to_tensor=True)({IMAGE: image, _PRED: pred})[_PRED]
    array = np.asarray(inverted.detach().cpu().numpy(), dtype=np.float32)
    if array.shape[1:] != tuple(expected):
        raise RuntimeError(f"inverted prediction has shape {array.shape[1:]}, the input {tuple(expected)}")
    return array

