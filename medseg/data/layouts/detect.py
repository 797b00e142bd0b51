"""The one folder-layout detector: ``medseg data`` and ``medseg infer`` both ask it what a folder holds.

The layouts are tried in one fixed order: MSD / nnU-Net (``dataset.json`` + ``imagesTr``),
ISIC 2018 Task 1, BraTS 2020/2021 and 2023 case folders, then folders of DICOM files. What
each caller does with a layout is its own business (``data check`` lists a dataset's cases and
refuses mixed BraTS conventions; ``infer`` makes inference cases, and falls back to loose
NIfTI files), but a folder is never read as one layout by one command and another by the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.layouts.brats import find_case_folders
from medseg.data.layouts.decathlon import is_decathlon_root
from medseg.data.layouts.dicom import find_dicom_files
from medseg.data.layouts.isic import find_isic_inputs

__all__ = ["KINDS", "FolderLayout", "detect_layout"]

KINDS = ("msd", "isic", "brats", "dicom", "none")


@dataclass(frozen=True)
class FolderLayout:
    """What :func:`detect_layout` found in a folder.

    Attributes:
        kind: one of :data:`KINDS`; ``"none"`` when no layout matched.
        brats: for ``"brats"``, the case folders of each convention found (``"brats2021"``,
            ``"brats2023"``; both when the folder mixes them).
        isic: for ``"isic"``, the ISIC input image folders.
        dicom: for ``"dicom"``, each folder holding DICOM files with its files.
    """

    kind: str
    brats: dict[str, list[Path]] = field(default_factory=dict)
    isic: list[Path] = field(default_factory=list)
    dicom: dict[Path, list[Path]] = field(default_factory=dict)


def detect_layout(root: str | Path) -> FolderLayout:
    """Which dataset layout the folder ``root`` holds (the first match of :data:`KINDS`' order).

    Args:
        root: an existing folder.

    Returns:
        The layout, with what was found for it.
    """
    root = Path(root)
    if is_decathlon_root(root):
        return FolderLayout("msd")
    isic = find_isic_inputs(root)
    if isic:
        return FolderLayout("isic", isic=isic)
    brats = {layout: folders for layout, folders in find_case_folders(root).items() if folders}
    if brats:
        return FolderLayout("brats", brats=brats)
    dicom = find_dicom_files(root)
    if dicom:
        return FolderLayout("dicom", dicom=dicom)
    return FolderLayout("none")
