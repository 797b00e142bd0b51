"""Read checked DICOM series for inference through MONAI's ``LoadImage`` and ``ITKReader``.

Each folder holding DICOM files is one case. Its headers (read without pixel data) are
checked first by :func:`medseg.data.layouts.dicom.scan_dicom_folder`, the scan that
``medseg data check`` and ``data list`` use too, so that a folder mixing several series,
or a series with a missing slice, fails with a message saying so rather than being
stitched into a wrong volume. The scan also lists the series' files in slice order
(:func:`medseg.data.layouts.dicom.slice_order`). Exactly those files, in that order, are then
read by MONAI's ``LoadImage`` with its ``ITKReader``, so a series gets the array layout, RAS
affine and metadata of any image MONAI loads. ITK's ``ImageSeriesReader`` stacks the slices on
a straight grid with the mean step: a gantry-tilted series, or one whose slices lie off an even
grid, is refused by the header checks first (``gantry tilt``, ``uneven spacing``), as the
outputs would be written off by the difference.

Why ``ITKReader`` is subclassed (:class:`CheckedSeriesReader`): given a folder, it asks GDCM for
the folder's series and reads every file of the first one GDCM finds, by GDCM's own grouping
and with only a warning when there are several, so what it reads need not be the checked
files; given a list of files, it reads each alone and stacks them as channels. Only ``read``
differs here: it hands the checked files to ``itk.imread`` as one list, which ITK reads with
``ImageSeriesReader`` in the order given. The array, affine and metadata come from
ITKReader's own ``get_data``, with the LPS origin and direction ITK read added beside its
``spacing``, so that the outputs are written in the series' geometry exactly (:func:`lps_geometry`).

ITK's compiled modules load on the first DICOM read (``import itk``, which MONAI does, is lazy;
loading them takes about 2 s on two CPU cores), so commands that read no DICOM never pay for them.

Patient identifiers (:data:`medseg.privacy.PHI_DICOM_KEYWORDS`) are collected only so that
they can be kept out of case ids, file names, logs and error messages (:func:`redact`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data import ITKReader, MetaTensor
from monai.transforms import LoadImage
from monai.utils import ensure_tuple

from medseg.data.layouts.dicom import DicomSeries, scan_dicom_folder
from medseg.errors import DataError
from medseg.privacy import patient_identifiers, redact

__all__ = ["CheckedSeriesReader", "DicomSeries", "load_series", "lps_geometry", "patient_identifiers", "ras_affine",
           "redact", "scan_dicom_folder"]

# LPS (DICOM, ITK) <-> RAS (NIfTI, MONAI): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# ITK's exception text: "<source file>:<line>:", "ITK ERROR: <Class>(0x...): <what>", then hints.
_ITK_SOURCE_LINE = re.compile(r"^\S+\.(?:h|hxx|cxx|cpp|txx):\d+:$")
_ITK_ERROR_PREFIX = re.compile(r"^(?:ITK ERROR|itk::ERROR): \w+\(0x[0-9a-fA-F]+\): ")
_NO_IMAGE_IO = "Could not create IO object for reading file "


class CheckedSeriesReader(ITKReader):
    """MONAI's ``ITKReader``, reading a sequence of files as one DICOM series, slice ``k`` from file ``k``.

    Args:
        kwargs: ``ITKReader``'s arguments (``affine_lps_to_ras`` is left at ``True``: RAS, as
            MONAI's NIfTI reader gives).
    """

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> Any:
        """Read the files of ``data`` (in this order) as one series with ITK's ``ImageSeriesReader``."""
        import itk

        # ITK's warnings (e.g. "Non uniform sampling" within SPACING_TOLERANCE) concern what the
        # header checks judged already. medseg uses ITK for this read alone, and reads run in
        # several threads at once, so they are turned off for the process, not toggled per read.
        itk.Object.GlobalWarningDisplayOff()
        return itk.imread([str(f) for f in ensure_tuple(data)], **{**self.kwargs, **kwargs})

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """ITKReader's array and metadata, plus ITK's LPS ``origin`` and ``direction`` (3x3)."""
        import itk

        array, meta = super().get_data(img)
        meta["origin"] = np.asarray(img.GetOrigin(), dtype=np.float64)
        meta["direction"] = np.asarray(itk.array_from_matrix(img.GetDirection()), dtype=np.float64)
        return array, meta


@functools.cache
def _loader() -> LoadImage:
    # LoadImage also builds MONAI's default readers; the pydicom one logs that the optional
    # nvImageCodec GPU decoder is missing, noise here (as medseg.transforms.builders says too).
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)


def load_series(series: DicomSeries) -> MetaTensor:
    """Read a checked series with MONAI's ``LoadImage`` and :class:`CheckedSeriesReader`.

    Args:
        series: a series from :func:`scan_dicom_folder`; its ``files`` are read in their order.

    Returns:
        float32 ``(1, X, Y, Z)``: X runs along a row (the column index), Y down a column, and
        slice ``k`` is ``series.files[k]``. Its meta holds the RAS ``affine`` and, as ITK read
        them, the ``spacing``, ``origin`` and ``direction`` (LPS); ``filename_or_obj`` is the
        folder, as ``LoadImage`` names a series it reads from a folder.

    Raises:
        DataError: the series has problems, ITK cannot read its files (e.g. a file without
            pixel data), or they are not one volume of one value per voxel (e.g. RGB).
    """
    if series.problems:
        raise DataError(series.folder, "unusable DICOM series", "; ".join(series.problems))
    try:
        # Given at call time, this reader is the only one tried: otherwise LoadImage picks one of
        # its default readers by file suffix (DICOM files often have none) or, built with a
        # reader, tries the others (pydicom, nibabel ...) on the same files when it fails.
        image = _loader()([str(f) for f in series.files], reader=CheckedSeriesReader())
    except Exception as err:  # ITK raises RuntimeError; whatever reading raises is about these files
        raise DataError(series.folder, "unreadable DICOM series", _itk_message(err)) from err
    spatial = len(image.meta["spatial_shape"])
    if spatial != 3 or image.shape[0] != 1:
        raise DataError(series.folder, "unsupported DICOM series",
                        f"{spatial}D with {image.shape[0]} components per pixel")
    image.meta["filename_or_obj"] = str(series.folder)
    return image


def _itk_message(err: Exception) -> str:
    """The line of an ITK exception that says what went wrong (not where in ITK's source, nor its hints)."""
    for raw in str(err).splitlines():
        line = _ITK_ERROR_PREFIX.sub("", raw.strip())
        if not line or _ITK_SOURCE_LINE.match(line):
            continue
        if line.startswith(_NO_IMAGE_IO):
            return f"ITK reads no image from {line[len(_NO_IMAGE_IO):]}: a file without pixel data, truncated or corrupt"
        return line
    return type(err).__name__


def lps_geometry(image: MetaTensor) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """The ITK (LPS) ``origin``, ``spacing`` and row-major ``direction`` :func:`load_series` read."""
    meta = image.meta
    return (tuple(float(v) for v in meta["origin"]), tuple(float(v) for v in meta["spacing"]),
            tuple(float(v) for v in np.asarray(meta["direction"]).ravel()))


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The 4x4 voxel-to-RAS matrix of a SimpleITK image (index order x, y, z), as ITKReader builds it."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps
