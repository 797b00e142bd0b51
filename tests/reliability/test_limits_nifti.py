"""Tiny hostile NIfTI files that ask for gigabytes: refused from their headers, in one line, on every route.

A 64-byte ``.nii.gz`` (the red team's was 85): a NIfTI header alone claiming 4000^3 float32 voxels
(256 GB); and a 3.5 MB ``.nii.gz`` whose gzip stream really inflates to the 3.6 GB its int16
header claims (:func:`hostile_files.gzip_bomb`). Each goes through the real CLI of every command
that reads it, and once through the console script in a child process, whose own peak memory
must stay under 1.5 GB (:func:`hostile_files.run_measured`); in-process runs are measured with
``tracemalloc``. A 3.6 GB volume is a real, if large, volume on a machine with 64 GB, so the
tests of the gzip bomb pin ``MEDSEG_MAX_VOXELS`` to 512^3. Last, the sizes a bundle's window and
a resampling would make are bounded too.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile_files import (
    BOMB_LIMITS,
    CASE,
    GOOD,
    PEAK_CHILD,
    PEAK_TRACED,
    TRAIN_SET,
    gzip_bomb,
    header_only_nifti,
    huge_network_checkpoint,
    needs_wait4,
    nifti_header,
    one_line_error,
    png_bomb,
    run_measured,
    traced_peak,
    wrote_nothing,
)
from rel_helpers import brats_bundle, files_under
from tiny_training import BUNDLE, set_args

from medseg.cli.main import main
from medseg.data.readers import read_nifti, read_nifti_header
from medseg.errors import DataError

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
    one_line_error(err, "train", bad, "too many voxels")
    assert wrote_nothing(out_dir), "a refused run must write nothing"
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
    base = np.frombuffer(nifti_header((8, 8, 8), np.int16), dtype=nib.Nifti1Header.template_dtype, count=1)

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
    short.write_bytes(nifti_header((600, 600, 100), np.uint8) + bytes(100))
    with traced_peak() as peak, pytest.raises(DataError, match="unreadable.*truncated"):
        read_nifti(short)
    assert peak[0] < 10 * 1024**2


def test_decompression_stops_at_the_bytes_the_header_implies(tmp_path):
    """A stream longer than its header says (64 MB of zeros after an 8^3 volume) is not inflated past it."""
    path = tmp_path / "long.nii.gz"
    with gzip.open(path, "wb") as out:
        out.write(nifti_header((8, 8, 8), np.int16) + np.arange(512, dtype=np.int16).tobytes())
        for _ in range(16):
            out.write(bytes(4 * 1024**2))
    with traced_peak() as peak:
        data, header = read_nifti(path)
    assert header.shape == (8, 8, 8) and data.ravel(order="F").tolist() == list(range(512))
    assert peak[0] < 4 * 1024**2



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
