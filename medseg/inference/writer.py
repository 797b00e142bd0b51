"""Write a case's outputs in the geometry of its input, all of them or none.

NIfTI inputs: the outputs take the reference modality's affine (as nibabel reads it), its
spatial shape, and its qform and sform with their codes. DICOM inputs: the label and
uncertainty maps are written with SimpleITK from an image carrying the series' origin,
spacing and direction, so SimpleITK reads back exactly the series' geometry; the 4D
probability map is written with nibabel with the equivalent RAS affine.

Every file goes through :func:`medseg.utils.atomic.atomic_path`, and a case's files are
renamed into place only once all of them are written, so an interrupted or failing case
leaves no partial file behind. Output names are checked to stay inside the output folder.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg.errors import InvalidValueError, MedsegError
from medseg.inference.geometry import DicomReference, Reference
from medseg.utils.atomic import atomic_path

__all__ = ["OutputPaths", "label_dtype", "output_paths", "write_outputs"]


@dataclass(frozen=True)
class OutputPaths:
    """The files of one case: ``<id>.nii.gz``, ``<id>_prob.nii.gz``, ``<id>_uncertainty.nii.gz``, ``<id>_seg.dcm``.

    Suffixed names can be another case's mask (``scan``'s ``scan_prob.nii.gz``); a batch's
    names are checked against each other by :func:`medseg.inference.outputs.plan_outputs`.
    """

    labels: Path
    probabilities: Path
    uncertainty: Path
    dicom_seg: Path


def output_paths(output_dir: str | Path, case_id: str) -> OutputPaths:
    """The output files of ``case_id``, refusing any that would not be a plain file inside ``output_dir``.

    Raises:
        MedsegError: the id contains a path separator, starts with a dot, or resolves outside the folder.
    """
    root = Path(output_dir).resolve()
    if not case_id or case_id.startswith(".") or any(sep in case_id for sep in ("/", "\\", "\0")):
        raise MedsegError(f"case id {case_id!r} is not a plain file name; refusing to write it")
    paths = OutputPaths(root / f"{case_id}.nii.gz", root / f"{case_id}_prob.nii.gz",
                        root / f"{case_id}_uncertainty.nii.gz", root / f"{case_id}_seg.dcm")
    for path in (paths.labels, paths.probabilities, paths.uncertainty, paths.dicom_seg):
        if path.resolve().parent != root:
            raise MedsegError(f"case id {case_id!r} would write {path.resolve()} outside {root}; refusing")
    return paths


def label_dtype(values: Sequence[int]) -> np.dtype:
    """The smallest of uint8, uint16 and uint32 that holds every label value.

    Raises:
        InvalidValueError: a value outside 0..2**32-1 (``medseg data check`` refuses such
            labels in ``dataset.json``, so only a hand-made checkpoint gets here).
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        info = np.iinfo(dtype)
        if all(info.min <= int(v) <= info.max for v in values):
            return np.dtype(dtype)
    raise InvalidValueError(f"label values {sorted(values)[:3]}...{sorted(values)[-1:]} cannot be written: masks are "
                            "uint8, uint16 or uint32 (label values 0 to 4,294,967,295)")


def _check_shape(array: np.ndarray, reference: Reference, what: str) -> None:
    if tuple(array.shape[:3]) != tuple(reference.shape):
        raise RuntimeError(f"{what} has shape {array.shape[:3]}, the input {reference.shape}; not written")


def _save(array: np.ndarray, reference: Reference, path: Path, description: str = "") -> None:
    if isinstance(reference, DicomReference) and array.ndim == 3:
        sitk.WriteImage(reference.image(array), str(path), True)
        return
    if isinstance(reference, DicomReference):
        img = nib.Nifti1Image(array, reference.affine)
        img.set_sform(reference.affine, code=1)
        img.set_qform(reference.affine, code=1)
        img.header.set_xyzt_units("mm")
    else:
        img = reference.image(array)
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    nib.save(img, str(path))


def write_outputs(
    reference: Reference,
    paths: OutputPaths,
    labels: np.ndarray,
    probabilities: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    output_names: Sequence[str] = (),
    dicom_seg: Callable[[Path], object] | None = None,
    keep: Collection[Path] = (),
) -> list[Path]:
    """Write one case's outputs atomically, as a set.

    Args:
        reference: the input's geometry.
        paths: where to write.
        labels: integer label map ``(X, Y, Z)``.
        probabilities: ``(C, X, Y, Z)`` float maps, written as a 4D ``(X, Y, Z, C)`` float32 NIfTI.
        uncertainty: ``(X, Y, Z)`` float map.
        output_names: names of the probability channels, recorded in the header description.
        dicom_seg: writes the DICOM-SEG at the path it is given.
        keep: existing files to leave as they are: not written (``medseg infer`` without
            ``--overwrite`` never replaces a file).

    Returns:
        The files written.
    """
    _check_shape(labels, reference, "label map")
    jobs: list[tuple[Path, Callable[[Path], object]]] = [(paths.labels, lambda p: _save(labels, reference, p))]
    if probabilities is not None:
        _check_shape(probabilities.transpose(1, 2, 3, 0), reference, "probability map")
        prob = np.ascontiguousarray(probabilities.transpose(1, 2, 3, 0), dtype=np.float32)
        jobs.append((paths.probabilities,
                     lambda p: _save(prob, reference, p, "medseg probabilities: " + ",".join(output_names))))
    if uncertainty is not None:
        _check_shape(uncertainty, reference, "uncertainty map")
        unc = np.asarray(uncertainty, dtype=np.float32)
        jobs.append((paths.uncertainty, lambda p: _save(unc, reference, p, "medseg uncertainty")))
    if dicom_seg is not None:
        jobs.append((paths.dicom_seg, dicom_seg))
    jobs = [(target, write) for target, write in jobs if target not in keep]
    # Every file is written to its temporary name first; the renames happen only when all succeeded.
    with contextlib.ExitStack() as stack:
        for target, write in jobs:
            write(stack.enter_context(atomic_path(target)))
    return [target for target, _ in jobs]
