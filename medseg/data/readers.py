"""Checked readers for NIfTI volumes and 2D images.

Every failure becomes a :class:`~medseg.errors.DataError` that names the file and the
rule it broke, instead of the reader library's own exception (``EOFError``,
``BadGzipFile``, ``ImageFileError`` ...), which rarely says which file was at fault.

Sizes read from headers are bounded before memory is taken (:mod:`medseg.utils.limits`):
a NIfTI header is parsed from its first bytes alone and checked (dimensions positive,
voxels and implied bytes under the limits, an uncompressed file as long as its header
says) before nibabel reads the extensions or allocates the array; a 2D image's width and
height are checked before Pillow decodes it. nibabel then reads exactly the bytes the
header implies (``ArrayProxy`` allocates them and ``readinto`` fills them), so that check
also caps what a ``.nii.gz`` inflates to, however much its stream would give.

A header whose qform and sform are both set (codes > 0) but place the volume in different
places is refused (``qform/sform mismatch``): nibabel, MONAI and medseg use the sform, ITK
and SimpleITK prefer the qform, so the same file would lie in two places depending on the
tool. The tolerance is half the smallest voxel size, measured at the volume's eight corners
(:data:`QFORM_SFORM_TOLERANCE`): within it, every tool assigns each voxel centre to the same
voxel; float32 round-off of the quaternion is a million times smaller.
"""

from __future__ import annotations

import gzip
import re
import threading
import warnings
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import DataError
from medseg.utils.limits import (
    MAX_IMAGE_PIXELS_ENV,
    MAX_VOLUME_BYTES_ENV,
    MAX_VOXELS_ENV,
    max_image_pixels,
    max_volume_bytes,
    max_voxels,
)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: Largest distance allowed between where the qform and the sform put a corner of the volume,
#: as a fraction of the smallest voxel size.
QFORM_SFORM_TOLERANCE = 0.5
IMAGE_2D_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Exceptions that nibabel, gzip and zlib raise for unreadable or truncated files.
_READ_ERRORS = (
    OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile,
    nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError,
)
# sizeof_hdr, the first int32 of a NIfTI file, says which version it is and its byte order.
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
# Image.open is serialised: catch_warnings() changes the process's warning filters (Python < 3.14).
_PIL_OPEN_LOCK = threading.Lock()


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


def _peek_nifti_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header | None:
    """The NIfTI-1 or -2 header from the file's first 540 bytes, without its extensions or data.

    Returns:
        The header, or ``None`` when the file does not start with one (nibabel then reports why).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            block = handle.read(max(_HEADER_CLASSES))
    except _READ_ERRORS:
        return None
    for endian in ("<", ">"):
        size = int(np.frombuffer(block[:4], dtype=f"{endian}i4")[0]) if len(block) >= 4 else 0
        if size in _HEADER_CLASSES and len(block) >= size:
            return _HEADER_CLASSES[size](block[:size], endianness=endian, check=False)
    return None


def check_nifti_size(path: Path, header: nib.Nifti1Header | nib.Nifti2Header) -> tuple[int, ...]:
    """Check what a NIfTI header claims before anything is read on its word.

    Rules: 1 to 7 dimensions, each positive; at most :func:`~medseg.utils.limits.max_voxels`
    voxels; the implied bytes (data offset + voxels x itemsize) at most
    :func:`~medseg.utils.limits.max_volume_bytes`; an uncompressed file at least that long.

    Args:
        path: the file, for the messages.
        header: its header (see :func:`read_nifti_header`).

    Returns:
        The shape the header claims.

    Raises:
        DataError: naming the file, the rule and the claimed values.
    """
    dims = [int(d) for d in header["dim"]]
    if not 1 <= dims[0] <= 7:
        raise DataError(path, "bad shape", f"header dim[0] = {dims[0]}, a NIfTI image has 1 to 7 dimensions")
    shape = tuple(dims[1: dims[0] + 1])
    if min(shape) < 1:
        raise DataError(path, "bad shape", f"header claims shape {shape}; every dimension must be at least 1")
    voxels = prod(shape)
    limit = max_voxels()
    if voxels > limit:
        raise DataError(path, "too many voxels", f"header claims shape {shape} = {voxels:,} voxels, more than the "
                                                 f"limit {limit:,} (set {MAX_VOXELS_ENV} to change it)")
    try:
        dtype = header.get_data_dtype()
    except (KeyError, nib.spatialimages.HeaderDataError):
        raise DataError(path, "unreadable", f"unknown NIfTI data type code {int(header['datatype'])}") from None
    raw_offset = float(header["vox_offset"])
    if not np.isfinite(raw_offset) or raw_offset < 0:
        raise DataError(path, "unreadable", f"header vox_offset {raw_offset} is not a byte offset")
    offset = max(int(raw_offset), int(header["sizeof_hdr"]))
    implied = offset + voxels * dtype.itemsize
    limit = max_volume_bytes()
    if implied > limit:
        raise DataError(path, "volume too large", f"header implies {implied:,} bytes ({voxels:,} voxels of {dtype} "
                                                  f"from offset {offset:,}), more than the limit {limit:,} "
                                                  f"(set {MAX_VOLUME_BYTES_ENV} to change it)")
    if not path.name.lower().endswith(".gz") and path.stat().st_size < implied:
        raise DataError(path, "unreadable", f"truncated: the header implies {implied:,} bytes, the file has "
                                            f"{path.stat().st_size:,}")
    return shape


def qform_sform_problem(header: nib.Nifti1Header | nib.Nifti2Header, shape: tuple[int, ...]) -> str | None:
    """Why the header's qform and sform disagree beyond :data:`QFORM_SFORM_TOLERANCE`, or ``None``.

    Only a header with both transforms coded (codes > 0) is compared: with one of them unset,
    every tool reads the one that is set.

    Args:
        header: a NIfTI header.
        shape: the image's shape (its first three dimensions span the volume).
    """
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qform is None or sform is None or not qcode or not scode:
        return None
    dims = [max(int(n), 1) for n in tuple(shape[:3]) + (1,) * (3 - len(shape[:3]))]
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1)
                        for k in (0, dims[2] - 1)]).T
    apart = np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0)
    worst = int(np.argmax(apart))
    voxel = float(np.sqrt((sform[:3, :3] ** 2).sum(axis=0)).min())
    tol = QFORM_SFORM_TOLERANCE * voxel
    if not np.isfinite(apart).all() or apart[worst] > tol:
        corner = tuple(int(v) for v in corners[:3, worst])
        return (f"qform (code {int(qcode)}) and sform (code {int(scode)}) put voxel {corner} {apart[worst]:.3g} mm "
                f"apart, more than the tolerance {tol:.3g} mm (half the smallest voxel); tools that read the qform "
                "(ITK, SimpleITK) and those that read the sform (nibabel, MONAI) would place the image differently: "
                "make the two agree, or unset the wrong one (code 0)")
    return None


def read_nifti_header(path: str | Path) -> VolumeHeader:
    """Read a NIfTI header without decoding the voxels, refusing sizes over the limits.

    Every NIfTI read in medseg starts here (:func:`read_nifti` does, and inference checks each
    file with it before MONAI loads it), so :func:`check_nifti_size` guards them all.

    Raises:
        DataError: if the file is missing, empty, not NIfTI, its header is invalid, it
            claims more voxels or bytes than the limits (:mod:`medseg.utils.limits`), or its
            qform and sform disagree (:func:`qform_sform_problem`).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file missing")
    if path.stat().st_size == 0:
        raise DataError(path, "unreadable", "zero-byte file")
    peeked = _peek_nifti_header(path)
    if peeked is not None:
        check_nifti_size(path, peeked)  # before nib.load, which reads the extensions the header announces
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(path, "not NIfTI", f"nibabel read it as {type(img).__name__}")
        if peeked is None:  # nibabel read a header the peek could not: check it all the same
            check_nifti_size(path, img.header)
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
        disagreement = qform_sform_problem(img.header, shape)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(path, "unreadable", f"not a valid NIfTI file: {err}") from err
    if len(shape) < 2 or min(shape) < 1:
        raise DataError(path, "bad shape", f"shape {shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "bad affine", "affine is singular or not finite")
    if disagreement:
        raise DataError(path, "qform/sform mismatch", disagreement)
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


def _too_many_pixels(path: Path, pixels: int | None, limit: int, err: Exception | None = None) -> DataError:
    if pixels is None and err is not None:  # Pillow's message: "Image size (N pixels) exceeds limit ..."
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else None
    claimed = f"{pixels:,} pixels" if pixels is not None else "its size"
    return DataError(path, "too many pixels", f"{claimed}, more than the limit {limit:,} "
                                              f"(set {MAX_IMAGE_PIXELS_ENV} to change it); a decompression bomb?")


def open_image_2d(path: str | Path):  # noqa: ANN201 - a PIL image, imported lazily
    """Open and fully decode a 2D image (JPEG, PNG ...), as a PIL image (use it as a context manager).

    Width x height is checked against :func:`~medseg.utils.limits.max_image_pixels` before
    decoding; Pillow's own decompression-bomb limit is set to it, and its warning is an
    error here.

    Raises:
        DataError: if the file is missing, has too many pixels, or does not decode (a
            truncated file fails here).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file missing")
    limit = max_image_pixels()
    bombs = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with _PIL_OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow warns above its limit (an error here) and raises above twice it; it is
            # ours for this call and Pillow's own again after, for other code in the process.
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
            try:
                img = Image.open(path)  # reads the header only
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except bombs as err:
        raise _too_many_pixels(path, None, limit, err) from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(path, "unreadable", f"image does not decode: {err}") from err
    pixels = int(img.width) * int(img.height)
    try:
        if pixels > limit:  # the rule for every format, whatever Pillow checks while decoding
            raise _too_many_pixels(path, pixels, limit)
        img.load()  # forces a full decode so truncated files fail here
    except bombs as err:  # some formats (ICO, ICNS) check again once they pick a size
        img.close()
        raise _too_many_pixels(path, None, limit, err) from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        img.close()
        raise DataError(path, "unreadable", f"image does not decode: {err}") from err
    except DataError:
        img.close()
        raise
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
