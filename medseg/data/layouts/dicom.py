"""Folders of DICOM series, for inference.

Series are found by reading only the headers (pydicom, ``stop_before_pixels``) and
grouped by folder and ``SeriesInstanceUID``. Patient identifiers are never copied into
the result: a case id comes from the folder path, not from DICOM tags.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import LabelConvention

_DICOM_CONVENTION = LabelConvention(name="unlabelled", labels={0: "background"})
# DICOMDIR index files carry the DICM preamble too, but hold no image.
_MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


def is_dicom_file(path: Path) -> bool:
    """True if the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
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


def series_problems(case_id: str, folder: Path, headers: list) -> list[Problem]:
    """Check that one folder holds one complete, evenly spaced series of equal-size slices."""
    problems = []
    uids = sorted({str(h.get("SeriesInstanceUID", "")) for h in headers})
    if len(uids) > 1:
        problems.append(Problem(case_id, str(folder), "mixed series",
                                f"{len(uids)} series (SeriesInstanceUID) in one folder; give each its own folder"))
        return problems
    sizes = {(h.get("Rows"), h.get("Columns")) for h in headers}
    if len(sizes) > 1:
        problems.append(Problem(case_id, str(folder), "inconsistent slices", f"slice sizes differ: {sorted(sizes)}"))
    positions = [h.get("ImagePositionPatient") for h in headers]
    orientation = headers[0].get("ImageOrientationPatient")
    if len(headers) > 2 and orientation is not None and all(p is not None for p in positions):
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        depth = np.sort(np.asarray(positions, float) @ normal)
        gaps = np.diff(depth)
        step = float(np.median(gaps))
        if step <= 0:
            problems.append(Problem(case_id, str(folder), "duplicate slices", "slices share the same position"))
        elif np.any(np.abs(gaps - step) > 0.1 * step + 1e-3):
            worst = float(gaps.max())
            problems.append(Problem(case_id, str(folder), "missing slice",
                                    f"slice gap {worst:.2f} mm where the spacing is {step:.2f} mm"))
    return problems


def discover_dicom(root: Path, groups: dict[Path, list[Path]]) -> DiscoveredDataset:
    """One unlabelled case per DICOM folder; structural problems are recorded, not raised."""
    import pydicom

    dataset = DiscoveredDataset(root=root, layout="dicom", convention=_DICOM_CONVENTION, channel_names=("image",),
                                spatial_dims=3)
    for folder, files in groups.items():
        rel = folder.relative_to(root).as_posix() if folder != root else root.name
        case_id = rel.replace("/", "_") or "series"
        headers = []
        for path in files:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as err:  # pydicom raises many types for corrupt headers
                dataset.problems.append(Problem(case_id, str(path), "unreadable", f"DICOM header: {err}"))
                continue
            sop_class = str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if sop_class != _MEDIA_DIRECTORY_SOP_CLASS:
                headers.append(header)
        if not headers:
            continue
        uids = sorted({str(h.get("SeriesInstanceUID", "")) for h in headers})
        dataset.cases.append(Case(case_id=case_id, images=[folder], label=None,
                                  extra={"series_uid": uids[0] if len(uids) == 1 else uids,
                                         "modality": str(headers[0].get("Modality", "")),
                                         "num_files": len(headers)}))
        dataset.problems.extend(series_problems(case_id, folder, headers))
    return dataset
