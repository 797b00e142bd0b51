"""BraTS 2020/2021 and BraTS 2023 case folders.

2020/2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` (2020 uses
``BraTS20_Training_001_...`` with the same suffixes). 2023:
``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1c,t1n,t2f,t2w,seg}.nii.gz``.

The BraTS 2024+ data keep the 2023 naming and add the resection cavity (label 4), so the
naming alone says ``brats2023``; the label values decide between 2023 and 2024+
(:func:`brats_convention_for_values`, called by ``medseg data check``, training and
``medseg evaluate`` once they have read the labels), and ``--labels`` chooses outright.

Each modality (and the label) must be exactly one file: a folder holding both
``_t1.nii.gz`` and ``_t1.nii``, or ``_t1.nii.gz`` and ``_T1.nii.gz``, has two candidates, and
picking one silently could train on the stale copy. Discovery reports such a case
(``duplicate modality`` / ``duplicate label``, naming both files) and inference refuses it
(:func:`duplicate_files`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import BRATS2021, BRATS2023, BRATS2024, BRATS_CHANNELS, LabelConvention

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


def _index(folder: Path) -> dict[tuple[str, str, str], list[Path]]:
    """The BraTS files of ``folder`` by ``(case, separator, suffix)``: either NIfTI extension, any letter case.

    Each list has ``.nii.gz`` before ``.nii`` (the file discovery always took first).
    """
    index: dict[tuple[str, str, str], list[Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return index
    for entry in entries:
        match = _PATTERN.match(entry.name)
        if match and not entry.name.startswith(".") and entry.is_file():
            index.setdefault((match["case"], match["sep"], match["suffix"].lower()), []).append(entry)
    for files in index.values():
        files.sort(key=lambda p: (not p.name.lower().endswith(".nii.gz"), p.name))
    return index


def duplicate_files(path: str | Path) -> list[Path]:
    """The other files in the folder of BraTS file ``path`` that are the same case's same modality.

    Returns:
        ``[]`` when ``path`` is the only one (or not a BraTS modality or label file).
    """
    path = Path(path)
    match = _PATTERN.match(path.name)
    if not match or scheme_of_file(path.name) is None:
        return []
    found = _index(path.parent).get((match["case"], match["sep"], match["suffix"].lower()), [])
    return [p for p in found if p.name != path.name]


def naming_convention(layout: str) -> LabelConvention:
    """The label convention a naming scheme implies before any label is read (2023 naming: ``brats2023``)."""
    return BRATS2021 if layout == "brats2021" else BRATS2023


def brats_convention_for_values(convention: LabelConvention, values: Iterable[int]) -> LabelConvention:
    """Refine the convention the 2023 naming implies with the label values found in the dataset.

    BraTS 2024+ glioma data are named like BraTS 2023 but add the resection cavity (4):
    a ``brats2023`` dataset whose labels hold a 4 *and* a 3 (ET), and nothing outside 0..4,
    is ``brats2024``. Without any 3 the values are just as well BraTS 2021 labels (ET = 4)
    under the 2023 naming, so nothing is guessed: the 4s are then reported against
    ``brats2023`` with both readings suggested. Any other convention is returned unchanged.

    Args:
        convention: the convention from the naming (:func:`naming_convention`).
        values: every label value found in the dataset's label maps.
    """
    found = {int(v) for v in values}
    if convention is BRATS2023 and {3, 4} <= found <= BRATS2024.valid_values:
        return BRATS2024
    return convention


def discover_brats(root: Path, layout: str, folders: list[Path],
                   convention: LabelConvention | None = None) -> DiscoveredDataset:
    """Build the dataset for BraTS case folders of one naming scheme.

    A case whose modality is missing is still listed (so that ``data check`` reports it),
    with a :class:`Problem` per missing file; a case without ``seg`` is unlabelled.

    Args:
        root: the dataset folder.
        layout: ``brats2021`` or ``brats2023`` (the naming scheme).
        folders: the case folders found.
        convention: the label convention chosen by the user (``--labels``); default: the
            naming's (:func:`naming_convention`).
    """
    sep, names = SCHEMES[layout]
    dataset = DiscoveredDataset(
        root=root, layout=layout, convention=convention or naming_convention(layout),
        channel_names=BRATS_CHANNELS, spatial_dims=3,
    )
    for folder in sorted(folders):
        case_ids = sorted({m["case"] for f in folder.iterdir() if (m := _PATTERN.match(f.name)) and m["sep"] == sep
                           and not f.name.startswith(".")})
        index = _index(folder)
        for case_id in case_ids:
            images, missing = [], []
            found = {suffix: index.get((case_id, sep, suffix), []) for suffix in (*names.values(), "seg")}
            for channel in BRATS_CHANNELS:
                files = found[names[channel]]
                expected = folder / f"{case_id}{sep}{names[channel]}.nii.gz"
                images.append(files[0] if files else expected)
                if not files:
                    missing.append(expected)
            label = found["seg"][0] if found["seg"] else None
            case = Case(case_id=case_id, images=images, label=label)
            for suffix, files in found.items():
                if len(files) < 2:
                    continue
                what = "label" if suffix == "seg" else "modality"
                dataset.problems.append(Problem(
                    case_id, str(files[0]), f"duplicate {what}",
                    f"{len(files)} files are {case_id}'s {suffix}: {', '.join(f.name for f in files)}; "
                    "keep one and remove the others"))
            if missing:
                case.extra["missing"] = [str(p) for p in missing]
                for path in missing:
                    dataset.problems.append(Problem(case_id, str(path), "missing modality",
                                                    f"{path.name} not found in {folder}"))
            dataset.cases.append(case)
    return dataset
