"""The geometry of an input, read when it is loaded and given back when its outputs are written.

:class:`NiftiReference` holds a NIfTI input's affine, shape and header transforms;
:class:`DicomReference` a DICOM series' files and ITK (LPS) geometry. The read stage
(:mod:`medseg.inference.preprocess`) makes one per case, and the write stage
(:mod:`medseg.inference.writer`, :mod:`medseg.inference.dicom_seg`) builds the output images
from it, so neither stage imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.data import MetaTensor

from medseg.inference.dicom_io import lps_geometry, ras_affine

__all__ = ["DicomReference", "NiftiReference", "Reference"]


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
    """Geometry of a DICOM series as ITK reads it.

    Attributes:
        source: the series folder.
        files: the series' files in slice order (slice ``k`` of the volume is file ``k``).
        shape: ``(X, Y, Z)`` = ITK's size (columns, rows, slices).
        origin, spacing, direction: ITK's (LPS) geometry, row-major direction.
    """

    source: Path
    files: tuple[Path, ...] = field(repr=False)
    shape: tuple[int, int, int]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def from_series(cls, image: MetaTensor, files: Sequence[Path]) -> DicomReference:
        """The geometry of ``image``, a series :func:`~medseg.inference.dicom_io.load_series` read from ``files``."""
        origin, spacing, direction = lps_geometry(image)
        return cls(source=Path(files[0]).parent, files=tuple(Path(f) for f in files),
                   shape=tuple(int(s) for s in image.shape[1:]), origin=origin, spacing=spacing, direction=direction)

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
