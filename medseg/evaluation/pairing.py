"""Pair prediction files with truth files for ``brats``, ``isic`` and ``labels`` evaluation.

Truth folders:

* ``brats``: a BraTS 2020/2021/2023(/2024+) or MSD Task01 dataset (found with
  :func:`medseg.data.discovery.discover`, which also gives the label convention and the
  FLAIR image shown in the montage), or a flat folder of ``<case_id>[_seg|-seg].nii.gz``.
* ``isic``: the ISIC 2018 Task 1 layout, or a flat folder of ``ISIC_xxxxxxx_segmentation.png``.
* ``labels``: an MSD / nnU-Net folder (``dataset.json`` + ``labelsTr``), or a flat folder of
  NIfTI or PNG label maps.

Prediction names:

* ``brats``: ``PRED/<case_id>.nii.gz``, ``<case_id>_seg.nii.gz``, ``<case_id>-seg.nii.gz`` or
  ``PRED/<case_id>/<anything>seg<anything>.nii.gz`` (``.nii`` also accepted).
* ``isic``: ``PRED/ISIC_xxxxxxx.png`` or ``PRED/ISIC_xxxxxxx_segmentation.png``.
* ``labels``: the truth file's own name.

A case without a prediction (or with several) keeps its pair with ``pred=None`` and the
reason in ``problem``: the evaluation reports it as a failed case rather than stopping.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.cases import Case, DiscoveredDataset
from medseg.data.conventions import LabelConvention, get_convention
from medseg.data.discovery import discover
from medseg.data.layouts.decathlon import is_decathlon_root
from medseg.data.readers import IMAGE_2D_SUFFIXES, is_nifti, strip_nifti_suffix
from medseg.errors import DataError, InvalidValueError

TASKS: tuple[str, ...] = ("brats", "isic", "labels")
_BRATS_TRUTH_LAYOUTS = ("brats2021", "brats2023", "msd", "generic")
_ISIC_MASK = re.compile(r"^(?P<case>ISIC_\d+)_segmentation\.png$", re.IGNORECASE)
_ISIC_TRUTH_DIR = re.compile(r"^ISIC2018_Task1_(?P<split>\w+?)_GroundTruth$")
_MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class CasePair:
    """One truth case and its prediction.

    Attributes:
        case_id: the case identifier used in reports.
        truth: the truth label file.
        pred: the prediction file, or ``None`` when none (or several) was found.
        problem: why ``pred`` is ``None``.
        reference: an image to draw contours on in the montage (FLAIR, the dermoscopy
            image), or ``None`` to draw on the truth mask.
        reference_channel: the channel of a 4D ``reference`` file to show.
        candidates: every prediction file found for the case (several: ambiguous).
    """

    case_id: str
    truth: Path
    pred: Path | None = None
    problem: str | None = None
    reference: Path | None = None
    reference_channel: int | None = None
    candidates: list[Path] = field(default_factory=list)


@dataclass
class Pairing:
    """The pairs of one evaluation.

    Attributes:
        task: ``brats``, ``isic`` or ``labels``.
        convention: the truth's label convention (BraTS regions, or the classes of a
            ``dataset.json``); ``None`` when unknown.
        pairs: one per truth case, sorted by case id.
        unmatched_predictions: prediction files (or folders) that no truth case claimed.
        layout: the truth dataset's layout (:func:`medseg.data.discovery.discover`), ``None``
            for a flat folder of masks.
    """

    task: str
    convention: LabelConvention | None
    pairs: list[CasePair] = field(default_factory=list)
    unmatched_predictions: list[Path] = field(default_factory=list)
    layout: str | None = None


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _discover_or_none(root: Path) -> DiscoveredDataset | None:
    """The discovered dataset, or ``None`` when ``root`` holds no known layout (a flat folder)."""
    try:
        return discover(root)
    except DataError as err:
        if err.rule == "unknown layout":
            return None
        raise


def _reference(case: Case, dataset: DiscoveredDataset) -> tuple[Path | None, int | None]:
    """The FLAIR image of a case when the dataset has one, else its first channel."""
    if not case.images:
        return None, None
    names = [n.lower() for n in dataset.channel_names]
    index = names.index("flair") if "flair" in names else 0
    if len(case.images) == 1:  # a 2D image, a 3D volume or one 4D file with every channel
        permutation = case.extra.get("channel_permutation")
        channel = permutation[index] if isinstance(permutation, list) else index
        return case.images[0], channel
    return case.images[min(index, len(case.images) - 1)], None


def _pick(pair: CasePair, candidates: list[Path], looked_for: str, pred_dir: Path) -> None:
    """Set the pair's prediction if exactly one candidate exists, else say why not."""
    pair.candidates = candidates
    if len(candidates) == 1:
        pair.pred, pair.problem = candidates[0], None
    elif not candidates:
        pair.pred, pair.problem = None, f"no prediction found in {pred_dir} (looked for {looked_for})"
    else:
        pair.pred = None
        pair.problem = f"several predictions for {pair.case_id}: {', '.join(str(p) for p in candidates)}"


def _brats_prediction(pred_dir: Path, pair: CasePair) -> None:
    case_id = pair.case_id
    names = [f"{case_id}{tail}{ext}" for tail in ("", "_seg", "-seg") for ext in (".nii.gz", ".nii")]
    found = [pred_dir / n for n in names if (pred_dir / n).is_file()]
    folder = pred_dir / case_id
    if folder.is_dir():
        found += [p for p in _visible_files(folder) if "seg" in p.name.lower() and is_nifti(p)]
    looked = f"{case_id}.nii.gz, {case_id}_seg.nii.gz, {case_id}-seg.nii.gz or {case_id}/*seg*.nii.gz"
    _pick(pair, found, looked, pred_dir)


def _flat_nifti_truth(truth_dir: Path) -> list[CasePair]:
    pairs = []
    for path in _visible_files(truth_dir):
        if is_nifti(path):
            case_id = re.sub(r"[_-]seg$", "", strip_nifti_suffix(path.name), flags=re.IGNORECASE)
            pairs.append(CasePair(case_id=case_id, truth=path))
    return pairs


def _brats_pairs(pred_dir: Path, truth_dir: Path, convention: str | None, default: str) -> Pairing:
    dataset = _discover_or_none(truth_dir)
    if dataset is None:
        conv = get_convention(convention or default)
        pairs = _flat_nifti_truth(truth_dir)
    else:
        if dataset.layout not in _BRATS_TRUTH_LAYOUTS:
            raise DataError(truth_dir, "not a BraTS dataset", f"found the {dataset.layout} layout")
        conv = get_convention(convention) if convention else dataset.convention
        pairs = []
        for case in dataset.cases:
            if case.label is not None and case.label.is_file():
                reference, channel = _reference(case, dataset)
                pairs.append(CasePair(case.case_id, case.label, reference=reference,
                                      reference_channel=channel))
    if not conv.is_region_based:
        raise DataError(truth_dir, "no BraTS label convention",
                        f"{conv.name!r} has no WT/TC/ET regions; "
                        "pass --convention brats2021, brats2023, brats2024 or msd_brain")
    for pair in pairs:
        _brats_prediction(pred_dir, pair)
    return Pairing("brats", conv, pairs, layout=dataset.layout if dataset is not None else None)


def _isic_reference(truth_dir: Path, case_id: str) -> Path | None:
    match = _ISIC_TRUTH_DIR.match(truth_dir.name)
    if not match:
        return None
    inputs = truth_dir.parent / f"ISIC2018_Task1-2_{match['split']}_Input"
    for ext in (".jpg", ".jpeg", ".png"):
        if (inputs / f"{case_id}{ext}").is_file():
            return inputs / f"{case_id}{ext}"
    return None


def _isic_pairs(pred_dir: Path, truth_dir: Path) -> Pairing:
    dataset = _discover_or_none(truth_dir)
    pairs = []
    if dataset is None:
        for path in _visible_files(truth_dir):
            if match := _ISIC_MASK.match(path.name):
                reference = _isic_reference(truth_dir, match["case"])
                pairs.append(CasePair(match["case"], path, reference=reference))
    elif dataset.layout == "isic":
        pairs = [CasePair(c.case_id, c.label, reference=c.images[0] if c.images else None)
                 for c in dataset.cases if c.label is not None]
    else:
        raise DataError(truth_dir, "not an ISIC dataset", f"found the {dataset.layout} layout")
    for pair in pairs:
        names = [f"{pair.case_id}.png", f"{pair.case_id}_segmentation.png"]
        found = [pred_dir / n for n in names if (pred_dir / n).is_file()]
        _pick(pair, found, " or ".join(names), pred_dir)
    return Pairing("isic", None, pairs)


def _labels_pairs(pred_dir: Path, truth_dir: Path, convention: str | None) -> Pairing:
    conv = get_convention(convention) if convention else None
    pairs = []
    if is_decathlon_root(truth_dir):
        dataset = discover(truth_dir)
        conv = conv or dataset.convention
        for case in dataset.cases:
            if case.label is not None and case.label.is_file():
                reference, channel = _reference(case, dataset)
                pairs.append(CasePair(case.case_id, case.label, reference=reference,
                                      reference_channel=channel))
    else:
        for path in _visible_files(truth_dir):
            if is_nifti(path):
                pairs.append(CasePair(strip_nifti_suffix(path.name), path))
            elif path.suffix.lower() in _MASK_SUFFIXES:
                pairs.append(CasePair(path.stem, path))
    for pair in pairs:
        candidate = pred_dir / pair.truth.name
        _pick(pair, [candidate] if candidate.is_file() else [], pair.truth.name, pred_dir)
    return Pairing("labels", conv, pairs)


# Side outputs that ``medseg infer --save-prob`` writes beside each mask; they are no predictions.
_SIDE_OUTPUTS = ("_prob", "_uncertainty", "_overlay")


def _unmatched(pred_dir: Path, pairs: list[CasePair]) -> list[Path]:
    used = {c.resolve() for p in pairs for c in p.candidates}
    used_dirs = {c.parent.resolve() for p in pairs for c in p.candidates}
    out = []
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith(".") or path.name.split(".")[0].endswith(_SIDE_OUTPUTS):
            continue
        unclaimed_dir = path.is_dir() and path.resolve() not in used_dirs
        unclaimed_file = path.is_file() and (is_nifti(path) or path.suffix.lower() in IMAGE_2D_SUFFIXES) \
            and path.resolve() not in used
        if unclaimed_dir or unclaimed_file:
            out.append(path)
    return out


def pair_cases(
    pred_dir: str | Path, truth_dir: str | Path, task: str, convention: str | None = None,
    flat_convention: str = "brats2021",
) -> Pairing:
    """Find every truth case and its prediction.

    Args:
        pred_dir: the folder of predictions.
        truth_dir: the truth dataset or folder of truth masks.
        task: one of :data:`TASKS`.
        convention: a label convention name that overrides the discovered one
            (``brats``: default ``flat_convention`` for a flat folder; ``labels``: its classes).
        flat_convention: ``brats``: the convention of a flat folder of masks when
            ``convention`` is not given.

    Returns:
        The pairs sorted by case id, with the predictions no case claimed.

    Raises:
        ValueError: an unknown task or convention.
        DataError: a missing folder, a truth folder of the wrong kind, or no truth cases.
    """
    if task not in TASKS:
        raise InvalidValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    pred_dir, truth_dir = Path(pred_dir).expanduser(), Path(truth_dir).expanduser()
    for folder, what in ((truth_dir, "truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise DataError(folder, "not a folder" if folder.exists() else "not found", f"the {what} folder")
    if task == "brats":
        pairing = _brats_pairs(pred_dir, truth_dir, convention, flat_convention)
    elif task == "isic":
        pairing = _isic_pairs(pred_dir, truth_dir)
    else:
        pairing = _labels_pairs(pred_dir, truth_dir, convention)
    if not pairing.pairs:
        raise DataError(truth_dir, "no truth cases", f"found no labelled cases for task {task!r}")
    counts = Counter(p.case_id for p in pairing.pairs)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise DataError(truth_dir, "duplicate case ids", f"{duplicates[:5]} appear more than once")
    pairing.pairs.sort(key=lambda p: p.case_id)
    pairing.unmatched_predictions = _unmatched(pred_dir, pairing.pairs)
    return pairing
