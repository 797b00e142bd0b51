"""The hostile files of the resource-limit tests, and how those tests measure a refusal.

Each file is tiny and asks for gigabytes (issue #14, item 10): a NIfTI header alone, a gzip bomb
that really inflates, a PNG of 200 million pixels, a checkpoint whose network needs 7 GB. The
measuring helpers run the console script in a child under an address-space cap and report its
own peak memory, or trace what Python and NumPy allocate in-process.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rel_helpers import files_under
from tiny_training import REPO

from medseg.checkpoint import save_checkpoint
from medseg.networks import build_network

CASE = "BraTS2021_00001"  # the case whose T1 file each row replaces
GOOD = ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"]
TRAIN_SET = {"max_epochs": "1", "roi_size": "[16,16,16]", "num_workers": "0",
             "network_spec#kwargs#features": "[4,8,16]"}
BOMB_LIMITS = {"MEDSEG_MAX_VOXELS": str(512**3)}  # see the module docstring
PEAK_CHILD = 1.5 * 1024**3  # bytes of resident memory a refusing child process may reach
PEAK_TRACED = 200 * 1024**2  # bytes that Python and NumPy may allocate in-process during a refusal
CHILD_ADDRESS_SPACE = 8 * 1024**3  # RLIMIT_AS of the children: torch alone reserves a few GB
HUGE_UNET = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                        "channels": [8192, 8192], "strides": [2], "num_res_units": 0}}
HUGE_UNET_PARAMETERS = 1_813_061_636  # 27 x 8192^2 in the bottom convolution alone: 7.3 GB of float32



# ---------------------------------------------------------------- the hostile files


def nifti_header(shape: tuple[int, ...], dtype: type) -> bytes:
    """A NIfTI-1 single-file header (348 bytes + the 4-byte extension flag), RAS 1 mm."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def header_only_nifti(path: Path, shape: tuple[int, ...] = (4000, 4000, 4000)) -> Path:
    """The tiny file: a gzipped header (64 bytes) claiming ``shape`` float32 voxels, and no data."""
    path.write_bytes(gzip.compress(nifti_header(shape, np.float32), compresslevel=9))
    return path


def gzip_bomb(path: Path, shape: tuple[int, int, int] = (1536, 1536, 768)) -> Path:
    """A valid ``.nii.gz`` of zeros whose stream inflates to all the int16 voxels its header claims.

    One 16 MB block of zeros is deflated once, ending with a full flush (byte-aligned, no
    reference to earlier data), and repeated: each copy inflates to the same 16 MB. The CRC
    and length in the gzip trailer are those of the whole inflated file, so it is a gzip file
    any reader accepts. The default shape is the red team's 3.6 GB in 3.5 MB.
    """
    chunk = 16 * 1024**2
    data_bytes = int(np.prod(shape)) * 2
    assert data_bytes % chunk == 0, "shape must make a whole number of 16 MB blocks"
    header = nifti_header(shape, np.int16)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(chunk)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    with path.open("wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip member header, no name, mtime 0
        out.write(head)
        for _ in range(data_bytes // chunk):
            out.write(block)
            crc = zlib.crc32(zeros, crc)
        out.write(deflate.flush(zlib.Z_FINISH))
        out.write(struct.pack("<II", crc, (len(header) + data_bytes) & 0xFFFFFFFF))
    return path


def png_bomb(path: Path, width: int = 20000, height: int = 10000) -> Path:
    """A 1-bit black PNG of ``width`` x ``height``: 200 million pixels in ~25 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale, not interlaced
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def huge_network_checkpoint(path: Path, network: dict = HUGE_UNET) -> Path:
    """A 2.3 KB medseg checkpoint (one weight) whose network spec asks for a 7 GB network."""
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "label_values": [0, 1], "channels": ["image"]}
    return save_checkpoint(path, {"weight": torch.zeros(1)}, network=network, label_convention="toy",
                           channel_names=["image"], preprocessing=prep)


# ---------------------------------------------------------------- measuring


# A small launcher process starts the measured command and reports its peak memory. Measuring a
# child forked straight from pytest would count pytest's own pages: a forked child's resident set
# starts as its parent's (copy-on-write), and the kernel keeps that high-water mark across exec,
# so the figure would grow with whatever earlier tests loaded into the pytest process.
_LAUNCHER = r"""
import os, resource, subprocess, sys
limit, peak_file, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proc = subprocess.Popen(command, preexec_fn=cap)
_, status, usage = os.wait4(proc.pid, 0)
with open(peak_file, "w") as f:
    f.write(str(usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(*args: str | Path, env: dict[str, str] | None = None,
                 timeout: float = 300) -> tuple[int, str, str, int]:
    """Run ``python -m medseg ARGS`` under an address-space cap; return its status, stdout, stderr and peak
    resident bytes (the command's own, measured by a small launcher process: see ``_LAUNCHER``)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".peak") as peak_file:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(CHILD_ADDRESS_SPACE), peak_file.name,
                                 sys.executable, "-m", "medseg", *map(str, args)], stdout=out, stderr=err,
                                cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            status = proc.wait()
        finally:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        text = Path(peak_file.name).read_text()
        if status > 128:  # a signal ended the command: the launcher exits with 128 + its number
            status = -(status - 128)
        return status, out.read().decode(), err.read().decode(), int(text) if text else 0


@contextlib.contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Peak bytes allocated by Python and NumPy inside the block (appended to the yielded list)."""
    tracemalloc.start()
    result: list[int] = []
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def wrote_nothing(out_dir: Path) -> bool:
    """Nothing under ``out_dir`` but the lock ``medseg train`` holds on it (medseg.engine.outputs)."""
    return not out_dir.exists() or files_under(out_dir) <= {".medseg.lock"}


def one_line_error(err: str, command: str, bad: Path, rule: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medseg {command}: error: {bad}: {rule}"), err
    assert "Traceback" not in err


needs_wait4 = pytest.mark.skipif(not hasattr(os, "wait4"), reason="measures a child's memory with os.wait4")

def planar_bundle(root: Path, network: dict | None = None) -> Path:
    """A 2D output bundle: a tiny light U-Net with random weights, or ``network`` with a dummy weight."""
    if network is None:
        network = {"name": "light_unet", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                                    "features": [4, 8, 16]}}
        torch.manual_seed(0)
        state = build_network(network["name"], **network["kwargs"]).state_dict()
    else:
        state = {"weight": torch.zeros(1)}
    save_checkpoint(root / "models" / "model.pt", state, network=network, label_convention="isic",
                    channel_names=["R", "G", "B"], extra={"output_names": ["lesion"]},
                    preprocessing={"task": "binary", "spatial_dims": 2, "image_size": [32, 32],
                                   "resize": "stretch", "normalize": "imagenet"})
    return root
