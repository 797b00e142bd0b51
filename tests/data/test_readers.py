"""Readers on real NIfTI files shipped with nibabel (oblique, LAS) and on broken files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.readers import read_image_2d, read_nifti, read_nifti_header
from medseg.errors import DataError

NIBABEL_DATA = Path(os.path.dirname(nib.__file__)) / "tests" / "data"


def test_real_nibabel_files_keep_their_affines():
    """example4d.nii.gz has an oblique affine; anatomical.nii is LAS; both must be read exactly."""
    oblique = read_nifti_header(NIBABEL_DATA / "example4d.nii.gz")
    reference = nib.load(NIBABEL_DATA / "example4d.nii.gz")
    assert np.allclose(oblique.affine, reference.affine)
    rot = oblique.affine[:3, :3] / np.array(oblique.spacing)
    assert not np.allclose(np.abs(rot), np.eye(3), atol=1e-3), "expected an oblique affine"
    assert len(oblique.shape) == 4
    data, las = read_nifti(NIBABEL_DATA / "anatomical.nii")
    assert nib.aff2axcodes(las.affine)[0] == "L"
    assert data.shape == las.shape == nib.load(NIBABEL_DATA / "anatomical.nii").shape
    assert np.array_equal(data, np.asarray(nib.load(NIBABEL_DATA / "anatomical.nii").dataobj, dtype=np.float32))


def test_broken_files_name_the_file_and_rule(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(4096, dtype=np.float32).reshape(16, 16, 16), np.eye(4)), good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    text = tmp_path / "text.nii.gz"
    text.write_text("plain text")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    for path, rule in [(truncated, "unreadable"), (fake, "unreadable"), (text, "unreadable"), (empty, "unreadable"),
                       (tmp_path / "missing.nii.gz", "file missing")]:
        with pytest.raises(DataError) as info:
            read_nifti(path)
        assert info.value.rule == rule and info.value.path == str(path)
        assert str(path) in str(info.value)


def test_2d_reader(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(path)
    assert read_image_2d(path).shape == (5, 7, 3)
    jpeg = tmp_path / "b.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    with pytest.raises(DataError, match="does not decode"):
        read_image_2d(jpeg)
