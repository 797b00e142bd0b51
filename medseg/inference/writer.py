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
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg.errors import InvalidValueError, MedsegError
from medseg.inference.dicom_io import ras_affine
from medseg.utils.atomic import atomic_path

__all__ = ["DicomReference", "NiftiReference", "OutputPaths", "Reference", "label_dtype", "output_paths",
           "write_outputs"]


@dataclass(frozen=True)
class NiftiReference:
    """Geometry of a NIfTI input (its reference modality).

    Attributes:
        source: the file.
        shape: spatial shape ``(X, Y, Z)``.
        affine: the voxel-to-RAS matrix nibabel reads (sform if coded, else qform).
        qform, qform_code, sform, sform_code: the header's own transforms and codes.
        xyzt_units: the header's units field.
    """

    source: Path
    shape: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)
    qform: np.ndarray | None = field(repr=False)
    qform_code: int
    sform: np.ndarray | None = field(repr=False)
    sform_code: int
    xyzt_units: int = 0

    @classmethod
    def from_file(cls, path: Path) -> NiftiReference:
        """Read the geometry from the header of ``path`` (no voxel data)."""
        img = nib.load(str(path))
        header = img.header
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        return cls(source=Path(path), shape=tuple(int(s) for s in img.shape[:3]),
                   affine=np.asarray(img.affine, dtype=np.float64), qform=qform, qform_code=int(qcode),
                   sform=sform, sform_code=int(scode), xyzt_units=int(header["xyzt_units"]))

    def image(self, array: np.ndarray) -> nib.Nifti1Image:
        """A NIfTI image of ``array`` (``(X, Y, Z[, C])``) with this geometry and header transforms."""
        img = nib.Nifti1Image(array, self.affine)
        # The sform carries the exact affine (shears included); the qform keeps the input's own one.
        img.set_sform(self.affine, code=self.sform_code or self.qform_code or 1)
        if self.qform is not None and self.qform_code:
            img.set_qform(self.qform, code=self.qform_code)
        else:
            img.set_qform(self.affine, code=1)
        img.header["xyzt_units"] = self.xyzt_units
        return img


@dataclass(frozen=True)
class DicomReference:
    """Geometry of a DICOM series as SimpleITK reads it.

    Attributes:
        source: the series folder.
        files: the series' files in slice order (slice ``k`` of the volume is file ``k``).
        shape: ``(X, Y, Z)`` = SimpleITK's size (columns, rows, slices).
        origin, spacing, direction: SimpleITK's (LPS) geometry.
    """

    source: Path
    files: tuple[Path, ...] = field(repr=False)
    shape: tuple[int, int, int]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image, files: Sequence[Path]) -> DicomReference:
        """The geometry of ``image``, read from ``files``."""
        return cls(source=Path(files[0]).parent, files=tuple(Path(f) for f in files),
                   shape=tuple(int(s) for s in image.GetSize()), origin=tuple(image.GetOrigin()),
                   spacing=tuple(image.GetSpacing()), direction=tuple(image.GetDirection()))

    @property
    def affine(self) -> np.ndarray:
        """The voxel-to-RAS matrix of the series."""
        image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return ras_affine(image)

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (``(X, Y, Z)``) with the series' geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image


Reference = NiftiReference | DicomReference


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
