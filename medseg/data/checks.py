"""Dataset checks (``medseg data check``): find every problem in every case, change nothing.

Rules, after nnU-Net's ``verify_dataset_integrity``:

* ``file missing`` / ``missing modality`` / ``missing label``: an expected file is absent.
* ``unreadable``: a file does not decode completely (truncated gzip, not NIfTI, zero bytes).
* ``too many voxels`` / ``volume too large`` / ``too many pixels`` / ``bad shape``: a header
  claims more than the limits of :mod:`medseg.utils.limits` (or a dimension below 1); the
  file is refused before its data is read, so an 85-byte file cannot take 256 GB.
* ``not 3D`` / ``wrong channels``: a file that is not a 3D volume (2D, 5D and more, or 4D
  where 3D is expected), or a 4D file with the wrong number of channels. A 4D file whose
  fourth dimension is 1 passes only as a case's single file (MONAI reads it as one channel);
  as one modality of several it is ``not 3D`` (the modalities would not stack).
* ``qform/sform mismatch``: both transforms set and more than half a voxel apart
  (:func:`medseg.data.readers.qform_sform_problem`).
* ``duplicate modality`` / ``duplicate label``: two files for one modality or one label
  (``_t1.nii.gz`` and ``_t1.nii``); discovery reports them (:mod:`medseg.data.layouts.brats`).
* ``shape mismatch`` / ``affine mismatch``: a modality or the label differs in shape, or in
  affine beyond ``affine_tol``, from the case's first image.
* ``non-finite values``: NaN or infinite voxels.
* ``unexpected label values``: label values outside the convention's set (with the
  ``--labels`` that would read them, when another BraTS convention does).
* ``mask size mismatch`` / ``mask values``: a 2D mask whose size differs from its image's,
  or whose values are not {0, 255}.

All problems are collected and returned together; nothing is written.

The label values also settle the one convention the naming cannot: BraTS 2023-named case
folders whose labels hold the resection cavity (4) and ET (3) are BraTS 2024+ (``brats2024``), and the
report says so among its warnings. ``labels`` (``medseg data check --labels``) chooses instead.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medseg.data.cases import Case, DiscoveredDataset, Problem
from medseg.data.conventions import LabelConvention, labels_hint
from medseg.data.discovery import discover, shown_root
from medseg.data.layouts.brats import brats_convention_for_values
from medseg.data.readers import (
    VolumeHeader,
    mask_problems,
    read_image_2d,
    read_mask_2d,
    read_nifti,
    read_nifti_header,
)
from medseg.errors import DataError

DEFAULT_AFFINE_TOL = 1e-3  # mm; header round-off is ~1e-6, a real misregistration is >> 0.01


@dataclass
class CheckReport:
    """The outcome of checking a dataset.

    Attributes:
        dataset: the discovered dataset.
        problems: every problem found, in case order.
        cases_checked: how many cases were read.
        warnings: facts about the whole dataset that are not errors but change how it trains
            (mixed voxel spacings: :func:`spacing_warning`).
    """

    dataset: DiscoveredDataset
    problems: list[Problem]
    cases_checked: int
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format_table(self) -> str:
        """A plain-text table with one row per problem: case, file, rule, detail."""
        notes = "".join(f"\nwarning: {w}" for w in self.warnings)
        kind = self.dataset.layout
        if self.dataset.layout.startswith("brats") and self.dataset.convention.name != kind:
            kind = f"{kind} naming, {self.dataset.convention.name} labels"
        if self.ok:
            return f"{shown_root(self.dataset)}: {self.cases_checked} cases ({kind}), no problems found" + notes
        rows = [("case", "file", "rule", "detail")] + [(p.case_id, p.path, p.rule, p.detail) for p in self.problems]
        widths = [min(max(len(r[i]) for r in rows), 80) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        failing = len({p.case_id for p in self.problems})
        lines.append(f"\n{len(self.problems)} problem(s) in {failing} case(s) of {self.cases_checked} "
                     f"({kind}) under {shown_root(self.dataset)}")
        return "\n".join(lines) + notes


def _read_volume(case: Case, path: Path, problems: list[Problem],
                 dtype: type = np.float32) -> tuple[np.ndarray, VolumeHeader] | None:
    try:
        return read_nifti(path, dtype=dtype)
    except DataError as err:
        problems.append(Problem(case.case_id, err.path, err.rule, err.detail))
        return None


def dimension_problem(shape: tuple[int, ...], single_file: bool) -> str | None:
    """Why an array of ``shape`` is not a usable 3D volume, or ``None``.

    Args:
        shape: the file's array shape.
        single_file: the file is its case's only image (or a label): a fourth dimension of 1
            is then read as the channel; among several modality files it would not stack.
    """
    if len(shape) < 3:
        return f"a {len(shape)}D image of shape {shape}; medseg reads 3D volumes"
    if len(shape) > 4:
        return f"{len(shape)} dimensions, shape {shape}; expected a 3D volume"
    if len(shape) == 4 and (shape[3] != 1 or not single_file):
        return f"expected a 3D volume, got shape {shape}" + ("" if shape[3] != 1 else
                                                             "; each modality file must be plain 3D")
    return None


def _check_geometry(case: Case, ref: VolumeHeader, other: VolumeHeader, tol: float, problems: list[Problem]) -> None:
    if other.spatial_shape != ref.spatial_shape:
        problems.append(Problem(case.case_id, str(other.path), "shape mismatch",
                                f"shape {other.spatial_shape} != {ref.spatial_shape} of {ref.path.name}"))
    diff = float(np.abs(other.affine - ref.affine).max())
    if diff > tol:
        problems.append(Problem(case.case_id, str(other.path), "affine mismatch",
                                f"affine differs from {ref.path.name} by up to {diff:.4g} (tolerance {tol})"))


def _check_label(case: Case, ref: VolumeHeader | None, affine_tol: float,
                 problems: list[Problem]) -> frozenset[int] | None:
    """Check the case's label file; return its label values, or ``None`` when they cannot be judged."""
    if case.label is None or not Path(case.label).is_file():
        return None
    # float64: label values up to 2**53 are read exactly (float32 rounds above 2**24).
    read = _read_volume(case, case.label, problems, dtype=np.float64)
    if read is None:
        return None
    label, header = read
    why = dimension_problem(header.shape, single_file=True)
    if why:
        problems.append(Problem(case.case_id, str(case.label), "not 3D", why))
    if ref is not None:
        _check_geometry(case, ref, header, affine_tol, problems)
    if not np.all(np.isfinite(label)):
        problems.append(Problem(case.case_id, str(case.label), "non-finite values", "NaN or infinite labels"))
        return None
    values = np.unique(label)
    fractional = values[values != np.round(values)]
    if fractional.size:
        problems.append(Problem(case.case_id, str(case.label), "non-integer label values",
                                f"values such as {fractional[:5].tolist()}"))
    return frozenset(int(v) for v in np.round(values))


def label_value_problems(case: Case, values: frozenset[int], convention: LabelConvention,
                         dataset_values: frozenset[int] | None = None) -> list[Problem]:
    """The ``unexpected label values`` problem of a case's label, if its values break ``convention``.

    The detail names the values, the convention's set and, for BraTS labels that another
    BraTS convention allows (a 4 in BraTS 2024+ data read as 2023), the ``--labels`` to pass.

    Args:
        case: the case.
        values: the label values of its label file.
        convention: the dataset's convention.
        dataset_values: the values of every label of the dataset, which the suggested
            convention must allow (default: ``values``).
    """
    unexpected = sorted(v for v in values if v not in convention.valid_values)
    if not unexpected:
        return []
    return [Problem(case.case_id, str(case.label), "unexpected label values",
                    f"values {unexpected[:10]} not in {sorted(convention.valid_values)} ({convention.name})"
                    + labels_hint(values | (dataset_values or frozenset()), convention.name))]


def _check_volume_files(case: Case, dataset: DiscoveredDataset,
                        affine_tol: float) -> tuple[list[Problem], frozenset[int] | None]:
    """Every check of :func:`check_volume_case` but the label values; return the problems and those values."""
    problems: list[Problem] = []
    missing = set(case.extra.get("missing", [])) if isinstance(case.extra.get("missing"), list) else set()
    n_channels = len(dataset.channel_names)
    ref: VolumeHeader | None = None
    for path in case.images:
        if str(path) in missing or not Path(path).is_file():
            continue  # already reported by discovery
        read = _read_volume(case, path, problems)
        if read is None:
            continue
        data, header = read
        expected_4d = len(case.images) == 1 and n_channels > 1
        if expected_4d and (len(header.shape) != 4 or header.shape[3] != n_channels):
            problems.append(Problem(case.case_id, str(path), "wrong channels",
                                    f"expected 4D with {n_channels} channels {dataset.channel_names}, "
                                    f"got shape {header.shape}"))
        elif not expected_4d and (why := dimension_problem(header.shape, single_file=len(case.images) == 1)):
            problems.append(Problem(case.case_id, str(path), "not 3D", why))
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            problems.append(Problem(case.case_id, str(path), "non-finite values", f"{bad} NaN or infinite voxels"))
        if ref is None:
            ref = header
        else:
            _check_geometry(case, ref, header, affine_tol, problems)
    return problems, _check_label(case, ref, affine_tol, problems)


def check_volume_case(case: Case, dataset: DiscoveredDataset, affine_tol: float = DEFAULT_AFFINE_TOL) -> list[Problem]:
    """Check one 3D case (BraTS, MSD or generic layout) and return its problems."""
    problems, values = _check_volume_files(case, dataset, affine_tol)
    if values is not None:
        problems.extend(label_value_problems(case, values, dataset.convention))
    return problems


def check_image_case(case: Case, dataset: DiscoveredDataset, affine_tol: float = DEFAULT_AFFINE_TOL) -> list[Problem]:
    """Check one 2D case (ISIC): the image decodes, and the mask decodes, matches its size and is 0/255."""
    problems: list[Problem] = []
    try:
        image = read_image_2d(case.images[0])
    except DataError as err:
        problems.append(Problem(case.case_id, err.path, err.rule, err.detail))
        image = None
    if image is not None and (image.ndim != 3 or image.shape[2] != 3):
        problems.append(Problem(case.case_id, str(case.images[0]), "not RGB", f"decoded to shape {image.shape}"))
    if case.label is None:
        return problems
    try:
        mask = read_mask_2d(case.label)
    except DataError as err:
        problems.append(Problem(case.case_id, err.path, err.rule, err.detail))
        return problems
    hw = (int(image.shape[0]), int(image.shape[1])) if image is not None else None
    problems.extend(Problem(case.case_id, str(case.label), rule, detail)
                    for rule, detail in mask_problems(mask, hw, Path(case.images[0]).name))
    return problems


def _checker(dataset: DiscoveredDataset) -> Callable[[Case, DiscoveredDataset, float], list[Problem]] | None:
    if dataset.layout == "isic":
        return check_image_case
    if dataset.layout == "dicom":
        return None  # series structure is checked during discovery; pixels are decoded at inference
    return check_volume_case


SPACING_DECIMALS = 2  # spacings equal to 0.01 mm are the same spacing (header round-off is far smaller)


def spacing_warning(dataset: DiscoveredDataset) -> str | None:
    """Say so when a 3D dataset's cases have different voxel spacings, and what training does about it.

    Training resamples only when the bundle sets ``pixdim`` (``generic_3d``); otherwise the
    network sees every case in its own voxel grid, so a lesion's size in voxels differs between
    cases of different spacings. Headers only are read.
    """
    if dataset.layout in ("isic", "dicom") or not dataset.cases:
        return None
    counts: dict[tuple[float, ...], int] = {}
    for case in dataset.cases:
        try:
            header = read_nifti_header(case.images[0])
        except (DataError, OSError, IndexError):
            continue  # unreadable files are problems of their own
        key = tuple(round(float(v), SPACING_DECIMALS) for v in header.spacing[:3])
        counts[key] = counts.get(key, 0) + 1
    if len(counts) < 2:
        return None
    common = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{'x'.join(f'{v:g}' for v in sp)} mm in {n} case(s)" for sp, n in common[:4])
    more = f" and {len(common) - 4} more" if len(common) > 4 else ""
    return (f"the cases have {len(counts)} different voxel spacings ({shown}{more}); without resampling, training "
            "mixes them in voxel space (a lesion's size in voxels differs between them). Resample to one spacing: "
            "set pixdim, e.g. --set pixdim=[1,1,1] (bundles/generic_3d), or resample the data beforehand")


def _refine_convention(dataset: DiscoveredDataset, values: dict[str, frozenset[int]]
                       ) -> tuple[DiscoveredDataset, str | None]:
    """BraTS 2023-named data holding the resection cavity (4) are BraTS 2024+: the dataset and a note saying so."""
    found = frozenset().union(*values.values()) if values else frozenset()
    refined = brats_convention_for_values(dataset.convention, found)
    if refined is dataset.convention:
        return dataset, None
    with_rc = sum(4 in v for v in values.values())
    note = (f"label 4 (resection cavity) in {with_rc} of {len(values)} labelled cases: read as {refined.name}, the "
            f"BraTS 2024+ labels (regions {', '.join(refined.region_names)}); pass --labels brats2023 to refuse the 4")
    return replace(dataset, convention=refined), note


def check_dataset(root: str | Path, workers: int = 2, affine_tol: float = DEFAULT_AFFINE_TOL,
                  progress: Callable[[int, int], None] | None = None, labels: str | None = None,
                  resampled: bool = False) -> CheckReport:
    """Discover ``root`` and check every case, collecting all problems.

    BraTS case folders named as in 2023 whose labels hold the resection cavity (4) and ET (3) are
    read as ``brats2024`` (:func:`medseg.data.layouts.brats.brats_convention_for_values`),
    unless ``labels`` names the convention; ``report.dataset.convention`` is the one used.

    Args:
        root: the dataset folder.
        workers: threads reading files in parallel (gzip decoding releases the GIL).
        affine_tol: largest allowed absolute difference between affines, in mm.
        progress: optional callback ``(done, total)``.
        labels: BraTS case folders: the label convention (``brats2021``, ``brats2023``,
            ``brats2024``) instead of the detected one.
        resampled: training resamples every case to one spacing, so mixed spacings are no warning.

    Returns:
        The report; ``report.ok`` is False if anything is wrong.
    """
    dataset = discover(root, labels)
    problems = list(dataset.problems)
    checker = _checker(dataset)
    notes: list[str] = []
    if checker is check_volume_case and dataset.cases:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_check_volume_files, case, dataset, affine_tol) for case in dataset.cases]
            results = []
            for i, future in enumerate(futures):
                results.append(future.result())
                if progress:
                    progress(i + 1, len(futures))
        values = {case.case_id: found for case, (_, found) in zip(dataset.cases, results) if found is not None}
        if labels is None:
            dataset, note = _refine_convention(dataset, values)
            notes += [note] if note else []
        everywhere = frozenset().union(*values.values())
        for case, (found_problems, found) in zip(dataset.cases, results):
            problems.extend(found_problems)
            if found is not None:
                problems.extend(label_value_problems(case, found, dataset.convention, everywhere))
    elif checker is not None and dataset.cases:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(checker, case, dataset, affine_tol) for case in dataset.cases]
            for i, future in enumerate(futures):
                problems.extend(future.result())
                if progress:
                    progress(i + 1, len(futures))
    order = {c.case_id: i for i, c in enumerate(dataset.cases)}
    problems.sort(key=lambda p: (order.get(p.case_id, -1), p.path))
    warning = spacing_warning(dataset) if checker is check_volume_case and not resampled else None
    return CheckReport(dataset=dataset, problems=problems, cases_checked=len(dataset.cases),
                       warnings=notes + ([warning] if warning else []))
