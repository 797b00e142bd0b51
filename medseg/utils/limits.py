"""How large an input medseg agrees to read: volumes, 2D images and networks described by checkpoints.

A file's header says how much memory reading it will take, and a hostile or broken header
can say anything: an 85-byte ``.nii.gz`` whose header claims 4000^3 float32 voxels makes
nibabel allocate 256 GB before it reads a byte; a 3.5 MB ``.nii.gz`` of zeros inflates to
3.6 GB; a 194 KB PNG holds 200 million pixels; a 1.7 KB checkpoint can ask for a network of
7 GB. Readers compare what the header claims with these limits *before* taking memory, and
refuse with one line naming the file and the limit (convention 13 of ``STYLE.md``).

Each limit is an environment variable (a positive integer; ``1e9`` and ``2_000_000`` are
accepted too) over a default sized to this machine's memory, read at each call so a test or
a user can change it without restarting:

==========================  ==================================  =================================
variable                    default                             why
==========================  ==================================  =================================
``MEDSEG_MAX_VOXELS``       memory / 32 (4 bytes x 8)           one float32 copy of the volume
                                                                is at most 1/8 of the memory
``MEDSEG_MAX_VOLUME_BYTES`` memory / 8                          the bytes the header implies
                                                                (offset + voxels x itemsize)
``MEDSEG_MAX_IMAGE_PIXELS`` 89,478,485 (Pillow's own default)   width x height of a 2D image
``MEDSEG_MAX_PARAMETERS``   min(10^9, memory / 32)              weights (float32) of a network
                                                                built from a checkpoint's spec
==========================  ==================================  =================================

Why a factor of 8 for volumes: :func:`medseg.data.readers.read_nifti` holds the raw data,
nibabel's scaled copy (float64 when the header has a slope, even for int16 data) and the
float32 result at once, up to 14 bytes a voxel, i.e. 3.5 float32 copies; MONAI's pipeline
(orientation, resampling, normalisation) adds a few more. With a float32 copy at 1/8 of the
memory that stays under it. On a 16 GiB laptop this admits 5.4e8 voxels (a 512x512x2000
CT); a 4000^3 claim (6.4e10) is refused on any machine with less than 2 TB.

Why Pillow's default for images: dermoscopy photographs (ISIC) are a few tens of millions
of pixels at most, and Pillow already treats larger images as decompression bombs (it warns
above this and refuses above twice this); medseg refuses above it, with one line.

Why 10^9 parameters: 4 GB of float32 weights, 25 times the largest default network medseg
registers (``flexible_unet`` in 3D, 40 M); training needs three more copies (gradients,
Adam's moments).

"Memory" is the physical memory, or the control group's limit when a container sets a
lower one (``/sys/fs/cgroup``); where neither can be read, 8 GiB is assumed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from medseg.errors import MedsegError

__all__ = [
    "MAX_IMAGE_PIXELS_ENV", "MAX_NETWORK_TENSORS", "MAX_PARAMETERS_ENV", "MAX_VOLUME_BYTES_ENV",
    "MAX_VOXELS_ENV", "PILLOW_DEFAULT_MAX_PIXELS", "available_memory_bytes", "max_image_pixels",
    "max_parameters", "max_volume_bytes", "max_voxels",
]

MAX_VOXELS_ENV = "MEDSEG_MAX_VOXELS"
MAX_VOLUME_BYTES_ENV = "MEDSEG_MAX_VOLUME_BYTES"
MAX_IMAGE_PIXELS_ENV = "MEDSEG_MAX_IMAGE_PIXELS"
MAX_PARAMETERS_ENV = "MEDSEG_MAX_PARAMETERS"

#: ``PIL.Image.MAX_IMAGE_PIXELS`` as Pillow ships it: 1 GiB of 24-bit pixels, divided by 4.
PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
#: Tensors a network may create while it is built: the registered networks' default
#: configurations create 60 to 240. Not a setting: it stops a spec asking for millions of
#: tiny layers, whose Python objects take memory (~8 KB a tensor) even on the meta device.
MAX_NETWORK_TENSORS = 10_000

_FALLBACK_MEMORY = 8 * 1024**3
_VOLUME_MEMORY_FRACTION = 8  # a float32 copy of a volume, or its raw bytes: 1/8 of the memory
_BYTES_PER_VOXEL = 4  # float32, what read_nifti returns and the pipeline computes in
_MAX_PARAMETERS = 1_000_000_000
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def _cgroup_limit() -> int | None:
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            return int(text)  # "max" (v2) means none; v1 writes a huge number for none
    return None


def available_memory_bytes() -> int:
    """The memory medseg sizes its default limits to, in bytes.

    Returns:
        The physical memory, or the control group's limit if lower (a container's
        ``--memory``); 8 GiB if neither can be read.
    """
    found = [m for m in (_physical_memory(), _cgroup_limit()) if m is not None and m > 0]
    return min(found) if found else _FALLBACK_MEMORY


def _setting(name: str, default: int) -> int:
    """The positive integer in environment variable ``name``, or ``default`` when unset or empty.

    Raises:
        MedsegError: the variable is set to anything but a positive whole number.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        value = int(number) if math.isfinite(number) and number == int(number) else 0
    if value < 1:
        raise MedsegError(f"environment variable {name}={text!r}: must be a positive whole number (a limit)")
    return value


def max_voxels() -> int:
    """Most voxels (all dimensions multiplied) a NIfTI header may claim: ``MEDSEG_MAX_VOXELS``.

    Default: memory / 32, so that one float32 copy of the volume takes at most an eighth of
    the memory (see the module docstring).

    Raises:
        MedsegError: the variable is set but not a positive whole number.
    """
    default = available_memory_bytes() // (_BYTES_PER_VOXEL * _VOLUME_MEMORY_FRACTION)
    return _setting(MAX_VOXELS_ENV, default)


def max_volume_bytes() -> int:
    """Most bytes a NIfTI header may imply (data offset + voxels x itemsize): ``MEDSEG_MAX_VOLUME_BYTES``.

    This bounds what is decompressed from a ``.nii.gz`` (nibabel reads exactly this many
    bytes), whatever the data type: 16-byte complex voxels or a gigabyte of header
    extensions. Default: memory / 8.

    Raises:
        MedsegError: the variable is set but not a positive whole number.
    """
    return _setting(MAX_VOLUME_BYTES_ENV, available_memory_bytes() // _VOLUME_MEMORY_FRACTION)


def max_image_pixels() -> int:
    """Most pixels (width x height) of a 2D image: ``MEDSEG_MAX_IMAGE_PIXELS``.

    Default: Pillow's own limit, :data:`PILLOW_DEFAULT_MAX_PIXELS` (89,478,485).

    Raises:
        MedsegError: the variable is set but not a positive whole number.
    """
    return _setting(MAX_IMAGE_PIXELS_ENV, PILLOW_DEFAULT_MAX_PIXELS)


def max_parameters() -> int:
    """Most parameters (and buffer elements) of a network built from a checkpoint: ``MEDSEG_MAX_PARAMETERS``.

    Default: ``min(10**9, memory / 32)``: float32 weights take at most an eighth of the memory.

    Raises:
        MedsegError: the variable is set but not a positive whole number.
    """
    default = min(_MAX_PARAMETERS, available_memory_bytes() // (4 * 8))
    return _setting(MAX_PARAMETERS_ENV, default)
