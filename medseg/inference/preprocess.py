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

__all__ = ["PreparedCase", "after_loading", "check_resampled_size", "invert_maps", "invert_tensor", "loading_transforms",
           "nifti_channels", "non_finite_error", "prepare_case", "read_case", "resampled_voxels", "restore_geometry"]

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
    voxels = channels * resampled_voxels(shape, affine, pixdim)
    if voxels > max_voxels():
        raise DataError(source, "too many voxels after resampling",
                        f"shape {tuple(shape[:3])} at spacing {tuple(round(float(s), 4) for s in spacing)} mm "
                        f"resampled to the model's {tuple(pixdim)} mm is {voxels:,} voxels, more than the limit "
                        f"{max_voxels():,} (set {MAX_VOXELS_ENV} to change it)")


def resampled_voxels(shape: tuple[int, ...], affine: np.ndarray, pixdim: tuple[float, ...] | None) -> int:
    """Voxels of one channel on the grid the model's resampling makes (no resampling: ``shape``'s).

    Args:
        shape: the input's spatial shape ``(X, Y, Z)``.
        affine: its voxel-to-world matrix.
        pixdim: the spacing the model resamples to, in RAS order (``None``: no resampling).
    """
    if pixdim is None:
        return math.prod(int(s) for s in shape[:3])
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    target = list(pixdim) + [pixdim[-1]] * (3 - len(pixdim))  # MONAI pads a short pixdim with its last value
    world_axis = nib.io_orientation(affine)[:, 0]  # the RAS axis each array axis becomes after Orientation
    voxels = 1
    for size, step, axis in zip(shape[:3], spacing, world_axis):
        voxels *= max(1, math.ceil(size * step / target[int(axis)] - 1e-6))
    return voxels


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


def _nifti_data(case: InferenceCase) -> dict[str, object]:
    """The sample ``LoadImaged`` reads: the file (or the modality files) and the channel permutation."""
    data: dict[str, object] = {IMAGE: [str(p) for p in case.images] if len(case.images) > 1 else str(case.images[0])}
    if case.channel_permutation is not None:
        data[CHANNEL_PERMUTATION] = list(case.channel_permutation)
    return data


def _run_loading(pipeline: Compose, case: InferenceCase) -> dict:
    """``pipeline`` (which starts with ``LoadImaged``) on ``case``'s files; a file that does not decode is named."""
    try:
        return pipeline(_nifti_data(case))
    except Exception as err:  # MONAI wraps reader errors in RuntimeError("applying transform ...")
        for path in case.images:
            read_nifti(path)  # raises a DataError naming the file that does not decode
        raise DataError(case.source, "unreadable", f"{type(err).__name__}: {str(err).splitlines()[0]}") from err


def non_finite_error(case: InferenceCase) -> DataError:
    """The error of a case whose preprocessed image holds NaN or infinite values, naming the file that holds them.

    Normalisation spreads one NaN over its whole channel, so the files are read again (on the
    CPU, in this error case only) to find the one that holds it.
    """
    for path in case.images:
        try:
            _check_finite(read_nifti(path)[0], path)
        except DataError as err:
            return err
    return DataError(case.source, "non-finite values", "NaN or infinite intensities after preprocessing")


def _load_nifti(case: InferenceCase, model: InferenceModel) -> PreparedCase:
    reference = _check_nifti_case(case, model)
    pipeline = infer_transforms(pixdim=model.pixdim, planned=model.planned)
    out = _run_loading(pipeline, case)
    if not bool(torch.isfinite(out[IMAGE]).all()):
        raise non_finite_error(case)
    return PreparedCase(image=out[IMAGE], pipeline=pipeline, reference=reference)


def _check_finite(array: np.ndarray, source: object) -> None:
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(source, "non-finite values", f"{bad} NaN or infinite voxel(s); the mask would be meaningless")


def _read_dicom(case: InferenceCase, model: InferenceModel) -> tuple[MetaTensor, DicomReference]:
    if case.dicom is None:
        raise DataError(case.source, "not a DICOM series")
    image = load_series(case.dicom)
    check_resampled_size(tuple(image.shape[1:]), image.affine.numpy(), 1, model.pixdim, case.source)
    _check_finite(image.numpy(), case.source)
    return image, DicomReference.from_series(image, case.dicom.files)


def _load_dicom(case: InferenceCase, model: InferenceModel) -> PreparedCase:
    image, reference = _read_dicom(case, model)
    pipeline = after_loading(model)
    out = pipeline({IMAGE: image})
    return PreparedCase(image=out[IMAGE], pipeline=pipeline, reference=reference)


def after_loading(model: InferenceModel) -> Compose:
    """``model``'s preprocessing after ``LoadImaged``: for images already read (DICOM series, ensemble bundles).

    DICOM and NIfTI inputs get identical preprocessing this way.
    """
    return Compose([t for t in infer_transforms(pixdim=model.pixdim, planned=model.planned).transforms
                    if not isinstance(t, LoadImaged)])


def loading_transforms(keep_dtype: bool = False) -> Compose:
    """The reading steps of :func:`~medseg.transforms.infer_transforms` alone: channel-first, canonical channel order.

    What comes after them is :func:`after_loading`.

    Args:
        keep_dtype: keep the file's own data type (say int16, half the bytes of float32) rather
            than convert to float32 as :func:`~medseg.transforms.infer_transforms` reads.
    """
    steps = infer_transforms().transforms
    first = next(i for i, t in enumerate(steps) if not isinstance(t, (LoadImaged, CanonicalChannelsd, EnsureTyped)))
    steps = steps[:first]
    if keep_dtype:
        # The builder's reader, the same arguments but ``dtype`` (medseg.transforms.builders).
        steps = [LoadImaged(keys=IMAGE, ensure_channel_first=True, image_only=True, dtype=None)
                 if isinstance(t, LoadImaged) else t for t in steps]
    return Compose(steps)


#: File data types a case is read in as they are (:func:`read_case`); others become float32 as
#: ``infer_transforms`` reads them. Each converts to float32 exactly.
_KEPT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.float16, torch.float32)


def read_case(case: InferenceCase, model: InferenceModel) -> tuple[MetaTensor, Reference]:
    """Read and check a case without preprocessing it: the checks of :func:`prepare_case`, then the reading steps only.

    :func:`after_loading`, applied to the image once it is float32, gives what
    :func:`prepare_case` gives (:mod:`medseg.inference.device_stages` runs it on the GPU).

    Args:
        case: a case from :func:`medseg.inference.inputs.expand_inputs`.
        model: the model, for the channel count and training spacing.

    Returns:
        The image ``(C, X, Y, Z)`` in its file's data type when that is 16 bits or fewer, or
        float32 (NIfTI; a DICOM series is float32), carrying no applied transform, and its geometry.

    Raises:
        DataError, MedsegError: as :func:`prepare_case`, but for non-finite NIfTI intensities,
            found after preprocessing (:func:`non_finite_error`).
    """
    if case.problem:
        raise MedsegError(case.problem)
    if case.kind == "dicom":
        return _read_dicom(case, model)
    reference = _check_nifti_case(case, model)
    image = _run_loading(loading_transforms(keep_dtype=True), case)[IMAGE]
    if image.dtype not in _KEPT_DTYPES:  # float64, scaled or 32-bit integers: as infer_transforms reads them
        image = image.float()
    return image, reference


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
    inverted = invert_tensor(values.detach().to("cpu", torch.float32), image, pipeline, expected, interpolate)
    return np.asarray(inverted.numpy(), dtype=np.float32)


def invert_tensor(values: torch.Tensor, image: MetaTensor, pipeline: Compose, expected: tuple[int, ...],
                  interpolate: bool = True) -> torch.Tensor:
    """:func:`invert_maps` on ``values``' own device (MONAI's inverse transforms run on CUDA tensors too).

    Returns:
        float32 tensor ``(K, X, Y, Z)`` on ``values``' device, without metadata.

    Raises:
        RuntimeError: the inverted shape is not ``expected`` (a bug, never written out).
    """
    pred = MetaTensor(values.detach().float())
    invert = InvertProbabilitiesd if interpolate else Invertd
    inverted = invert(keys=_PRED, transform=pipeline, orig_keys=IMAGE, nearest_interp=not interpolate,
                      to_tensor=True)({IMAGE: image, _PRED: pred})[_PRED]
    tensor = inverted.as_tensor() if isinstance(inverted, MetaTensor) else torch.as_tensor(inverted)
    if tuple(tensor.shape[1:]) != tuple(expected):
        raise RuntimeError(f"inverted prediction has shape {tuple(tensor.shape[1:])}, the input {tuple(expected)}")
    return tensor.detach().float()

