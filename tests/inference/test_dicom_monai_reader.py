"""DICOM series are read by MONAI's ``LoadImage`` with its ``ITKReader``: exactly the checked files, in slice order.

Every series is real: pydicom's shipped CT series ``98892001/CT5N`` and an oblique copy of it
(rotated plane, non-square pixels, a rescale slope of 1.5, file names in reverse slice order),
edited with pydicom. Geometry and values are checked against an independent reading of the
same files with pydicom (positions, orientation and pixel spacing -> the RAS affine; pixel
data with its rescale), and the volume against what stock MONAI reads from the folder.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from infer_helpers import make_bundle, pydicom_dir
from monai.data import ITKReader
from monai.transforms import LoadImage
from pydicom.pixels import apply_rescale

from medseg.data.layouts.dicom import is_dicom_file, scan_dicom_folder, slice_order
from medseg.errors import DataError
from medseg.inference.dicom_io import CheckedSeriesReader, load_series, lps_geometry
from medseg.networks import build_network

CT5N = pydicom_dir("dicomdirtests", "98892001", "CT5N")  # 5 axial CT slices of 16x16, 2.5 mm apart
RGB = pydicom_dir("SC_rgb_rle.dcm")  # a secondary capture in colour
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _headers(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _by_position(folder: Path) -> list[Path]:
    """The folder's files along the normal of their plane, computed here from the headers alone."""
    files = sorted(folder.iterdir())
    first = _headers(files[:1])[0]
    normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, float), (2, 3)))
    depth = {f: float(np.asarray(h.ImagePositionPatient, float) @ normal) for f, h in zip(files, _headers(files))}
    return sorted(files, key=depth.__getitem__)


def _expected_affine(files: list[Path]) -> np.ndarray:
    """The voxel-to-RAS matrix of slices ``files`` (in order), from DICOM's definitions (PS3.3 C.7.6.2.1.1).

    Voxel (i, j, k) is column i, row j of slice k: i steps along the row cosine by the column
    spacing (``PixelSpacing[1]``), j along the column cosine by the row spacing, k from the
    first slice's position to the last one's in equal steps.
    """
    headers = _headers(files)
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.asarray([h.ImagePositionPatient for h in headers], float)
    between_rows, between_columns = (float(v) for v in headers[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row * between_columns
    lps[:3, 1] = col * between_rows
    lps[:3, 2] = normal * float((positions[-1] - positions[0]) @ normal) / (len(files) - 1)
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def _expected_voxels(files: list[Path]) -> np.ndarray:
    """``(X, Y, Z)`` float32: slice k is file k's pixel data with its rescale, indexed (column, row)."""
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        slices.append(np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float64).T)
    return np.stack(slices, axis=-1).astype(np.float32)


def _oblique(folder: Path, degrees: float = 17.0, step: float = 3.3) -> Path:
    """Rotate CT5N's slice plane about x by ``degrees`` and about z by half that, step the slices along
    its normal, make the pixels 0.6836 x 0.71 mm, rescale by 1.5 and -1024.25, and name the files in
    reverse slice order (``00_5`` is the last slice)."""
    a, b = math.radians(degrees), math.radians(degrees / 2)
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rotation = rz @ rx
    normal = np.cross(rotation[:, 0], rotation[:, 1])
    origin = np.array([-12.3, 45.6, -78.9])
    files = _by_position(folder)
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*rotation[:, 0], *rotation[:, 1])]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * step * normal]
        ds.PixelSpacing = ["0.71", "0.683594"]
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-1024.25"
        path.unlink()
        ds.save_as(folder / f"{len(files) - 1 - k:02d}_{k + 1}")
    return folder


@pytest.fixture(scope="module")
def oblique(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _oblique(Path(shutil.copytree(CT5N, tmp_path_factory.mktemp("dicom") / "oblique")))


@pytest.mark.parametrize("which", ["ct5n", "oblique"])
def test_a_series_is_read_in_slice_order_with_the_geometry_and_values_of_its_headers(which, oblique):
    folder = CT5N if which == "ct5n" else oblique
    (series,) = scan_dicom_folder(folder)
    expected_order = _by_position(folder)
    assert series.files == expected_order
    if which == "oblique":
        assert expected_order != sorted(expected_order)  # the names run against the slices

    image = load_series(series)
    assert tuple(image.shape) == (1, 16, 16, 5) and image.dtype == torch.float32
    np.testing.assert_allclose(image.affine.numpy(), _expected_affine(expected_order), atol=1e-5)
    np.testing.assert_array_equal(image[0].numpy(), _expected_voxels(expected_order))
    # The geometry the outputs are written back in: ITK's own LPS values.
    origin, spacing, direction = lps_geometry(image)
    lps = LPS_TO_RAS @ image.affine.numpy()
    assert origin == tuple(lps[:3, 3])
    np.testing.assert_allclose(np.reshape(direction, (3, 3)) @ np.diag(spacing), lps[:3, :3], rtol=0, atol=1e-12)


def test_the_volume_is_what_monais_itk_reader_gives_for_the_folder():
    """Stock MONAI (``LoadImage`` with ``ITKReader`` on the folder: GDCM chooses and orders the files)
    reads the same voxels, affine and metadata; medseg's reader only chose the files itself."""
    image = load_series(scan_dicom_folder(CT5N)[0])
    stock = LoadImage(reader=ITKReader(), image_only=True, ensure_channel_first=True)(str(CT5N))
    assert torch.equal(image.as_tensor(), stock.as_tensor())
    assert torch.equal(image.affine, stock.affine)
    assert set(stock.meta) <= set(image.meta)
    for key in ("spacing", "spatial_shape", "original_affine"):
        np.testing.assert_array_equal(np.asarray(image.meta[key]), np.asarray(stock.meta[key]))
    assert image.meta["space"] == stock.meta["space"] == "RAS"
    assert image.meta["filename_or_obj"] == stock.meta["filename_or_obj"] == str(CT5N)
    assert isinstance(CheckedSeriesReader(), ITKReader)


def test_only_the_checked_files_are_read_in_the_order_given():
    """Reversing the list reverses the slices: the reader keeps the order it is given (no GDCM re-sort)."""
    (series,) = scan_dicom_folder(CT5N)
    forward = load_series(series)
    series.files = series.files[::-1]
    backward = load_series(series)
    np.testing.assert_array_equal(backward[0].numpy(), forward[0].numpy()[..., ::-1])
    three = scan_dicom_folder(CT5N)[0]
    three.files = three.files[:3]  # as if the folder held three slices
    assert load_series(three).shape[-1] == 3


def test_unreadable_and_unsupported_series_are_one_line_naming_the_folder(tmp_path):
    broken = Path(shutil.copytree(CT5N, tmp_path / "truncated"))
    victim = _by_position(broken)[2]
    victim.write_bytes(victim.read_bytes()[:-200])  # the headers still read; the pixel data ends early
    (series,) = scan_dicom_folder(broken)
    assert not series.problems
    with pytest.raises(DataError, match="unreadable DICOM series") as err:
        load_series(series)
    assert str(err.value).startswith(f"{broken}: ") and f"{victim}: a file without pixel data" in str(err.value)
    assert "\n" not in str(err.value) and "hxx" not in str(err.value)

    colour = tmp_path / "colour"
    colour.mkdir()
    shutil.copy(RGB, colour / RGB.name)
    with pytest.raises(DataError, match=r"unsupported DICOM series \(3D with 3 components per pixel\)"):
        load_series(scan_dicom_folder(colour)[0])

    gap = Path(shutil.copytree(CT5N, tmp_path / "gap"))
    _by_position(gap)[2].unlink()
    with pytest.raises(DataError, match="unusable DICOM series.*missing slice"):
        load_series(scan_dicom_folder(gap)[0])


def test_slice_order_without_positions_falls_back_to_instance_numbers_then_names():
    headers = [pydicom.Dataset() for _ in range(3)]
    for header, number in zip(headers, (3, 1, 2)):
        header.InstanceNumber = number
    assert slice_order(headers) == [1, 2, 0]
    headers[2].InstanceNumber = 3  # not distinct
    assert slice_order(headers) == [0, 1, 2]
    del headers[0].InstanceNumber
    assert slice_order(headers) == [0, 1, 2]


def test_is_dicom_file_is_pydicoms_check_and_false_for_what_cannot_be_opened(tmp_path):
    assert is_dicom_file(next(CT5N.iterdir()))
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert not is_dicom_file(tmp_path / "notes.txt")
    assert not is_dicom_file(tmp_path / "absent")
    assert not is_dicom_file(tmp_path)  # a folder: pydicom's check raises IsADirectoryError


def test_medseg_infer_writes_the_mask_in_each_series_geometry(oblique, tmp_path):
    """The real CLI in a child process, on a folder holding CT5N and the oblique series."""
    network = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                          "channels": [4, 8], "strides": [2], "num_res_units": 0}}
    torch.manual_seed(0)
    prep = {"task": "multiclass", "orientation": "RAS", "normalize": "nonzero_channel_wise", "pixdim": None,
            "label_values": [0, 1], "channels": ["image"]}
    bundle = make_bundle(tmp_path / "bundle", network, build_network(network["name"], **network["kwargs"]).state_dict(),
                         convention="toy", channels=["image"], preprocessing=prep)
    inputs = tmp_path / "in"
    shutil.copytree(CT5N, inputs / "ct")
    shutil.copytree(oblique, inputs / "oblique")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "medseg", "infer", str(bundle), "--input", str(inputs), "--output",
                          str(out), "--no-progress"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "WARNING: In" not in run.stderr, run.stderr[-3000:]
    for name, folder in (("ct", CT5N), ("oblique", oblique)):
        files = _by_position(folder)
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == (16, 16, 5)
        np.testing.assert_allclose(mask.affine, _expected_affine(files), atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        written = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        series = sitk.ImageSeriesReader()
        series.SetFileNames([str(f) for f in files])
        source = series.Execute()
        np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-5)
