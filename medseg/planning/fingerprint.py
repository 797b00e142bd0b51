"""The dataset fingerprint that ``medseg plan`` configures a network from, after nnU-Net v2.

nnU-Net's ``DatasetFingerprintExtractor`` (Isensee et al. 2021) reads each training case once and
keeps what planning needs: shape and spacing, the shape after cropping to the voxels non-zero in
any channel, and a sample of foreground intensities per channel (for normalisation and clipping).
This module does the same for medseg's 3D NIfTI layouts, with three differences:

* shapes, spacings and crop boxes are in RAS axis order, as MONAI's ``Orientationd("RAS")``
  hands the volume to the network; reorienting only permutes and flips axes, so the values
  measured in file axes are permuted (``nib.orientations.ornt_transform``), not the volume;
* up to ``samples_per_case`` foreground voxels are drawn *without* replacement (nnU-Net: with),
  by a generator seeded from ``(seed, case index)``, so any number of workers gives one result;
* label values are checked against the dataset's convention, as ``medseg data check`` does.

The fingerprint names the dataset, never its folder; case ids pass through
:func:`medseg.privacy.redact` with the cases' patient identifiers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.data.cases import Case, DiscoveredDataset
from medseg.data.checks import DEFAULT_AFFINE_TOL, dimension_problem, label_value_problems
from medseg.data.discovery import case_identifiers, discover, shown_root
from medseg.data.layouts.brats import brats_convention_for_values
from medseg.data.layouts.decathlon import read_dataset_json
from medseg.data.readers import VolumeHeader, read_nifti
from medseg.errors import DataError, InvalidValueError, MedsegError
from medseg.planning.fingerprint_file import FINGERPRINT_FORMAT, read_fingerprint, write_fingerprint
from medseg.privacy import redact
from medseg.utils.fastgzip import use_fast_gzip

__all__ = ["FINGERPRINT_FORMAT", "CaseTask", "extract_fingerprint", "fingerprint_case", "read_fingerprint",
           "write_fingerprint"]

_RAS = nib.orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs to fingerprint one case (paths as strings: it crosses processes).

    Attributes:
        index: the case's position among the labelled cases sorted by id (seeds its sampling).
        images: image files in canonical channel order (one 4D file for MSD); label: the label file.
        n_channels: the dataset's channels; permutation: a 4D file's order -> canonical (MSD brain).
        samples_per_case, seed: as for :func:`extract_fingerprint`.
    """

    index: int
    images: tuple[str, ...]
    label: str
    n_channels: int
    permutation: tuple[int, ...] | None
    samples_per_case: int
    seed: int


def _same_geometry(header: VolumeHeader, ref: VolumeHeader) -> None:
    if header.spatial_shape != ref.spatial_shape:
        raise DataError(header.path, "shape mismatch",
                        f"shape {header.spatial_shape} != {ref.spatial_shape} of {ref.path.name}")
    diff = float(np.abs(header.affine - ref.affine).max())
    if diff > DEFAULT_AFFINE_TOL:
        raise DataError(header.path, "affine mismatch",
                        f"affine differs from {ref.path.name} by up to {diff:.4g} (tolerance {DEFAULT_AFFINE_TOL})")


def _read_channels(task: CaseTask) -> tuple[list[np.ndarray], VolumeHeader]:
    """The case's 3D channel volumes in canonical order, and the first image's header."""
    channels: list[np.ndarray] = []
    ref: VolumeHeader | None = None
    single = len(task.images) == 1
    for path in task.images:
        data, header = read_nifti(path)
        if single and task.n_channels > 1:
            if data.ndim != 4 or data.shape[3] != task.n_channels:
                raise DataError(path, "wrong channels", f"expected 4D with {task.n_channels} channels, "
                                                        f"got shape {header.shape}")
        elif why := dimension_problem(header.shape, single_file=single):
            raise DataError(path, "not 3D", why)
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(path, "non-finite values", f"{bad} NaN or infinite voxels")
        if ref is None:
            ref = header
        else:
            _same_geometry(header, ref)
        channels.extend([data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data])
    if ref is None:
        raise DataError(task.label, "missing modality", "the case has no image file")
    if task.permutation is not None:
        channels = [channels[i] for i in task.permutation]
    return channels, ref


def _read_label(path: str, ref: VolumeHeader) -> np.ndarray:
    """The label map as int64, checked: 3D, ``ref``'s geometry, finite integer values."""
    # float64: label values up to 2**53 are read exactly (float32 rounds above 2**24).
    label, header = read_nifti(path, dtype=np.float64)
    if why := dimension_problem(header.shape, single_file=True):
        raise DataError(path, "not 3D", why)
    _same_geometry(header, ref)
    label = label.reshape(header.spatial_shape)
    if not np.all(np.isfinite(label)):
        raise DataError(path, "non-finite values", "NaN or infinite labels")
    ints = label.astype(np.int64)
    fractional = label[ints != label]
    if fractional.size:
        raise DataError(path, "non-integer label values", f"values such as {np.unique(fractional)[:5].tolist()}")
    return ints


def _class_voxels(label: np.ndarray) -> dict[int, int]:
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 2**16:  # bincount: ~10x faster than np.unique's sort on a BraTS volume
        counts = np.bincount(label.ravel(order="K"))  # nibabel arrays are F-ordered: no copy
        return {v: int(n) for v, n in enumerate(counts) if n and v}
    values, counts = np.unique(label, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts) if v}


def _nonzero_extent(channels: list[np.ndarray]) -> list[int]:
    """Side lengths of the box around the voxels non-zero in any channel (the full shape if none is)."""
    nonzero = channels[0] != 0
    for channel in channels[1:]:
        nonzero |= channel != 0
    extent = []
    for axis in range(3):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        extent.append(int(hits[-1] - hits[0] + 1) if hits.size else int(nonzero.shape[axis]))
    return extent


def _measure(task: CaseTask) -> dict[str, Any]:
    channels, ref = _read_channels(task)
    label = _read_label(task.label, ref)
    foreground = np.flatnonzero(label > 0)
    if foreground.size > task.samples_per_case:
        rng = np.random.default_rng(np.random.SeedSequence([task.seed, task.index]))
        foreground = np.sort(rng.choice(foreground, task.samples_per_case, replace=False))
    where = np.unravel_index(foreground, label.shape)
    samples = np.stack([channel[where] for channel in channels]).astype(np.float32, copy=False)
    # Row i of the transform: the RAS axis that file axis i becomes (and whether it flips, which sizes ignore).
    to_ras = [int(row[0]) for row in nib.orientations.ornt_transform(nib.io_orientation(ref.affine), _RAS)]
    order = [to_ras.index(axis) for axis in range(3)]  # the file axis of each RAS axis
    shape, cropped = [int(n) for n in ref.spatial_shape], _nonzero_extent(channels)
    # NIfTI stores the affine in float32: its shortest decimal (0.8, not 0.800000011920929) reads back the same.
    spacing = [float(str(np.float32(s))) for s in ref.spacing]
    return {"shape": [shape[i] for i in order], "spacing": [spacing[i] for i in order],
            "orientation": "".join(nib.aff2axcodes(ref.affine)), "cropped_shape": [cropped[i] for i in order],
            "nonzero_fraction": prod(cropped) / prod(shape), "class_voxels": _class_voxels(label),
            "samples": samples}


def fingerprint_case(task: CaseTask) -> dict[str, Any]:
    """Read one case's files once and measure it (top level, so a process pool can run it).

    Returns:
        ``shape``, ``spacing``, ``orientation``, ``cropped_shape``, ``nonzero_fraction``, ``class_voxels``
        (each non-zero label value found -> voxels) and ``samples``, the ``(C, k <= samples_per_case)``
        sampled foreground voxels; or ``{"error": [path, rule, detail]}`` for a :class:`DataError`,
        whose three-argument constructor does not survive pickling back from a worker.
    """
    use_fast_gzip()  # decoding is most of the time; in a spawned worker too
    try:
        return _measure(task)
    except DataError as err:
        return {"error": [err.path, err.rule, err.detail]}


def _labelled_cases(dataset: DiscoveredDataset) -> list[Case]:
    """The labelled cases sorted by id, once the dataset is known to be a sound 3D NIfTI one."""
    root = shown_root(dataset)
    if dataset.layout == "dicom":
        raise DataError(root, "unsupported layout", "DICOM series; the fingerprint reads NIfTI volumes: convert "
                                                    "the series to NIfTI first (e.g. with dcm2niix)")
    if dataset.spatial_dims != 3:
        raise DataError(root, "not 3D", f"a {dataset.spatial_dims}D dataset ({dataset.layout}); the fingerprint "
                                        "plans 3D networks from 3D volumes")
    if dataset.problems:
        first = dataset.problems[0]
        raise DataError(first.path, first.rule, f"{first.detail}; {len(dataset.problems)} problem(s) in the "
                                                f"dataset, `medseg data check {root}` lists them all")
    cases = sorted((c for c in dataset.cases if c.label is not None), key=lambda c: c.case_id)
    if not cases:
        raise DataError(root, "no labelled case", "the fingerprint measures labelled training cases only")
    return cases


def _run(tasks: list[CaseTask], workers: int, progress: Callable[[int, int], None] | None) -> list[dict]:
    """Each task's result in task order, computed in this process (``workers`` 1) or a pool."""
    results: list[dict] = [{}] * len(tasks)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        if pool is None:
            finished: Iterator[tuple[int, dict]] = ((task.index, fingerprint_case(task)) for task in tasks)
        else:
            futures = {pool.submit(fingerprint_case, task): task.index for task in tasks}
            finished = ((futures[future], future.result()) for future in as_completed(futures))
        for done, (index, result) in enumerate(finished, 1):
            if "error" in result:
                raise DataError(*result["error"])
            results[index] = result
            if progress:
                progress(done, len(tasks))
    except BrokenProcessPool as err:
        raise MedsegError(f"a fingerprint worker died, most likely out of memory: each of the {workers} processes "
                          "holds one case at a time; try fewer workers") from err
    finally:
        if pool is not None:  # on an error, the cases not started yet are dropped
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _statistics(values: np.ndarray) -> dict[str, float | int]:
    low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "median": float(median),
            "min": float(np.min(values)), "max": float(np.max(values)), "percentile_00_5": float(low),
            "percentile_99_5": float(high), "num_samples": int(values.size)}


def extract_fingerprint(root: str | Path, workers: int | None = None, samples_per_case: int = 10_000, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """Fingerprint the labelled 3D cases of the dataset in ``root``.

    Args:
        root: a BraTS, MSD or nnU-Net v2 / generic NIfTI dataset folder.
        workers: processes reading cases (default: every core; 1 reads in this process).
        samples_per_case: most foreground voxels (label > 0) sampled per case for the
            intensity statistics (nnU-Net: 10,000).
        seed: seeds case ``i``'s sampling with ``(seed, i)``.
        progress: called as ``progress(done, total)`` when each case is finished.

    Returns:
        The fingerprint (JSON-serialisable): ``format`` (:data:`FINGERPRINT_FORMAT`), ``dataset``
        (``name``, ``layout``, ``convention``, ``num_cases``), ``channels``, ``labels`` (value ->
        name), ``cases`` by id (``id``; ``shape``, ``spacing`` and ``cropped_shape`` in RAS order;
        the file's ``orientation``; ``nonzero_fraction``; ``class_voxels``), ``intensity`` (the
        foreground statistics of each channel), ``samples_per_case`` and ``seed``.

    Raises:
        InvalidValueError: ``workers`` or ``samples_per_case`` below 1, or ``seed`` negative.
        DataError: naming the file: a DICOM or 2D dataset, a structural problem, no labelled
            case, an unreadable file, images and label of different shapes or affines, label
            values outside the convention, or no foreground voxel in any case.
    """
    if (workers is not None and workers < 1) or samples_per_case < 1 or seed < 0:
        raise InvalidValueError(f"workers and samples_per_case must be >= 1 and seed >= 0, got workers={workers}, "
                                f"samples_per_case={samples_per_case}, seed={seed}")
    dataset = discover(root)
    cases = _labelled_cases(dataset)
    tasks = [CaseTask(i, tuple(str(p) for p in case.images), str(case.label), len(dataset.channel_names),
                      tuple(int(p) for p in perm) if (perm := case.extra.get("channel_permutation")) else None,
                      samples_per_case, seed) for i, case in enumerate(cases)]
    results = _run(tasks, min(workers or os.cpu_count() or 1, len(tasks)), progress)

    found = frozenset().union(*(r["class_voxels"] for r in results))
    convention = dataset.convention
    if dataset.layout.startswith("brats"):  # BraTS 2024+ labels carry the 2023 naming
        convention = brats_convention_for_values(convention, found)
    for case, result in zip(cases, results):
        for problem in label_value_problems(case, frozenset(result["class_voxels"]), convention, found):
            raise DataError(problem.path, problem.rule, problem.detail)
    samples = [np.concatenate([r["samples"][c] for r in results]).astype(np.float64)
               for c in range(len(dataset.channel_names))]
    if samples[0].size == 0:
        raise DataError(shown_root(dataset), "no foreground", f"none of the {len(cases)} labelled cases has a voxel "
                                                              "with label > 0: there is nothing to plan for")

    identifiers = case_identifiers(dataset)
    meta = read_dataset_json(dataset.root) if dataset.layout in ("msd", "generic") else {}
    classes = sorted(v for v in convention.labels if v != 0)
    return {
        "format": FINGERPRINT_FORMAT,
        "dataset": {"name": redact(str(meta.get("name") or Path(dataset.root).resolve().name), identifiers),
                    "layout": dataset.layout, "convention": convention.name, "num_cases": len(cases)},
        "channels": [{"index": i, "name": name} for i, name in enumerate(dataset.channel_names)],
        "labels": {str(v): name for v, name in sorted(convention.labels.items())},
        "cases": [{"id": redact(case.case_id, identifiers),
                   **{k: r[k] for k in ("shape", "spacing", "orientation", "cropped_shape", "nonzero_fraction")},
                   "class_voxels": {str(v): r["class_voxels"].get(v, 0) for v in classes}}
                  for case, r in zip(cases, results)],
        "intensity": [{"channel": c, "name": name, **_statistics(samples[c])}
                      for c, name in enumerate(dataset.channel_names)],
        "samples_per_case": samples_per_case,
        "seed": seed,
    }
