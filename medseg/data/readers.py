"""Checked readers for NIfTI volumes and 2D images.

Every failure becomes a :class:`~medseg.errors.DataError` that names the file and the
rule it broke, instead of the reader library's own exception (``EOFError``,
``BadGzipFile``, ``ImageFileError`` ...), which rarely says which file was at fault.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import DataError

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Exceptions that nibabel, gzip and zlib raise for unreadable or truncated files.
_READ_ERRORS = (
    OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile,
    nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError,
)


def is_nifti(path: str | Path) -> bool:
    """True if the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``"BraTS2021_00000_t1.nii.gz"`` -> ``"BraTS2021_00000_t1"``."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a NIfTI file read from its header alone.

    Attributes:
        path: the file.
        shape: the full array shape (spatial first, then time/channels).
        affine: the 4x4 voxel-to-world (RAS+) matrix.
        dtype: on-disk data type name.
    """

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The first three dimensions."""
        return self.shape[:3]

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each of the three spatial axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def read_nifti_header(path: str | Path) -> VolumeHeader:
    """Read a NIfTI header without decoding the voxels.

    Raises:
        DataError: if the file is missing, empty, not NIfTI, or its header is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file missing")
    if path.stat().st_size == 0:
        raise DataError(path, "unreadable", "zero-byte file")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(path, "not NIfTI", f"nibabel read it as {type(img).__name__}")
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(path, "unreadable", f"not a valid NIfTI file: {err}") from err
    if len(shape) < 2 or min(shape) < 1:
        raise DataError(path, "bad shape", f"shape {shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "bad affine", "affine is singular or not finite")
    return VolumeHeader(path=path, shape=shape, affine=affine, dtype=str(img.get_data_dtype()))


def read_nifti(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, VolumeHeader]:
    """Read a NIfTI file's voxels (scaled by scl_slope/inter) and header.

    Args:
        path: the ``.nii`` or ``.nii.gz`` file.
        dtype: floating dtype of the returned array.

    Returns:
        ``(array, header)``; the array has the file's full shape.

    Raises:
        DataError: if the file cannot be read completely (truncated gzip, wrong size).
    """
    header = read_nifti_header(path)
    try:
        data = np.asanyarray(nib.load(str(header.path)).dataobj).astype(dtype, copy=False)
    except _READ_ERRORS as err:
        raise DataError(header.path, "unreadable", f"voxel data cannot be decoded (truncated?): {err}") from err
    return data, header


def open_image_2d(path: str | Path):  # noqa: ANN201 - a PIL image, imported lazily
    """Open and fully decode a 2D image (JPEG, PNG ...), as a PIL image (use it as a context manager).

    Raises:
        DataError: if the file is missing or does not decode (a truncated file fails here).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file missing")
    try:
        img = Image.open(path)
        img.load()  # forces a full decode so truncated files fail here
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(path, "unreadable", f"image does not decode: {err}") from err
    return img


def read_image_2d(path: str | Path) -> np.ndarray:
    """Decode a 2D image (JPEG, PNG ...) completely.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` uint8 array.

    Raises:
        DataError: if the file is missing or does not decode.
    """
    with open_image_2d(path) as img:
        array = np.asarray(img)
    if array.ndim not in (2, 3) or array.size == 0:
        raise DataError(path, "bad shape", f"decoded to shape {array.shape}")
    return array


def read_mask_2d(path: str | Path) -> np.ndarray:
    """Decode a 2D mask (PNG ...); 1-bit and palette masks become 8-bit (black 0, white 255).

    Returns:
        The decoded array, unchecked: see :func:`mask_problems` for the rules.

    Raises:
        DataError: if the file is missing or does not decode.
    """
    with open_image_2d(path) as img:
        return np.asarray(img.convert("L") if img.mode in ("1", "P") else img)


def mask_problems(mask: np.ndarray, image_hw: tuple[int, int] | None = None,
                  image_name: str = "") -> list[tuple[str, str]]:
    """The rules of an ISIC mask: single-channel, its image's size (never resized), values 0 and 255 only.

    Args:
        mask: from :func:`read_mask_2d`.
        image_hw: ``(H, W)`` of its image; None skips the size rule (the image did not decode).
        image_name: the image's file name, for the message.

    Returns:
        ``(rule, detail)`` for each broken rule, in that order; empty when the mask is valid.
    """
    problems = []
    if mask.ndim != 2:
        problems.append(("mask not single-channel", f"decoded to shape {mask.shape}"))
    elif image_hw is not None and tuple(mask.shape) != tuple(image_hw):
        of = f" of {image_name}" if image_name else ""
        detail = f"mask is {mask.shape[1]}x{mask.shape[0]}, the image{of} is {image_hw[1]}x{image_hw[0]} (WxH)"
        problems.append(("mask size mismatch", detail))
    values = set(np.unique(mask).tolist())
    if not values <= {0, 255}:
        problems.append(("mask values", f"values {sorted(values - {0, 255})[:10]} besides 0 and 255"))
    return problems
