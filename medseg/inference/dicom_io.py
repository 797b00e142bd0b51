"""Read DICOM series for inference with SimpleITK, after checking them with their headers.

Each folder holding DICOM files is one case. Its headers (read without pixel data) are
checked first by :func:`medseg.data.layouts.dicom.scan_dicom_folder`, the scan that
``medseg data check`` and ``data list`` use too, so that a folder mixing several series,
or a series with a missing slice, fails with a message saying so rather than being
stitched into a wrong volume. The pixels are then read with SimpleITK's
``ImageSeriesReader`` (GDCM), which sorts the slices along the slice normal and stacks them
on a straight grid with the mean step: a gantry-tilted series, or one whose slices lie off an
even grid, is refused by the header checks first (``gantry tilt``, ``uneven spacing``), as
the outputs would be written off by the difference.

Patient identifiers (:data:`medseg.privacy.PHI_DICOM_KEYWORDS`) are collected only so that
they can be kept out of case ids, file names, logs and error messages (:func:`redact`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medseg.data.layouts.dicom import DicomSeries, scan_dicom_folder
from medseg.errors import DataError
from medseg.privacy import patient_identifiers, redact

__all__ = ["DicomSeries", "patient_identifiers", "read_series", "redact", "scan_dicom_folder", "sitk_to_metatensor"]

# LPS (DICOM, ITK) <-> RAS (NIfTI, MONAI): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Keep ITK's own warnings (printed straight to stderr) out of the output; errors are raised as DataError."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_series(series: DicomSeries) -> tuple[sitk.Image, list[Path]]:
    """Read a checked series with SimpleITK's ``ImageSeriesReader``.

    Returns:
        The 3D image and its files in slice order (file ``k`` is slice ``k`` of the image).

    Raises:
        DataError: the series has problems, or GDCM does not see exactly one series of
            all the files (e.g. slices of different orientation).
    """
    if series.problems:
        raise DataError(series.folder, "unusable DICOM series", "; ".join(series.problems))
    reader = sitk.ImageSeriesReader()
    with _quiet_itk():
        ids = reader.GetGDCMSeriesIDs(str(series.folder))
        files = [Path(f) for f in reader.GetGDCMSeriesFileNames(str(series.folder), ids[0])] if len(ids) == 1 else []
    if not ids:
        raise DataError(series.folder, "unreadable DICOM series", "GDCM finds no image series in the folder")
    if len(ids) > 1:
        raise DataError(series.folder, "mixed series", f"GDCM splits the folder into {len(ids)} series; "
                                                       "give each series its own folder")
    if len(files) != len(series.files):
        raise DataError(series.folder, "mixed series", f"GDCM groups {len(files)} of the {len(series.files)} "
                                                       "DICOM files into the series")
    reader.SetFileNames([str(f) for f in files])
    try:
        # Quiet: the headers were checked (medseg.data.layouts.dicom), so ITK's "non uniform
        # sampling" warning can only concern round-off within SPACING_TOLERANCE.
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as err:
        raise DataError(series.folder, "unreadable DICOM series", str(err).strip().splitlines()[-1]) from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(series.folder, "unsupported DICOM series",
                        f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components per pixel")
    return image, files


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-to-RAS matrix of an ITK image (index order x, y, z)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def sitk_to_metatensor(image: sitk.Image, source: str) -> MetaTensor:
    """Turn an ITK image into a channel-first MetaTensor ``(1, X, Y, Z)`` with its RAS affine.

    The metadata matches what MONAI's ``LoadImaged`` gives for a NIfTI file, so the same
    MONAI transforms (and their inverses) apply.
    """
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (z, y, x) -> (x, y, z)
    affine = torch.as_tensor(ras_affine(image), dtype=torch.float64)
    meta = {"affine": affine, "original_affine": affine.clone(), "spatial_shape": np.asarray(array.shape),
            "original_channel_dim": "no_channel", "filename_or_obj": source, "space": "RAS"}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], meta=meta)
