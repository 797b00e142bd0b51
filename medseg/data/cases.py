"""The in-memory description of a discovered dataset: cases, their files, and problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.conventions import LabelConvention


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file.

    Attributes:
        case_id: the case the file belongs to ("" for dataset-level problems).
        path: the offending file or folder.
        rule: a short name of the rule broken, e.g. ``"missing modality"``.
        detail: what exactly was found.
    """

    case_id: str
    path: str
    rule: str
    detail: str = ""


@dataclass
class Case:
    """One case: its image files, its label file if any, and layout-specific details.

    Attributes:
        case_id: a stable identifier (folder or file stem).
        images: image files in canonical channel order (BraTS: one per modality; MSD and
            generic 4D: one file holding all channels; ISIC: one JPEG; DICOM: the series folder).
        label: the label file, or ``None`` for an unlabelled case.
        extra: layout details, e.g. the channel permutation of a 4D file or a DICOM series UID.
    """

    case_id: str
    images: list[Path]
    label: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def has_label(self) -> bool:
        """Whether the case has a label file."""
        return self.label is not None


@dataclass
class DiscoveredDataset:
    """A dataset found on disk.

    Attributes:
        root: the folder the user pointed at.
        layout: ``brats2021``, ``brats2023``, ``msd``, ``generic``, ``isic`` or ``dicom``.
        convention: how labels are encoded and mapped to training targets.
        channel_names: the canonical channel names of each case's image.
        spatial_dims: 2 or 3.
        cases: the cases, sorted by id.
        problems: structural problems found while discovering (missing files, unpaired labels).
    """

    root: Path
    layout: str
    convention: LabelConvention
    channel_names: tuple[str, ...]
    spatial_dims: int
    cases: list[Case] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
