"""Read DICOM series for inference with SimpleITK, after checking them with their headers.

Each folder holding DICOM files is one case. Its headers (read without pixel data) are
checked first with :func:`medseg.data.layouts.dicom.series_problems`, so that a folder
mixing several series, or a series with a missing slice, fails with a message saying so
rather than being stitched into a wrong volume. The pixels are then read with
SimpleITK's ``ImageSeriesReader`` (GDCM), which sorts the slices along the slice normal.

Patient identifiers (name, ID, birth date) are collected only so that they can be kept
out of case ids, file names, logs and error messages (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from medseg.data.layouts.dicom import find_dicom_files, series_problems
from medseg.errors import DataError

__all__ = ["DicomSeries", "patient_identifiers", "read_series", "redact", "scan_dicom_folder", "sitk_to_metatensor"]

_MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
_IDENTIFYING_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "IssuerOfPatientID")
# LPS (DICOM, ITK) <-> RAS (NIfTI, MONAI): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomSeries:
    """One folder of DICOM files, checked from its headers.

    Attributes:
        folder: the folder.
        files: the image files in it (DICOMDIR index files excluded).
        series_uid: the ``SeriesInstanceUID`` (``""`` when the folder holds several).
        modality: e.g. ``"CT"``.
        problems: why the folder cannot be read as one volume (empty when it can).
        identifiers: patient identifiers found in the headers, for :func:`redact` only.
    """

    folder: Path
    files: list[Path]
    series_uid: str = ""
    modality: str = ""
    problems: list[str] = field(default_factory=list)
    identifiers: frozenset[str] = field(default_factory=frozenset, repr=False)


def patient_identifiers(headers: Iterable) -> frozenset[str]:
    """The identifying strings of ``headers`` (and the parts of person names), 3 characters or longer."""
    found: set[str] = set()
    for header in headers:
        for tag in _IDENTIFYING_TAGS:
            value = header.get(tag)
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
            for item in values:
                text = str(item).strip()
                found.add(text)
                found.update(part.strip() for part in re.split(r"[\^=\s]+", text))
    return frozenset(t for t in found if len(t) >= 3)


def redact(text: str, identifiers: Iterable[str]) -> str:
    """Replace every patient identifier in ``text`` with ``<redacted>`` (longest first, case-insensitive)."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        text = re.sub(re.escape(ident), "<redacted>", text, flags=re.IGNORECASE)
    return text


def scan_dicom_folder(root: Path) -> list[DicomSeries]:
    """Find every folder under ``root`` holding DICOM files and check each from its headers.

    Args:
        root: a series folder, or a folder of series folders.

    Returns:
        One :class:`DicomSeries` per folder with DICOM image files, sorted by path.
    """
    import pydicom

    series = []
    for folder, files in find_dicom_files(root).items():
        headers, kept, problems = [], [], []
        for path in files:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as err:  # pydicom raises many types for corrupt headers
                problems.append(f"{path.name}: unreadable DICOM header ({type(err).__name__})")
                continue
            sop_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if sop_class != _MEDIA_DIRECTORY_SOP_CLASS:
                headers.append(header)
                kept.append(path)
        if not headers and not problems:
            continue
        uids = sorted({str(h.get("SeriesInstanceUID", "")) for h in headers})
        item = DicomSeries(folder=folder, files=kept, series_uid=uids[0] if len(uids) == 1 else "",
                           modality=str(headers[0].get("Modality", "")) if headers else "",
                           identifiers=patient_identifiers(headers))
        checks = series_problems("", folder, headers) if headers else []
        item.problems = problems + [f"{p.rule}: {p.detail}" for p in checks]
        if len(uids) == 1:
            item.problems += orientation_problems(headers)
        if not headers:
            item.problems.append("no readable DICOM image in the folder")
        series.append(item)
    return series


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """Keep ITK's own warnings (printed straight to stderr) out of the output; errors are raised as DataError."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def orientation_problems(headers: list) -> list[str]:
    """Slices whose ImageOrientationPatient differs from the first one's (ITK would stack them anyway)."""
    orientations = [h.get("ImageOrientationPatient") for h in headers]
    if any(o is None for o in orientations) or not orientations:
        return []
    first = np.asarray(orientations[0], dtype=float)
    if any(np.abs(np.asarray(o, dtype=float) - first).max() > 1e-4 for o in orientations[1:]):
        return ["inconsistent orientation: the slices' ImageOrientationPatient differ; give each stack its own folder"]
    return []


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
