"""Tiny hostile files that ask for gigabytes: refused from their headers, in one line, on every route.

The four files a red team built (issue #14, item 10), each made here for real and small:

* a 64-byte ``.nii.gz`` (the red team's was 85): a NIfTI header alone, claiming 4000^3
  float32 voxels (256 GB);
* a 3.5 MB ``.nii.gz`` whose gzip stream of zeros really inflates to the 3.6 GB its int16
  header claims (built in a second from one compressed block repeated, see :func:`gzip_bomb`);
* a ~25 KB PNG of 20000 x 10000 1-bit pixels (200 million pixels);
* a 2.3 KB checkpoint whose network spec asks for a 7 GB U-Net (1.8e9 parameters).

Each goes through the real CLI (``medseg.cli.main.main``) of every command that reads it,
and once through the console script in a child process, whose peak memory (``ru_maxrss``
from ``wait4``) must stay under 1.5 GB; in-process runs are measured with ``tracemalloc``.
The child processes run under an address-space limit (``RLIMIT_AS``), so that a regression
ends in a failed test, not in a machine out of memory.

The 4000^3 file, the PNG and the checkpoint are refused under the default limits on any
machine (they are sized to its memory: 4000^3 voxels needs more than 2 TiB). A 3.6 GB volume
is a real, if large, volume on a machine with 64 GB, so the tests of the gzip bomb pin
``MEDSEG_MAX_VOXELS`` to 512^3.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import signal
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
from PIL import Image
from rel_helpers import brats_bundle, files_under
from tiny_training import BUNDLE, REPO, set_args

from medseg.checkpoint import build_from_checkpoint, check_network_size, save_checkpoint
from medseg.cli.main import main
from medseg.data.readers import open_image_2d, read_nifti, read_nifti_header
from medseg.errors import DataError, MedsegError
from medseg.inference.model import load_inference_model
from medseg.networks import build_network, list_networks, network_info
from medseg.utils import limits

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


def _nifti_header(shape: tuple[int, ...], dtype: type) -> bytes:
    """A NIfTI-1 single-file header (348 bytes + the 4-byte extension flag), RAS 1 mm."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def header_only_nifti(path: Path, shape: tuple[int, ...] = (4000, 4000, 4000)) -> Path:
    """The tiny file: a gzipped header (64 bytes) claiming ``shape`` float32 voxels, and no data."""
    path.write_bytes(gzip.compress(_nifti_header(shape, np.float32), compresslevel=9))
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
    header = _nifti_header(shape, np.int16)
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


def _wrote_nothing(out_dir: Path) -> bool:
    """Nothing under ``out_dir`` but the lock ``medseg train`` holds on it (medseg.engine.outputs)."""
    return not out_dir.exists() or files_under(out_dir) <= {".medseg.lock"}


def _one_line_error(err: str, command: str, bad: Path, rule: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("medseg ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"medseg {command}: error: {bad}: {rule}"), err
    assert "Traceback" not in err


needs_wait4 = pytest.mark.skipif(not hasattr(os, "wait4"), reason="measures a child's memory with os.wait4")

# ---------------------------------------------------------------- NIfTI: the 85-byte header and the gzip bomb

NIFTI_ROWS = {"header-only": (header_only_nifti, {}), "gzip-bomb": (gzip_bomb, BOMB_LIMITS)}


@pytest.fixture(scope="module")
def hostile_sets(tiny_brats_rel: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Row -> (a copy of the 4-case BraTS set, its T1 file of case 00001 replaced by the hostile file)."""
    out = {}
    for row, (make, _) in NIFTI_ROWS.items():
        root = tmp_path_factory.mktemp(f"hostile-{row}") / "data"
        shutil.copytree(tiny_brats_rel, root)
        out[row] = (root, make(root / CASE / f"{CASE}_t1.nii.gz"))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brats_bundle(tmp_path_factory.mktemp("bundle"))


def test_the_hostile_files_are_as_small_as_the_red_teams(hostile_sets, tmp_path):
    assert hostile_sets["header-only"][1].stat().st_size < 100
    bomb = hostile_sets["gzip-bomb"][1]
    assert bomb.stat().st_size < 4 * 1024**2
    claimed = 352 + 1536 * 1536 * 768 * 2  # 3.6 GB: the trailer says so, and the stream starts as it should
    assert struct.unpack("<I", bomb.read_bytes()[-4:])[0] == claimed & 0xFFFFFFFF
    with gzip.open(bomb, "rb") as stream:  # (inflating all of it takes 15 s; gzip_bomb says why it is valid)
        head = stream.read(32 * 1024**2)
    assert len(head) == 32 * 1024**2 and not any(head[352:])
    assert nib.Nifti1Header.from_fileobj(gzip.open(bomb, "rb")).get_data_shape() == (1536, 1536, 768)
    assert png_bomb(tmp_path / "bomb.png").stat().st_size < 64 * 1024
    assert huge_network_checkpoint(tmp_path / "huge.pt").stat().st_size < 4096


@pytest.mark.parametrize("row", list(NIFTI_ROWS))
def test_data_check_reports_the_file_and_goes_on(row, hostile_sets, monkeypatch, capsys):
    root, bad = hostile_sets[row]
    for name, value in NIFTI_ROWS[row][1].items():
        monkeypatch.setenv(name, value)
    with traced_peak() as peak:
        code = main(["data", "check", str(root)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert any(str(bad) in line and "too many voxels" in line for line in out.splitlines()), out
    assert "in 1 case(s) of 4" in out  # the other cases were read too, and passed
    assert "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED


@pytest.mark.parametrize("row", list(NIFTI_ROWS))
def test_train_refuses_before_training(row, hostile_sets, tmp_path, monkeypatch, capsys,
                                       isolated_global_state):
    root, bad = hostile_sets[row]
    for name, value in NIFTI_ROWS[row][1].items():
        monkeypatch.setenv(name, value)
    out_dir = tmp_path / "out"
    with traced_peak() as peak:
        code = main(["train", str(BUNDLE), "--data", str(root), "--output", str(out_dir), *set_args(TRAIN_SET),
                     "--no-tracking"])
    _, err = capsys.readouterr()
    assert code == 2, err
    _one_line_error(err, "train", bad, "too many voxels")
    assert _wrote_nothing(out_dir), "a refused run must write nothing"
    assert peak[0] < PEAK_TRACED


@pytest.mark.parametrize("row", list(NIFTI_ROWS))
def test_infer_fails_the_case_and_runs_the_others(row, hostile_sets, bundle, tmp_path, monkeypatch, capsys):
    root, bad = hostile_sets[row]
    for name, value in NIFTI_ROWS[row][1].items():
        monkeypatch.setenv(name, value)
    out_dir = tmp_path / "pred"
    with traced_peak() as peak:
        code = main(["infer", str(bundle), "--input", str(root), "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    failed = [line for line in out.splitlines() if line.strip().startswith(f"{CASE}:")]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many voxels" in failed[0], out
    assert code == 1
    assert files_under(out_dir) == {f"{case}.nii.gz" for case in GOOD}
    assert peak[0] < PEAK_TRACED


@pytest.mark.parametrize("row", list(NIFTI_ROWS))
def test_evaluate_fails_the_case_and_scores_the_others(row, tiny_brats_rel, tmp_path, monkeypatch, capsys):
    for name, value in NIFTI_ROWS[row][1].items():
        monkeypatch.setenv(name, value)
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in GOOD:
        shutil.copy(tiny_brats_rel / case / f"{case}_seg.nii.gz", pred / f"{case}.nii.gz")
    bad = NIFTI_ROWS[row][0](pred / f"{CASE}.nii.gz")
    csv = tmp_path / "eval" / "metrics.csv"
    with traced_peak() as peak:
        code = main(["evaluate", "--pred", str(pred), "--truth", str(tiny_brats_rel), "--task", "brats",
                     "--out", str(csv), "--montage-cases", "0"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if f"FAILED {CASE}" in line]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many voxels" in failed[0], out
    assert "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED


@needs_wait4
@pytest.mark.parametrize("row", list(NIFTI_ROWS))
def test_data_check_in_a_real_process_stays_small(row, hostile_sets):
    root, bad = hostile_sets[row]
    code, out, err, peak = run_measured("data", "check", root, env=NIFTI_ROWS[row][1])
    assert code == 1, out + err
    assert any(str(bad) in line and "too many voxels" in line for line in out.splitlines()), out
    assert "Traceback" not in out + err
    assert peak < PEAK_CHILD, f"peak resident memory {peak / 1024**2:.0f} MB"


# ---------------------------------------------------------------- NIfTI: the header rules themselves


def test_header_rules_bad_dims_bytes_and_truncation(tmp_path, monkeypatch):
    base = np.frombuffer(_nifti_header((8, 8, 8), np.int16), dtype=nib.Nifti1Header.template_dtype, count=1)

    def write(name: str, **fields: object) -> Path:
        raw = base.copy()
        for key, value in fields.items():
            raw[key] = value
        path = tmp_path / name
        path.write_bytes(gzip.compress(raw.tobytes() + b"\0" * 4 + bytes(8 * 8 * 8 * 2)))
        return path

    for name, dims in (("negative.nii.gz", [3, 8, -8, 8, 1, 1, 1, 1]), ("zero.nii.gz", [3, 8, 0, 8, 1, 1, 1, 1]),
                       ("dim0.nii.gz", [9, 8, 8, 8, 1, 1, 1, 1])):
        with pytest.raises(DataError, match="bad shape") as info:
            read_nifti_header(write(name, dim=dims))
        assert info.value.path == str(tmp_path / name)
    # Under the voxel limit, over the byte limit: complex128 is 16 bytes a voxel.
    monkeypatch.setenv("MEDSEG_MAX_VOLUME_BYTES", str(8 * 8 * 8 * 8 + 352))
    with pytest.raises(DataError, match="volume too large"):
        read_nifti_header(write("complex.nii.gz", datatype=1792, bitpix=128))
    monkeypatch.delenv("MEDSEG_MAX_VOLUME_BYTES")
    assert read_nifti_header(write("fine.nii.gz")).shape == (8, 8, 8)
    # A header announcing a terabyte of extensions before its data (nibabel would read them all).
    with pytest.raises(DataError, match="volume too large"):
        read_nifti_header(write("extensions.nii.gz", vox_offset=np.float32(2**40)))
    # An uncompressed file shorter than its header says: refused without allocating the 36 MB it claims.
    short = tmp_path / "short.nii"
    short.write_bytes(_nifti_header((600, 600, 100), np.uint8) + bytes(100))
    with traced_peak() as peak, pytest.raises(DataError, match="unreadable.*truncated"):
        read_nifti(short)
    assert peak[0] < 10 * 1024**2


def test_decompression_stops_at_the_bytes_the_header_implies(tmp_path):
    """A stream longer than its header says (64 MB of zeros after an 8^3 volume) is not inflated past it."""
    path = tmp_path / "long.nii.gz"
    with gzip.open(path, "wb") as out:
        out.write(_nifti_header((8, 8, 8), np.int16) + np.arange(512, dtype=np.int16).tobytes())
        for _ in range(16):
            out.write(bytes(4 * 1024**2))
    with traced_peak() as peak:
        data, header = read_nifti(path)
    assert header.shape == (8, 8, 8) and data.ravel(order="F").tolist() == list(range(512))
    assert peak[0] < 4 * 1024**2


# ---------------------------------------------------------------- 2D: the PNG of 200 million pixels


@pytest.fixture(scope="module")
def isic_with_bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """4 ISIC cases of 64x48 whose second mask is the PNG bomb."""
    from medseg.data.synth.isic import write_isic_dataset

    root = tmp_path_factory.mktemp("isic") / "isic"
    write_isic_dataset(root, cases=4, size=(64, 48), seed=1)
    mask = root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png"
    return root, png_bomb(mask)


def test_png_bomb_data_check(isic_with_bomb, capsys):
    root, bad = isic_with_bomb
    with traced_peak() as peak:
        code = main(["data", "check", str(root)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    rows = [line for line in out.splitlines() if str(bad) in line]
    assert len(rows) == 1 and "too many pixels" in rows[0] and "200,000,000 pixels" in rows[0], out
    assert "in 1 case(s) of 4" in out and "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED


def test_png_bomb_train_refuses(isic_with_bomb, tmp_path, capsys, isolated_global_state):
    root, bad = isic_with_bomb
    out_dir = tmp_path / "out"
    code = main(["train", str(REPO / "bundles" / "isic_light_unet"), "--data", str(root), "--output", str(out_dir),
                 "--no-tracking"])
    _, err = capsys.readouterr()
    assert code == 2, err
    _one_line_error(err, "train", bad, "too many pixels")
    assert _wrote_nothing(out_dir)


def test_png_bomb_evaluate(tmp_path, capsys):
    from medseg.data.synth.isic import write_isic_dataset

    root = tmp_path / "truth"
    write_isic_dataset(root, cases=3, size=(64, 48), seed=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in sorted((root / "ISIC2018_Task1_Training_GroundTruth").glob("*.png")):
        shutil.copy(mask, pred / mask.name)
    bad = png_bomb(pred / "ISIC_0000001_segmentation.png")  # this case's prediction is the bomb
    csv = tmp_path / "eval" / "metrics.csv"
    with traced_peak() as peak:
        code = main(["evaluate", "--pred", str(pred), "--truth", str(root), "--task", "isic", "--out", str(csv),
                     "--montage-cases", "0"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if "FAILED ISIC_0000001" in line]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many pixels" in failed[0], out
    assert "Traceback" not in out + err
    assert peak[0] < PEAK_TRACED


def _planar_bundle(root: Path, network: dict | None = None) -> Path:
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


def test_png_bomb_infer_2d(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 30, np.uint8)).save(folder / "good.png")
    bad = png_bomb(folder / "bomb.png")
    out_dir = tmp_path / "out"
    with traced_peak() as peak:
        code = main(["infer", str(_planar_bundle(tmp_path / "bundle")), "--input", str(folder),
                     "--output", str(out_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    failed = [line for line in out.splitlines() if line.strip().startswith("bomb:")]
    assert len(failed) == 1 and str(bad) in failed[0] and "too many pixels" in failed[0], out
    assert "Traceback" not in out + err
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.png", "good_overlay.png"]
    assert peak[0] < PEAK_TRACED


@needs_wait4
def test_png_bomb_data_check_in_a_real_process_stays_small(isic_with_bomb):
    root, bad = isic_with_bomb
    code, out, err, peak = run_measured("data", "check", root)
    rows = [line for line in out.splitlines() if str(bad) in line and "too many pixels" in line]
    assert code == 1 and rows, out + err
    assert "Traceback" not in out + err and "DecompressionBomb" not in err
    assert peak < PEAK_CHILD, f"peak resident memory {peak / 1024**2:.0f} MB"


def test_pillow_limit_is_a_setting_and_its_warning_an_error(tmp_path, monkeypatch):
    image = tmp_path / "modest.png"
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(image)
    with open_image_2d(image) as img:
        assert img.size == (120, 100)
    # 12,000 pixels: over a limit of 10,000 (where Pillow only warns) and over 5,000 (where it raises).
    pillows_own = Image.MAX_IMAGE_PIXELS
    for limit in ("10000", "5000"):
        monkeypatch.setenv("MEDSEG_MAX_IMAGE_PIXELS", limit)
        with pytest.raises(DataError, match=r"too many pixels \(12,000 pixels, more than the limit") as info:
            open_image_2d(image)
        assert info.value.path == str(image)
    assert Image.MAX_IMAGE_PIXELS == pillows_own  # other code in the process keeps Pillow's limit


# ---------------------------------------------------------------- checkpoints: a 7 GB network in 2 KB


@needs_wait4
def test_huge_network_checkpoint_infer_in_a_real_process(tmp_path):
    checkpoint = huge_network_checkpoint(tmp_path / "huge.pt")
    volume = tmp_path / "in" / "case.nii.gz"
    volume.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), volume)
    (tmp_path / "bundle").mkdir()
    code, out, err, peak = run_measured("infer", tmp_path / "bundle", "--checkpoint", checkpoint,
                                        "--input", volume, "--output", tmp_path / "out", "--no-progress")
    assert code == 2, out + err
    _one_line_error(err, "infer", checkpoint, "network too large")
    assert "'unet'" in err and "MEDSEG_MAX_PARAMETERS" in err
    assert peak < PEAK_CHILD, f"peak resident memory {peak / 1024**2:.0f} MB"
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == set()


def test_huge_network_in_a_bundle_and_the_exact_count(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundle"
    checkpoint = huge_network_checkpoint(bundle / "models" / "model.pt")
    volume = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), volume)
    assert main(["infer", str(bundle), "--input", str(volume), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, "infer", checkpoint, "network too large")
    # Under a higher limit the meta build runs to the end and gives the exact count, still without memory.
    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", str(10**10))
    with traced_peak() as peak:
        assert check_network_size(HUGE_UNET, checkpoint) == HUGE_UNET_PARAMETERS
    assert peak[0] < 50 * 1024**2
    # Just under it, the build is stopped as soon as its tensors hold more elements than the limit.
    monkeypatch.setenv("MEDSEG_MAX_PARAMETERS", str(HUGE_UNET_PARAMETERS - 1))
    with pytest.raises(MedsegError, match=f"{checkpoint}: network too large: 'unet' .* more than 1,813,061,635 "):
        build_from_checkpoint(checkpoint)


def test_huge_2d_network_and_image_size(tmp_path):
    wide = {"name": "light_unet", "kwargs": {"spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                                             "features": [16384, 32768]}}
    bundle = _planar_bundle(tmp_path / "wide", wide)
    with pytest.raises(MedsegError, match="model.pt: network too large: 'light_unet'"):
        load_inference_model(bundle)
    tall = _planar_bundle(tmp_path / "tall")
    ckpt = torch.load(tall / "models" / "model.pt", weights_only=True)
    ckpt["preprocessing"]["image_size"] = [100_000, 100_000]
    torch.save(ckpt, tall / "models" / "model.pt")
    with pytest.raises(MedsegError, match=r"image_size \[100000, 100000\] has 10,000,000,000 pixels"):
        load_inference_model(tall)


def test_deep_network_spec_is_stopped_while_it_is_built(tmp_path):
    deep = {"name": "segresnet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                            "blocks_down": [10**7, 1, 1, 1]}}
    with pytest.raises(MedsegError, match="deep.pt: network too large: 'segresnet' .* more than 10,000 tensors"):
        check_network_size(deep, tmp_path / "deep.pt")


def test_every_registered_network_is_sized_exactly_without_memory():
    """The meta-device count equals the real one for every network (SwinUNETR needs its second attempt)."""
    for name in list_networks():
        info = network_info(name)
        for dims in info.spatial_dims:
            kwargs = {"spatial_dims": dims, "in_channels": 1, "out_channels": 2, **(info.smoke_kwargs or {})}
            model = build_network(name, **kwargs)
            real = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
            assert check_network_size({"name": name, "kwargs": kwargs}) == real, (name, dims)


def test_sizing_draws_no_random_numbers():
    torch.manual_seed(0)
    check_network_size({"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                                   "channels": [4, 8], "strides": [2]}})
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)


# ---------------------------------------------------------------- the settings and other sizes from files


def test_limits_defaults_and_settings(monkeypatch):
    memory = limits.available_memory_bytes()
    assert memory >= 256 * 1024**2
    for name in (limits.MAX_VOXELS_ENV, limits.MAX_VOLUME_BYTES_ENV, limits.MAX_IMAGE_PIXELS_ENV,
                 limits.MAX_PARAMETERS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert limits.max_voxels() == memory // 32 < 4000**3
    assert limits.max_volume_bytes() == memory // 8
    assert limits.max_image_pixels() == limits.PILLOW_DEFAULT_MAX_PIXELS == 89_478_485
    assert limits.max_parameters() == min(10**9, memory // 32) < HUGE_UNET_PARAMETERS
    monkeypatch.setenv(limits.MAX_VOXELS_ENV, "1e9")
    assert limits.max_voxels() == 10**9
    monkeypatch.setenv(limits.MAX_PARAMETERS_ENV, "2_000")
    assert limits.max_parameters() == 2000
    for bad in ("0", "-5", "lots", "1.5", "nan"):
        monkeypatch.setenv(limits.MAX_VOXELS_ENV, bad)
        with pytest.raises(MedsegError, match=f"MEDSEG_MAX_VOXELS='{bad}': must be a positive whole number"):
            limits.max_voxels()


def test_roi_and_resampling_sizes_from_a_bundle_are_bounded(tiny_brats_rel, bundle, tmp_path, capsys):
    assert main(["infer", str(bundle), "--input", str(tiny_brats_rel / CASE), "--output", str(tmp_path / "a"),
                 "--roi", "4000", "4000", "4000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "roi_size [4000, 4000, 4000] has 64,000,000,000 voxels, more than the limit" in err
    # A checkpoint asking for 0.01 mm: 4 channels of a 1 mm brain of 32x32x24 would become 1e11 voxels.
    tiny_spacing = tmp_path / "bundle"
    shutil.copytree(bundle, tiny_spacing)
    ckpt = torch.load(tiny_spacing / "models" / "model.pt", weights_only=True)
    ckpt["preprocessing"]["pixdim"] = [0.01, 0.01, 0.01]
    torch.save(ckpt, tiny_spacing / "models" / "model.pt")
    with traced_peak() as peak:
        code = main(["infer", str(tiny_spacing), "--input", str(tiny_brats_rel / CASE), "--output",
                     str(tmp_path / "b"), "--no-progress"])
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.strip().startswith(f"{CASE}:")]
    assert code == 1 and len(failed) == 1 and "too many voxels after resampling" in failed[0], out
    assert str(tiny_brats_rel / CASE) in failed[0]
    assert peak[0] < PEAK_TRACED
