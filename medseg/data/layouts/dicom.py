"""Folders of DICOM series: the one header scan that ``infer``, ``data check`` and ``data list`` share.

Series are found by reading only the headers (pydicom, ``stop_before_pixels``), one
series per folder. :func:`scan_dicom_folder` checks each folder from its headers and
names it with :func:`medseg.privacy.dicom_case_id`, so every command names a series
alike and a folder named after the patient never gives its name to a case id. Patient
identifiers are read only to keep them out: problems handed to ``data check`` and
``data list`` have them replaced by ``<redacted>``.

The scan also puts each series' files in slice order (:func:`slice_order`), the order the
reader stacks them in (:func:`medseg.inference.dicom_io.load_series`). The geometry rules exist
because ITK's ``ImageSeriesReader``, which reads the series there (through MONAI's
``ITKReader``), stacks the slices on a straight, evenly spaced grid whatever their positions
say (:func:`series_problems`):

* ``gantry tilt``: the slices step along a direction other than the normal of their plane
  (``ImageOrientationPatient``), as a tilted CT gantry makes them. ITK stacks them along the
  normal, so slice k lands k x the lateral step beside its true place (at 20°, a third of
  its distance from the first slice). medseg does not resample: the series is refused, with
  the angle, when any slice lies more than :data:`TILT_TOLERANCE` of the smallest pixel
  spacing beside a straight stack.
* ``uneven spacing``: ITK's grid uses the mean step from the first to the last slice; a slice
  more than :data:`SPACING_TOLERANCE` of that step away from its grid position would be
  written in the wrong place, so the series is refused (within it, the positions are the
  grid, to round-off). A gap of 1.5 times the smallest or more is a ``missing slice``.
* ``no image series``: every file is of a SOP class that holds no image slices (a
  structured report, an RT dose grid or plan, a segmentation); the message names the class.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import LabelConvention
from medseg.privacy import PatientIdentifiers, dicom_case_id, patient_identifiers, redact

__all__ = ["SPACING_TOLERANCE", "TILT_TOLERANCE", "DicomSeries", "discover_dicom", "find_dicom_files",
           "is_dicom_file", "is_image_sop_class", "orientation_problems", "scan_dicom_folder", "series_problems",
           "slice_order"]

_DICOM_CONVENTION = LabelConvention(name="unlabelled", labels={0: "background"})
#: A slice may lie this fraction of the smallest pixel spacing beside a straight stack (gantry tilt).
TILT_TOLERANCE = 0.05
#: A slice may lie this fraction of the mean slice step away from an evenly spaced grid.
SPACING_TOLERANCE = 0.05
# DICOMDIR index files carry the DICM preamble too, but hold no image.
_MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class DicomSeries:
    """One folder of DICOM files, checked from its headers.

    Attributes:
        folder: the folder.
        files: the image files in it whose headers read (DICOMDIR index files excluded); in
            slice order (:func:`slice_order`) when the folder has no findings, else by name.
        case_id: its name in every command (:func:`medseg.privacy.dicom_case_id`).
        series_uid: the ``SeriesInstanceUID`` (``""`` when the folder holds several).
        series_uids: every ``SeriesInstanceUID`` in the folder.
        modality: e.g. ``"CT"``.
        findings: what keeps the folder from being read as one volume (empty when nothing
            does), with the raw paths; redact them before showing them.
        identifiers: patient identifiers found in the headers, to redact messages only.
    """

    folder: Path
    files: list[Path]
    case_id: str = ""
    series_uid: str = ""
    series_uids: tuple[str, ...] = ()
    modality: str = ""
    findings: list[Problem] = field(default_factory=list)
    identifiers: frozenset[str] = field(default_factory=PatientIdentifiers, repr=False)

    @property
    def problems(self) -> list[str]:
        """The findings as text: ``"rule: detail"``, or ``"FILE: rule (detail)"`` for one file."""
        texts = []
        for p in self.findings:
            if Path(p.path) != self.folder:
                texts.append(f"{Path(p.path).name}: {p.rule} ({p.detail})")
            else:
                texts.append(f"{p.rule}: {p.detail}" if p.detail else p.rule)
        return texts


def is_dicom_file(path: Path) -> bool:
    """``pydicom.misc.is_dicom`` (the ``DICM`` preamble at byte 128), False for a file that cannot be opened.

    pydicom's raises ``OSError`` for such a file (no permission, a broken link); here one such
    file must not stop the scan of its folder.
    """
    from pydicom.misc import is_dicom

    try:
        return is_dicom(path)
    except OSError:
        return False


def find_dicom_files(root: Path) -> dict[Path, list[Path]]:
    """Map each folder under ``root`` to the DICOM files directly inside it."""
    groups: dict[Path, list[Path]] = defaultdict(list)
    for folder, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = Path(folder) / name
            if name != "DICOMDIR" and not name.startswith(".") and is_dicom_file(path):
                groups[Path(folder)].append(path)
    return dict(sorted(groups.items()))


def _sop_class(header: object) -> str:
    uid = header.get("SOPClassUID") if hasattr(header, "get") else None  # type: ignore[union-attr]
    if not uid:
        uid = getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "")
    return str(uid or "")


def is_image_sop_class(uid: str) -> bool:
    """Whether files of SOP class ``uid`` hold image slices (``CT Image Storage``, ``MR Image Storage`` ...).

    A class pydicom does not know (private, or none given) counts as an image: the series
    rules and the reader decide then.
    """
    from pydicom.uid import UID

    known = UID(uid) if uid else None
    if known is None or known.type != "SOP Class":
        return True
    return "Image Storage" in known.name


def _sop_class_names(headers: list) -> str:
    from pydicom.uid import UID

    counts: dict[str, int] = defaultdict(int)
    for header in headers:
        counts[_sop_class(header)] += 1
    return ", ".join(f"{n} file(s) of {UID(uid).name} ({uid})" for uid, n in sorted(counts.items()))


def _tilt_problem(case_id: str, folder: Path, headers: list, positions: np.ndarray, normal: np.ndarray,
                  depth: np.ndarray) -> Problem | None:
    span = float(depth[-1] - depth[0])
    if span <= 0:
        return None
    relative = positions - positions[0]
    lateral = relative - np.outer(relative @ normal, normal)  # each slice's offset from a straight stack
    offsets = np.linalg.norm(lateral, axis=1)
    spacing = headers[0].get("PixelSpacing")
    pixel = float(min(float(v) for v in spacing)) if spacing else 1.0
    if float(offsets.max()) <= TILT_TOLERANCE * pixel:
        return None
    angle = float(np.degrees(np.arctan2(offsets[-1], span)))
    tag = headers[0].get("GantryDetectorTilt")
    stated = f", GantryDetectorTilt {float(tag):g}°" if tag not in (None, "") and float(tag) != 0 else ""
    return Problem(case_id, str(folder), "gantry tilt",
                   f"the slices are stacked {angle:.1f}° off the normal of their plane (ImageOrientationPatient"
                   f"{stated}); the last lies {float(offsets[-1]):.2f} mm beside a straight stack, more than "
                   f"{TILT_TOLERANCE:g} of a pixel ({TILT_TOLERANCE * pixel:.3g} mm); medseg does not resample "
                   "tilted series and would write the mask off by that much: resample the series onto an "
                   "orthogonal grid first")


def _spacing_problem(case_id: str, folder: Path, depth: np.ndarray) -> Problem | None:
    gaps = np.diff(depth)
    if float(gaps.min()) <= 1e-3:  # positions equal to the precision DICOM writes them
        return Problem(case_id, str(folder), "duplicate slices", "slices share the same position")
    step = float(gaps.min())  # a missing slice leaves a gap of twice (or more) the step
    if float(gaps.max()) >= 1.5 * step:
        return Problem(case_id, str(folder), "missing slice",
                       f"slice gap {float(gaps.max()):.2f} mm where the spacing is {step:.2f} mm")
    mean = float(depth[-1] - depth[0]) / (len(depth) - 1)
    off = np.abs(depth - (depth[0] + mean * np.arange(len(depth))))
    worst = int(np.argmax(off))
    if float(off[worst]) > SPACING_TOLERANCE * mean:
        return Problem(case_id, str(folder), "uneven spacing",
                       f"slice gaps range from {float(gaps.min()):.3g} to {float(gaps.max()):.3g} mm: slice {worst} "
                       f"lies {float(off[worst]):.3g} mm from its place on an even grid of {mean:.4g} mm, more than "
                       f"{SPACING_TOLERANCE:g} of a slice; medseg does not resample uneven series and would write "
                       "the mask off by that much: resample the series onto an even grid first")
    return None


def _stack(headers: list) -> tuple[np.ndarray, np.ndarray] | None:
    """The unit normal of the first slice's plane and every slice's position, when all are known (2+ slices)."""
    positions = [h.get("ImagePositionPatient") for h in headers]
    orientation = headers[0].get("ImageOrientationPatient")
    if len(headers) < 2 or orientation is None or any(p is None for p in positions):
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    normal /= np.linalg.norm(normal) or 1.0
    return normal, np.asarray(positions, float)


def slice_order(headers: list) -> list[int]:
    """The order the slices of one series are stacked in: indices into ``headers``, first slice first.

    By position along the normal of ``ImageOrientationPatient`` (increasing) when every slice
    has a position: the order the geometry checks of :func:`series_problems` sort them in, and
    the one ITK's series reader needs, as it points the third axis along that normal and takes
    the origin from the first file and the step from the first and last. Else by
    ``InstanceNumber`` when every slice has a distinct one, else as given (by file name): GDCM,
    which ordered the series before, falls back alike.
    """
    stack = _stack(headers)
    if stack is not None:
        normal, points = stack
        return [int(i) for i in np.argsort(points @ normal, kind="stable")]
    try:
        numbers = [int(h.get("InstanceNumber")) for h in headers]
    except (TypeError, ValueError):  # missing or malformed in some slice
        return list(range(len(headers)))
    if len(set(numbers)) < len(numbers):
        return list(range(len(headers)))
    return sorted(range(len(headers)), key=numbers.__getitem__)


def _header_int(header: object, keyword: str, default: int) -> int | None:
    """A header's whole-number value (``default`` when absent), or ``None`` when it is not a positive whole number."""
    value = getattr(header, "get", lambda *_: None)(keyword)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == float(value) else None


def _size_problem(case_id: str, folder: Path, headers: list) -> Problem | None:
    """``too many voxels``: the headers claim more voxels than the limit, or sizes that are not sizes.

    The bound of :func:`medseg.utils.limits.max_voxels` that NIfTI headers get, checked before
    any pixel data is read: rows x columns x frames x samples per pixel, summed over the files.
    """
    from medseg.utils.limits import MAX_VOXELS_ENV, max_voxels

    total = 0
    for header in headers:
        values = [_header_int(header, k, d) for k, d in (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1),
                                                          ("SamplesPerPixel", 1))]
        if any(v is None for v in values):
            return Problem(case_id, str(folder), "bad image size",
                           "Rows, Columns, NumberOfFrames or SamplesPerPixel is not a positive whole number")
        rows, columns, frames, samples = values
        total += rows * columns * frames * samples
    if total > max_voxels():
        first = headers[0]
        return Problem(case_id, str(folder), "too many voxels",
                       f"the headers claim {len(headers)} file(s) of {first.get('Rows')}x{first.get('Columns')} "
                       f"pixels, {total:,} voxels in all, more than the limit {max_voxels():,} (set "
                       f"{MAX_VOXELS_ENV} to change it); no pixel data was read")
    return None


def series_problems(case_id: str, folder: Path, headers: list) -> list[Problem]:
    """Check that one folder holds one complete series of equal-size image slices on a straight, even grid.

    Rules (see the module's docstring): ``mixed series``, ``no image series``,
    ``inconsistent slices``, ``too many voxels`` and ``bad image size`` (the size the headers
    claim, bounded before any pixel is read), ``duplicate slices``, ``missing slice``,
    ``uneven spacing``, ``gantry tilt``.
    """
    problems = []
    uids = sorted({str(h.get("SeriesInstanceUID", "")) for h in headers})
    if len(uids) > 1:
        problems.append(Problem(case_id, str(folder), "mixed series",
                                f"{len(uids)} series (SeriesInstanceUID) in one folder; give each its own folder"))
        return problems
    if not any(is_image_sop_class(_sop_class(h)) for h in headers):
        problems.append(Problem(case_id, str(folder), "no image series",
                                f"the folder holds {_sop_class_names(headers)}, no image slices to segment"))
        return problems
    sizes = {(h.get("Rows"), h.get("Columns")) for h in headers}
    if len(sizes) > 1:
        problems.append(Problem(case_id, str(folder), "inconsistent slices", f"slice sizes differ: {sorted(sizes)}"))
    size = _size_problem(case_id, folder, headers)
    if size is not None:
        return [*problems, size]  # nothing more is read of a series this large
    stack = _stack(headers)
    if stack is not None:
        normal, points = stack
        order = slice_order(headers)
        points = points[order]
        depth = points @ normal
        if len(headers) > 2:
            spacing = _spacing_problem(case_id, folder, depth)
            if spacing is not None:
                problems.append(spacing)
        tilt = _tilt_problem(case_id, folder, [headers[i] for i in order], points, normal, depth)
        if tilt is not None:
            problems.append(tilt)
    return problems


def orientation_problems(case_id: str, folder: Path, headers: list) -> list[Problem]:
    """Slices whose ImageOrientationPatient differs from the first one's (ITK would stack them anyway)."""
    orientations = [h.get("ImageOrientationPatient") for h in headers]
    if not orientations or any(o is None for o in orientations):
        return []
    first = np.asarray(orientations[0], dtype=float)
    if any(np.abs(np.asarray(o, dtype=float) - first).max() > 1e-4 for o in orientations[1:]):
        return [Problem(case_id, str(folder), "inconsistent orientation",
                        "the slices' ImageOrientationPatient differ; give each stack its own folder")]
    return []


def scan_dicom_folder(root: Path, groups: dict[Path, list[Path]] | None = None) -> list[DicomSeries]:
    """Find every folder under ``root`` holding DICOM files and check each from its headers.

    Args:
        root: a series folder, or a folder of series folders, as the user gave it (case ids
            are paths below it).
        groups: :func:`find_dicom_files` of ``root``, when already known.

    Returns:
        One :class:`DicomSeries` per folder with DICOM files, sorted by path; a folder whose
        files all fail to read is one too, with the failures as its findings.
    """
    import pydicom

    root = Path(root)
    series = []
    for folder, files in (find_dicom_files(root) if groups is None else groups).items():
        headers, kept, unreadable = [], [], []
        for path in files:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as err:  # noqa: BLE001 - pydicom raises many types for corrupt headers
                unreadable.append((path, type(err).__name__))
                continue
            sop_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if sop_class != _MEDIA_DIRECTORY_SOP_CLASS:
                headers.append(header)
                kept.append(path)
        if not headers and not unreadable:
            continue
        uids = tuple(sorted({str(h.get("SeriesInstanceUID", "")) for h in headers}))
        identifiers = patient_identifiers(headers)
        uid = uids[0] if len(uids) == 1 else ""
        case_id = dicom_case_id(folder, root, uid, identifiers)
        item = DicomSeries(folder=folder, files=kept, case_id=case_id, series_uid=uid, series_uids=uids,
                           modality=str(headers[0].get("Modality", "")) if headers else "",
                           identifiers=identifiers)
        item.findings = [Problem(case_id, str(path), "unreadable DICOM header", name) for path, name in unreadable]
        if headers:
            item.findings += series_problems(case_id, folder, headers)
            if len(uids) == 1:
                item.findings += orientation_problems(case_id, folder, headers)
        else:
            item.findings.append(Problem(case_id, str(folder), "no readable DICOM image in the folder"))
        if not item.findings:
            item.files = [kept[i] for i in slice_order(headers)]
        series.append(item)
    return series


def discover_dicom(root: Path, groups: dict[Path, list[Path]]) -> DiscoveredDataset:
    """One unlabelled case per DICOM folder; structural problems are recorded, not raised.

    Case ids are the ones ``medseg infer`` gives the same input; every problem's path and
    detail has the series' patient identifiers replaced by ``<redacted>``. Each case's
    ``extra`` holds ``SeriesInstanceUID`` (hashed when a datalist is written), ``modality``,
    ``num_files`` and ``identifiers`` (for redaction only; never written).
    """
    dataset = DiscoveredDataset(root=root, layout="dicom", convention=_DICOM_CONVENTION, channel_names=("image",),
                                spatial_dims=3)
    for series in scan_dicom_folder(root, groups):
        ids = series.identifiers
        dataset.problems.extend(Problem(p.case_id, redact(p.path, ids), p.rule, redact(p.detail, ids))
                                for p in series.findings)
        if not series.files:
            continue
        uids = list(series.series_uids)
        dataset.cases.append(Case(case_id=series.case_id, images=[series.folder], label=None,
                                  extra={"SeriesInstanceUID": uids[0] if len(uids) == 1 else uids,
                                         "modality": series.modality, "num_files": len(series.files),
                                         "identifiers": ids}))
    return dataset
