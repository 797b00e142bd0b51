"""Turn the paths given to ``medseg infer --input`` into cases.

An input is one of:

* a NIfTI file: one single-channel case, or, for a multi-channel model, one 4D file such
  as MSD's ``BRATS_001.nii.gz`` (channel order from a ``dataset.json`` beside it);
* a BraTS 2020/2021 or 2023 case folder, or a folder of them;
* an MSD / nnU-Net dataset folder (``dataset.json`` + ``imagesTr``/``imagesTs``);
* a DICOM series folder, or a folder of series folders;
* a folder of NIfTI files, one case each;
* for 2D models (:func:`expand_image_inputs`): image files (JPEG, PNG ...), an ISIC 2018
  dataset folder, or a folder of images (ISIC ``*_segmentation.png`` masks are skipped).

Each case also carries the label convention of its input (:attr:`InferenceCase.convention`),
from the layout detectors ``medseg data check`` and ``medseg evaluate`` use
(:mod:`medseg.data.layouts`): the file names of a BraTS 2021 or 2023 case folder, the
``dataset.json`` of an MSD / nnU-Net dataset (also for one of its files given alone). A plain
NIfTI file or a DICOM series has none, and gets the model's values.

A folder's layout comes from :func:`medseg.data.layouts.detect.detect_layout`, the detector
``medseg data`` uses, so both commands read a folder the same way.

A path that cannot be used becomes a case with a :attr:`InferenceCase.problem`, so that a
batch reports it with the others instead of stopping. Case ids come from file and folder
names, never from DICOM tags, and are sanitised (:func:`medseg.privacy.safe_case_id`) so that
no id can name a file outside the output folder; a DICOM series is named by
:func:`medseg.privacy.dicom_case_id`, as ``medseg data check`` and ``data list`` name it, and a
folder named after the patient gets a hashed id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.conventions import LabelConvention, canonical_modality
from medseg.data.layouts.brats import discover_brats
from medseg.data.layouts.decathlon import discover_decathlon, read_dataset_json
from medseg.data.layouts.detect import detect_layout
from medseg.data.layouts.dicom import is_dicom_file
from medseg.data.layouts.isic import find_isic_inputs
from medseg.data.readers import IMAGE_2D_SUFFIXES, is_nifti, strip_nifti_suffix
from medseg.errors import DataError, MedsegError
from medseg.inference.dicom_io import DicomSeries, scan_dicom_folder
from medseg.inference.model import InferenceModel
from medseg.privacy import safe_case_id

__all__ = ["InferenceCase", "expand_image_inputs", "expand_inputs", "match_channels"]

logger = logging.getLogger("medseg.infer")


@dataclass
class InferenceCase:
    """One case to segment.

    Attributes:
        case_id: the sanitised id; outputs are ``OUTPUT/<case_id>.nii.gz`` etc.
        kind: ``"nifti"``, ``"dicom"``, ``"image"`` (2D), or ``"invalid"`` when :attr:`problem` is set before any file is read.
        images: NIfTI files in the model's channel order (one file per channel, or one
            multi-channel file); for DICOM, the series folder.
        source: the file or folder the messages name.
        channel_permutation: reorders a multi-channel file's channels into the model's order.
        dicom: the checked DICOM series.
        problem: why the case cannot be segmented, or ``None``.
        identifiers: DICOM patient identifiers, kept only to redact messages.
        convention: the label convention of the input's layout (``brats2023`` for a BraTS 2023
            folder, ``msd_brain`` for MSD Task01, a ``dataset.json``'s classes), or ``None``
            when the input does not say (a plain NIfTI file, a DICOM series).
    """

    case_id: str
    kind: str
    images: list[Path]
    source: Path
    channel_permutation: list[int] | None = None
    dicom: DicomSeries | None = None
    problem: str | None = None
    identifiers: frozenset[str] = field(default_factory=frozenset, repr=False)
    convention: LabelConvention | None = field(default=None, repr=False)


def _canonical(name: str) -> str:
    try:
        return canonical_modality(name)
    except ValueError:
        return name.strip().lower()


def match_channels(source: Sequence[str], model: InferenceModel, where: Path) -> list[int] | None:
    """The permutation taking an input's channels (by name) into the model's order.

    Returns:
        ``None`` when the order already matches (or the model's channels have no names).

    Raises:
        DataError: the channel names differ from the model's.
    """
    if all(n.startswith("channel") for n in model.channel_names):
        return None
    given = [_canonical(n) for n in source]
    wanted = [_canonical(n) for n in model.channel_names]
    if given == wanted:
        return None
    if sorted(given) != sorted(wanted):
        raise DataError(where, "channel mismatch", f"the input has channels {list(source)}; "
                                                   f"the model expects {list(model.channel_names)}")
    return [given.index(n) for n in wanted]


def _invalid(path: Path, message: str) -> InferenceCase:
    name = strip_nifti_suffix(path.name) or "input"
    return InferenceCase(safe_case_id(name), "invalid", [], path, problem=message)


#: The label convention of each dataset folder already discovered in one call of :func:`expand_inputs`.
Conventions = dict[Path, LabelConvention | None]


def _dataset_convention(root: Path, seen: Conventions) -> LabelConvention | None:
    """The convention of the MSD / nnU-Net dataset at ``root``, as discovery reads it (once per folder)."""
    if root not in seen:
        try:
            seen[root] = discover_decathlon(root).convention
        except (MedsegError, ValueError, OSError) as err:  # the case itself is checked when it is read
            logger.warning("%s: label convention unknown (%s); its files get the model's label values", root, err)
            seen[root] = None
    return seen[root]


def _file_convention(path: Path, seen: Conventions) -> LabelConvention | None:
    """The convention of the MSD / nnU-Net dataset one NIfTI file belongs to (in its folder or the one above).

    A file's name alone is no evidence (``scan_t1.nii.gz`` is not BraTS 2021): ``None`` outside a dataset.
    """
    for root in (path.parent.parent, path.parent):  # where the channel order is looked up too
        if (root / "dataset.json").is_file():
            return _dataset_convention(root, seen)
    return None


def _nifti_case(path: Path, model: InferenceModel, seen: Conventions) -> InferenceCase:
    case = InferenceCase(safe_case_id(strip_nifti_suffix(path.name)), "nifti", [path], path)
    case.convention = _file_convention(path, seen)
    if model.in_channels == 1:
        return case
    # A multi-channel file: the channel order is in the dataset.json of an MSD-like dataset.
    for root in (path.parent.parent, path.parent):
        if (root / "dataset.json").is_file():
            meta = read_dataset_json(root)
            raw = meta.get("channel_names") or meta.get("modality") or {}
            names = [str(raw[k]) for k in sorted(raw, key=int)] if isinstance(raw, dict) else []
            try:
                case.channel_permutation = match_channels(names, model, root / "dataset.json") if names else None
            except DataError as err:
                case.problem = str(err)
            return case
    logger.warning("%s: no dataset.json beside it; assuming its channels are in the model's order %s",
                   path.name, list(model.channel_names))
    return case


def _decathlon_cases(root: Path, model: InferenceModel) -> list[InferenceCase]:
    dataset = discover_decathlon(root)
    problems: dict[str, list[str]] = {}
    for p in dataset.problems:
        if p.rule != "missing label":  # segmenting needs no labels: an imagesTr case without one is still a case
            problems.setdefault(p.case_id, []).append(f"{p.path}: {p.rule} ({p.detail})")
    cases = []
    for found in dataset.cases:
        case = InferenceCase(safe_case_id(found.case_id), "nifti", list(found.images), found.images[0],
                             convention=dataset.convention)
        stored = found.extra.get("channel_permutation")  # MSD brain: source order -> canonical BraTS order
        case.channel_permutation = [int(i) for i in stored] if stored is not None else None
        try:
            if len(found.images) > 1 and len(found.images) != model.in_channels:
                raise DataError(case.source, "channel count", f"{len(found.images)} channel files; the model "
                                                              f"expects {model.in_channels} {list(model.channel_names)}")
            # One channel needs no matching: single channels are named inconsistently ("CT", "image").
            perm = match_channels(dataset.channel_names, model, root / "dataset.json") \
                if model.in_channels > 1 else None
            if perm is not None and len(found.images) > 1:
                case.images = [found.images[i] for i in perm]
            elif perm is not None:
                base = case.channel_permutation or list(range(len(perm)))
                case.channel_permutation = [base[i] for i in perm]
        except DataError as err:
            case.problem = str(err)
        if found.case_id in problems:
            case.problem = "; ".join(problems[found.case_id])
        cases.append(case)
    return cases


def _brats_cases(root: Path, found: dict[str, list[Path]], model: InferenceModel) -> list[InferenceCase]:
    if len(found) > 1:
        return [_invalid(root, f"{root}: mixed layouts (holds both BraTS 2021 (_t1ce) and BraTS 2023 (-t1c) files)")]
    (layout, folders), = found.items()
    dataset = discover_brats(root, layout, folders)
    cases = []
    for item in dataset.cases:
        case = InferenceCase(safe_case_id(item.case_id), "nifti", list(item.images), item.images[0].parent,
                             convention=dataset.convention)
        missing = item.extra.get("missing")
        if missing:
            case.problem = "; ".join(f"{m}: missing modality (expected file not found)" for m in missing)
        else:
            try:
                if model.in_channels != len(dataset.channel_names):
                    raise DataError(case.source, "channel count", f"a {layout} case has {len(dataset.channel_names)} "
                                                                  f"channels; the model expects {model.in_channels}")
                perm = match_channels(dataset.channel_names, model, case.source)
                if perm is not None:
                    case.images = [case.images[i] for i in perm]
            except DataError as err:
                case.problem = str(err)
        cases.append(case)
    return cases


def _dicom_cases(root: Path, found: list[DicomSeries], model: InferenceModel) -> list[InferenceCase]:
    cases = []
    for series in found:
        case = InferenceCase(series.case_id, "dicom", [series.folder], series.folder, dicom=series,
                             identifiers=series.identifiers)
        if series.problems:
            case.problem = f"{series.folder}: " + "; ".join(series.problems)
        elif model.in_channels != 1:
            case.problem = (f"{series.folder}: channel count (a DICOM series is one channel; the model expects "
                            f"{model.in_channels} {list(model.channel_names)})")
        cases.append(case)
    return cases


def _folder_cases(root: Path, model: InferenceModel, seen: Conventions) -> list[InferenceCase]:
    layout = detect_layout(root)
    if layout.kind == "msd":
        return _decathlon_cases(root, model)
    if layout.kind == "isic":
        return [_invalid(root, f"{root}: an ISIC 2018 dataset of 2D images; this model is 3D (a 2D model "
                               "segments it)")]
    if layout.kind == "brats":
        return _brats_cases(root, layout.brats, model)
    series = scan_dicom_folder(root, layout.dicom) if layout.kind == "dicom" else []
    files = sorted(p for p in root.iterdir() if p.is_file() and is_nifti(p.name) and not p.name.startswith("."))
    if series or files:  # a folder of DICOM series and NIfTI files: every one of them is a case
        return (_dicom_cases(root, series, model) if series else []) + [_nifti_case(p, model, seen) for p in files]
    return [_invalid(root, f"{root}: no inputs found (expected BraTS case folders, a dataset.json with imagesTr, "
                           "DICOM files or NIfTI files; an empty DICOM folder also ends here)")]


def expand_inputs(paths: Sequence[str | Path], model: InferenceModel) -> list[InferenceCase]:
    """List the cases of every input path, in the order given.

    Args:
        paths: files and folders from ``--input``.
        model: the model, whose channel count and names decide how files are read.

    Returns:
        The cases; those that cannot be segmented carry a :attr:`InferenceCase.problem`.

    Raises:
        MedsegError: no input path was given.
    """
    seen: Conventions = {}
    return _expand(paths, lambda path: _cases_of(path, model, seen))


def _expand(paths: Sequence[str | Path], cases_of: Callable[[Path], list[InferenceCase]]) -> list[InferenceCase]:
    if not paths:
        raise MedsegError("no --input given")
    cases: list[InferenceCase] = []
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            cases.extend(cases_of(path))
        except (MedsegError, OSError) as err:  # e.g. an unreadable dataset.json: this input fails, not the batch
            cases.append(_invalid(path, str(err) if isinstance(err, MedsegError) else f"{path}: {err}"))
    return cases


def _cases_of(path: Path, model: InferenceModel, seen: Conventions) -> list[InferenceCase]:
    if not path.exists():
        return [_invalid(path, f"{path}: input not found")]
    if path.is_dir():
        return _folder_cases(path, model, seen)
    if is_nifti(path.name):
        return [_nifti_case(path, model, seen)]
    if is_dicom_file(path):
        return [_invalid(path, f"{path}: a single DICOM file; give its series folder ({path.parent})")]
    return [_invalid(path, f"{path}: unsupported input (expected a .nii/.nii.gz file, a BraTS case "
                           "folder, a dataset folder or a DICOM series folder)")]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_2D_SUFFIXES and not path.name.startswith(".") \
        and not path.stem.lower().endswith("_segmentation")


def _image_cases(path: Path) -> list[InferenceCase]:
    if not path.exists():
        return [_invalid(path, f"{path}: input not found")]
    if path.is_file():
        if path.suffix.lower() not in IMAGE_2D_SUFFIXES:
            return [_invalid(path, f"{path}: unsupported input for a 2D model (expected an image file: "
                                   f"{', '.join(IMAGE_2D_SUFFIXES)})")]
        return [InferenceCase(safe_case_id(path.stem), "image", [path], path)]
    folders = find_isic_inputs(path) or [path]
    files = [p for folder in folders for p in sorted(folder.iterdir()) if _is_image(p)]
    if not files:
        return [_invalid(path, f"{path}: no images found (expected {', '.join(IMAGE_2D_SUFFIXES)} files "
                               "or an ISIC 2018 dataset folder)")]
    return [InferenceCase(safe_case_id(p.stem), "image", [p], p) for p in files]


def expand_image_inputs(paths: Sequence[str | Path]) -> list[InferenceCase]:
    """List the 2D image cases of every input path, in the order given.

    Args:
        paths: image files, ISIC dataset folders or folders of images.

    Returns:
        The cases; unusable paths carry a :attr:`InferenceCase.problem`.

    Raises:
        MedsegError: no input path was given.
    """
    return _expand(paths, _image_cases)
