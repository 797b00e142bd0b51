"""Find out which dataset layout a folder holds and list its cases.

Supported layouts, tried in this order by :func:`medseg.data.layouts.detect.detect_layout`
(which ``medseg infer`` asks too): MSD / nnU-Net (``dataset.json`` + ``imagesTr``), ISIC 2018
Task 1, BraTS 2020/2021 and 2023 case folders, and folders of DICOM series.

A DICOM dataset's cases are named as ``medseg infer`` names them, and everything it shows
(problems, :func:`shown_root`) has the patient identifiers of its headers redacted.

BraTS case folders take their label convention from their naming (2021: ``brats2021``,
2023: ``brats2023``) unless ``labels`` chooses one of :data:`BRATS_LABEL_CONVENTIONS`;
telling BraTS 2024+ labels (the resection cavity, 4) from 2023 ones needs the label values,
which discovery does not read: :func:`medseg.data.checks.check_dataset` refines it.
"""

from __future__ import annotations

from pathlib import Path

from medseg.data.cases import DiscoveredDataset
from medseg.data.conventions import BRATS_LABEL_CONVENTIONS, LabelConvention, get_convention
from medseg.data.layouts.brats import discover_brats
from medseg.data.layouts.decathlon import discover_decathlon
from medseg.data.layouts.detect import detect_layout
from medseg.data.layouts.dicom import discover_dicom
from medseg.data.layouts.isic import discover_isic
from medseg.errors import DataError, InvalidValueError
from medseg.privacy import PatientIdentifiers, redact

LAYOUTS: tuple[str, ...] = ("brats2021", "brats2023", "msd", "generic", "isic", "dicom")


def chosen_labels(labels: str | None) -> LabelConvention | None:
    """The BraTS label convention that ``--labels`` names, or ``None`` when none is named.

    Raises:
        InvalidValueError: a name that is not one of :data:`BRATS_LABEL_CONVENTIONS`.
    """
    if labels is None:
        return None
    if labels not in BRATS_LABEL_CONVENTIONS:
        raise InvalidValueError(f"--labels {labels}: not a BraTS label convention; valid: "
                                f"{list(BRATS_LABEL_CONVENTIONS)}")
    return get_convention(labels)


def discover(root: str | Path, labels: str | None = None) -> DiscoveredDataset:
    """Detect the layout of ``root`` and list its cases.

    Args:
        root: the dataset folder as the user has it (e.g. the unpacked
            ``BraTS2021_Training_Data`` or ``Task01_BrainTumour`` folder).
        labels: BraTS case folders only: the label convention (``brats2021``, ``brats2023``
            or ``brats2024``) instead of the one the naming implies.

    Returns:
        The dataset with its cases sorted by id and the structural problems found.

    Raises:
        DataError: if ``root`` is not a folder, holds several layouts at once, or holds
            no layout medseg knows.
        InvalidValueError: ``labels`` is not a BraTS convention, or the folder is not a
            BraTS layout (an MSD or nnU-Net dataset takes its labels from ``dataset.json``).
    """
    chosen = chosen_labels(labels)
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "not found", "the dataset folder does not exist")
    if not root.is_dir():
        raise DataError(root, "not a folder", "give the dataset's folder, not a file")
    layout = detect_layout(root)
    if chosen is not None and layout.kind not in ("brats", "none"):
        raise InvalidValueError(f"{root}: --labels {labels} applies to BraTS case folders; this folder's "
                                f"layout ({layout.kind}) has its own labels")
    if layout.kind == "msd":
        return discover_decathlon(root)
    if layout.kind == "isic":
        return discover_isic(root, layout.isic)
    if len(layout.brats) > 1:
        raise DataError(root, "mixed layouts", "holds both BraTS 2021 (_t1ce) and BraTS 2023 (-t1c) files")
    if layout.kind == "brats":
        (name, folders), = layout.brats.items()
        return discover_brats(root, name, folders, chosen)
    if layout.kind == "dicom":
        return discover_dicom(root, layout.dicom)
    raise DataError(
        root, "unknown layout",
        "found no BraTS case folders, no dataset.json with imagesTr (MSD/nnU-Net), no ISIC2018 "
        "input folder and no DICOM files; see data/README.md for the layouts medseg reads",
    )


def case_identifiers(dataset: DiscoveredDataset) -> PatientIdentifiers:
    """The patient identifiers of every case of ``dataset`` (DICOM headers; empty for other layouts)."""
    found: set[str] = set()
    for case in dataset.cases:
        found.update(case.extra.get("identifiers") or ())
    return PatientIdentifiers(found)


def shown_root(dataset: DiscoveredDataset) -> str:
    """``dataset.root`` as it may be printed or written: with the cases' patient identifiers redacted.

    A DICOM series folder given directly (``medseg data check Doe^John_12345/``) is the root.
    """
    return redact(str(dataset.root), case_identifiers(dataset))
