"""BraTS 2020/2021 and BraTS 2023 case folders.

2020/2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` (2020 uses
``BraTS20_Training_001_...`` with the same suffixes). 2023:
``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1c,t1n,t2f,t2w,seg}.nii.gz``.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import BRATS2021, BRATS2023, BRATS_CHANNELS
from medseg.data.readers import NIFTI_SUFFIXES

# Layout -> (separator before the suffix, canonical channel -> source suffix).
SCHEMES: dict[str, tuple[str, dict[str, str]]] = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
}
_PATTERN = re.compile(r"^(?P<case>.+?)(?P<sep>[_-])(?P<suffix>t1|t1ce|t2|flair|t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$",
                      re.IGNORECASE)


def scheme_of_file(name: str) -> str | None:
    """Return ``"brats2021"`` or ``"brats2023"`` if ``name`` is a BraTS modality file."""
    match = _PATTERN.match(name)
    if not match or name.startswith("."):
        return None
    sep, suffix = match["sep"], match["suffix"].lower()
    for layout, (scheme_sep, names) in SCHEMES.items():
        if sep == scheme_sep and (suffix in names.values() or suffix == "seg"):
            # "t1"/"t2"/"seg" exist in both schemes only with different separators.
            return layout
    return None


def find_case_folders(root: Path, max_depth: int = 2) -> dict[str, list[Path]]:
    """Find folders holding BraTS-named files, grouped by naming scheme, up to ``max_depth`` deep."""
    found: dict[str, list[Path]] = {"brats2021": [], "brats2023": []}
    frontier = [root]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in frontier:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                continue
            schemes = {scheme_of_file(e.name) for e in entries if e.is_file()} - {None}
            for scheme in schemes:
                found[scheme].append(folder)
            next_frontier.extend(e for e in entries if e.is_dir() and not e.name.startswith("."))
        frontier = next_frontier
    return found


def _find_file(folder: Path, case_id: str, sep: str, suffix: str) -> Path | None:
    for ext in NIFTI_SUFFIXES:
        for candidate in (folder / f"{case_id}{sep}{suffix}{ext}", folder / f"{case_id}{sep}{suffix.upper()}{ext}"):
            if candidate.is_file():
                return candidate
    return None


def discover_brats(root: Path, layout: str, folders: list[Path]) -> DiscoveredDataset:
    """Build the dataset for BraTS case folders of one naming scheme.

    A case whose modality is missing is still listed (so that ``data check`` reports it),
    with a :class:`Problem` per missing file; a case without ``seg`` is unlabelled.
    """
    sep, names = SCHEMES[layout]
    dataset = DiscoveredDataset(
        root=root, layout=layout, convention=BRATS2021 if layout == "brats2021" else BRATS2023,
        channel_names=BRATS_CHANNELS, spatial_dims=3,
    )
    for folder in sorted(folders):
        case_ids = sorted({m["case"] for f in folder.iterdir() if (m := _PATTERN.match(f.name)) and m["sep"] == sep
                           and not f.name.startswith(".")})
        for case_id in case_ids:
            images, missing = [], []
            for channel in BRATS_CHANNELS:
                path = _find_file(folder, case_id, sep, names[channel])
                expected = folder / f"{case_id}{sep}{names[channel]}.nii.gz"
                images.append(path or expected)
                if path is None:
                    missing.append(expected)
            label = _find_file(folder, case_id, sep, "seg")
            case = Case(case_id=case_id, images=images, label=label)
            if missing:
                case.extra["missing"] = [str(p) for p in missing]
                for path in missing:
                    dataset.problems.append(Problem(case_id, str(path), "missing modality",
                                                    f"{path.name} not found in {folder}"))
            dataset.cases.append(case)
    return dataset
